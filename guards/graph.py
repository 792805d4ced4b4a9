"""``GuardedStateGraph``: a ``StateGraph`` whose compiled graphs persist every step.

Guarded graphs default to ``durability="sync"``: after a hard crash, ``"async"`` (LangGraph's
default) loses steps and ``"exit"`` loses everything, and the ledger's counters are only
as durable as the checkpoints that hold them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

from langchain_core.runnables import RunnableConfig, ensure_config
from langgraph.graph import StateGraph
from langgraph.graph.state import CompiledStateGraph
from langgraph.types import Command, Durability

__all__ = ("DurableCompiledGraph", "GuardedStateGraph")

_NEW_TURN = {"reset_window": True}
"""The ledger delta new input writes: a new turn's loop window starts empty."""


class DurableCompiledGraph(CompiledStateGraph):  # type: ignore[type-arg]
    """A compiled graph that runs with ``durability="sync"`` unless told otherwise.

    Everything else is LangGraph's ``CompiledStateGraph``; pass ``durability=`` to
    ``invoke``/``stream`` to choose another mode for one run.
    """

    def _durability(self, durability: Durability | None) -> Durability | None:
        # Without a checkpointer LangGraph warns that durability has no effect; a
        # subgraph compiled without one inherits its parent's mode.
        if durability is None and self.checkpointer not in (None, False, True):
            return "sync"
        return durability

    def _turn(self, input: Any, config: RunnableConfig | None) -> Any:
        """Mark new input to the root graph as a new turn of the thread.

        A thread is often a conversation: each user message is an ``invoke`` that runs to
        END. The loop window is the current turn's, so new input empties it (counts,
        spend and trips carry over). Resuming (``None``, ``Command``) continues the turn;
        a subgraph's input is its parent's state, not a turn; input that writes the
        ledger itself is left as it is.
        """
        if type(input) is not dict or "guard" in input or "guard" not in self.channels:
            return input
        if ensure_config(config)["configurable"].get("checkpoint_ns"):
            return input  # run by a parent graph's task
        return {**input, "guard": _NEW_TURN}

    def stream(  # type: ignore[override]
        self,
        input: Any | Command[Any] | None,
        config: RunnableConfig | None = None,
        *,
        durability: Durability | None = None,
        **kwargs: Any,
    ) -> Iterator[dict[str, Any] | Any]:
        """LangGraph's ``stream``, with ``durability`` defaulting to ``"sync"``."""
        return super().stream(
            self._turn(input, config), config, durability=self._durability(durability), **kwargs
        )

    def astream(  # type: ignore[override]
        self,
        input: Any | Command[Any] | None,
        config: RunnableConfig | None = None,
        *,
        durability: Durability | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[dict[str, Any] | Any]:
        """LangGraph's ``astream``, with ``durability`` defaulting to ``"sync"``."""
        return super().astream(
            self._turn(input, config), config, durability=self._durability(durability), **kwargs
        )


class GuardedStateGraph(StateGraph):  # type: ignore[type-arg]
    """A ``StateGraph`` whose ``compile()`` returns a :class:`DurableCompiledGraph`.

    The prebuilt graphs return one; use it in place of ``StateGraph`` for your own guarded
    graphs.

    Example:
        ```python
        builder = GuardedStateGraph(State)
        graph = builder.compile(checkpointer=saver)  # runs with durability="sync"
        ```
    """

    def compile(self, *args: Any, **kwargs: Any) -> DurableCompiledGraph:  # type: ignore[override]
        """LangGraph's ``compile``; the result defaults to ``durability="sync"``."""
        graph = super().compile(*args, **kwargs)
        graph.__class__ = DurableCompiledGraph
        return graph  # type: ignore[return-value]
