"""``GuardedStateGraph``: a ``StateGraph`` whose compiled graphs persist every step.

Guarded graphs default to ``durability="sync"``: after a hard crash, ``"async"`` (LangGraph's
default) loses steps and ``"exit"`` loses everything, and the ledger's counters are only
as durable as the checkpoints that hold them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

from langchain_core.runnables import RunnableConfig
from langgraph.graph import StateGraph
from langgraph.graph.state import CompiledStateGraph
from langgraph.types import Command, Durability

__all__ = ("DurableCompiledGraph", "GuardedStateGraph")


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

    def stream(  # type: ignore[override]
        self,
        input: Any | Command[Any] | None,
        config: RunnableConfig | None = None,
        *,
        durability: Durability | None = None,
        **kwargs: Any,
    ) -> Iterator[dict[str, Any] | Any]:
        """LangGraph's ``stream``, with ``durability`` defaulting to ``"sync"``."""
        return super().stream(input, config, durability=self._durability(durability), **kwargs)

    def astream(  # type: ignore[override]
        self,
        input: Any | Command[Any] | None,
        config: RunnableConfig | None = None,
        *,
        durability: Durability | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[dict[str, Any] | Any]:
        """LangGraph's ``astream``, with ``durability`` defaulting to ``"sync"``."""
        return super().astream(input, config, durability=self._durability(durability), **kwargs)


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
