"""``GuardedState``: the mixin that gives a graph's state the ``guard`` channel."""

from __future__ import annotations

from typing import Annotated

from typing_extensions import TypedDict

from .ledger import Ledger
from .reducer import fold_ledger

__all__ = ("GuardedState",)


class GuardedState(TypedDict, total=False):
    """Mixin for a graph's state: add it to your ``TypedDict`` to guard the graph.

    Example:
        ```python
        from langgraph.graph import MessagesState
        from sanegraph.guards import GuardedState

        class State(MessagesState, GuardedState):
            topic: str
        ```
    """

    guard: Annotated[Ledger, fold_ledger]
    """The ledger (see :class:`Ledger`), folded from per-step deltas. One channel on
    purpose: LangGraph's cost per written channel is a large part of a step's."""
