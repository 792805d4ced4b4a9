"""``GuardedStateGraph``: the ``StateGraph`` guarded graphs are built with.

Its compiled graph (:class:`DurableCompiledGraph`) does three things for every call
(``invoke``, ``stream`` and their async forms):

- it makes the run's scope (:class:`~sanegraph.guards._scope.RunScope`), which the
  guarded steps of the run share: the live hop tallies and spend groups of parallel
  branches, and the resources given to ``compile`` (a journal, a shared budget pool);
- it marks new input as a new turn of the thread (the loop window starts afresh);
- it runs with ``durability="sync"`` by default: after a hard crash, ``"async"``
  (LangGraph's default) loses steps and ``"exit"`` loses everything, and the ledger's
  counters are only as durable as the checkpoints that hold them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

from langchain_core.runnables import RunnableConfig
from langgraph.graph import StateGraph
from langgraph.graph.state import CompiledStateGraph
from langgraph.types import Command, Durability

from . import _compat
from ._scope import SCOPE_KEY, RunScope
from .budget.log import SpendLog
from .budget.spend import SpendJournal, SpendPool
from .errors import ConfigurationError

__all__ = ("DurableCompiledGraph", "GuardedStateGraph")

_NEW_TURN = {"reset_window": True}
"""The ledger delta new input writes: a new turn's loop window starts empty."""


class DurableCompiledGraph(CompiledStateGraph):  # type: ignore[type-arg]
    """A compiled graph that runs with ``durability="sync"`` unless told otherwise.

    Everything else is LangGraph's ``CompiledStateGraph``; pass ``durability=`` to
    ``invoke``/``stream`` to choose another mode for one run. Made by
    :meth:`GuardedStateGraph.compile`.
    """

    sanegraph_spend: SpendLog | None = None
    """What the graph's threads paid (made by ``compile``, with its journal if given)."""
    sanegraph_pool: SpendPool | None = None
    """The shared budget pool given to ``compile``, or None."""

    @property
    def sanegraph_journal(self) -> SpendJournal | None:
        """The journal given to ``compile``, or None."""
        return self.sanegraph_spend.journal if self.sanegraph_spend is not None else None

    def _scoped(self, config: RunnableConfig | None) -> tuple[RunnableConfig, bool]:
        """``config`` with the run's scope, and whether this call is the root of the run.

        A graph run by a parent graph's task (a subgraph) finds the parent's scope in its
        config and shares it: one run, one scope.
        """
        configurable = dict((config or {}).get("configurable") or {})
        if configurable.get(SCOPE_KEY) is not None:
            return config or {}, not configurable.get("checkpoint_ns")
        configurable[SCOPE_KEY] = RunScope(spend=self.sanegraph_spend, pool=self.sanegraph_pool)
        scoped: RunnableConfig = {**(config or {}), "configurable": configurable}  # type: ignore[typeddict-item]
        return scoped, not configurable.get("checkpoint_ns")

    def _durability(self, durability: Durability | None) -> Durability | None:
        # Without a checkpointer LangGraph warns that durability has no effect; a
        # subgraph compiled without one inherits its parent's mode.
        if durability is None and self.checkpointer not in (None, False, True):
            return "sync"
        return durability

    def _turn(self, input: Any, root: bool) -> Any:
        """Mark new input to the root graph as a new turn of the thread.

        A thread is often a conversation: each user message is an ``invoke`` that runs to
        END. The loop window is the current turn's, so new input empties it (counts,
        spend and trips carry over). Resuming (``None``, ``Command``) continues the turn;
        a subgraph's input is its parent's state, not a turn; input that writes the
        ledger itself is left as it is.
        """
        if not root or type(input) is not dict or "guard" in input:
            return input
        if "guard" not in self.channels:
            return input
        return {**input, "guard": _NEW_TURN}

    def stream(  # type: ignore[override]
        self,
        input: Any | Command[Any] | None,
        config: RunnableConfig | None = None,
        *,
        durability: Durability | None = None,
        **kwargs: Any,
    ) -> Iterator[dict[str, Any] | Any]:
        """LangGraph's ``stream``, in the run's scope, with ``durability`` defaulting to
        ``"sync"``."""
        scoped, root = self._scoped(config)
        return super().stream(
            self._turn(input, root), scoped, durability=self._durability(durability), **kwargs
        )

    def astream(  # type: ignore[override]
        self,
        input: Any | Command[Any] | None,
        config: RunnableConfig | None = None,
        *,
        durability: Durability | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[dict[str, Any] | Any]:
        """LangGraph's ``astream``, in the run's scope, with ``durability`` defaulting to
        ``"sync"``."""
        scoped, root = self._scoped(config)
        return super().astream(
            self._turn(input, root), scoped, durability=self._durability(durability), **kwargs
        )


class GuardedStateGraph(StateGraph):  # type: ignore[type-arg]
    """The ``StateGraph`` to build guarded graphs with: its ``compile()`` returns a
    :class:`DurableCompiledGraph` and takes the run's resources.

    The prebuilt graphs return one; use it in place of ``StateGraph`` for your own guarded
    graphs (guarded nodes refuse to run in a graph compiled any other way).

    Example:
        ```python
        builder = GuardedStateGraph(State)
        graph = builder.compile(checkpointer=saver, journal=Journal(saver))
        ```
    """

    def compile(  # type: ignore[override]
        self,
        *args: Any,
        journal: SpendJournal | None = None,
        pool: SpendPool | None = None,
        **kwargs: Any,
    ) -> DurableCompiledGraph:
        """LangGraph's ``compile``, with the resources guarded steps use.

        Args:
            *args: Passed to ``StateGraph.compile`` (``checkpointer``).
            journal: Where guarded steps journal their model calls and steps (e.g.
                ``sanegraph.checkpoints.Journal``): a step re-run after a crash then counts
                what its earlier attempt spent, once.
            pool: A budget shared with other threads and processes (e.g.
                ``sanegraph.checkpoints.SharedBudget``): each model call's projection is
                reserved in it before the call and replaced by the real spend after.
            **kwargs: Passed to ``StateGraph.compile`` (``checkpointer``, ``store``, ...).

        Returns:
            The compiled graph; it runs with ``durability="sync"`` unless told otherwise.

        Raises:
            ConfigurationError: ``journal`` or ``pool`` lacks the methods guarded steps call.
        """
        if journal is not None and not isinstance(journal, SpendJournal):
            raise ConfigurationError(
                "compile(journal=...) must have thread_paid/prior_calls/reserve_call/"
                "log_call/release_call/log_step, got "
                f"{type(journal).__name__}. Pass e.g. journal=Journal(saver) from "
                "sanegraph.checkpoints."
            )
        if pool is not None and not isinstance(pool, SpendPool):
            raise ConfigurationError(
                f"compile(pool=...) must be a shared pool with reserve/commit/release, got "
                f"{type(pool).__name__}. Pass e.g. "
                "pool=SharedBudget('acme 2026-11-22', path='runs/pools.sqlite', usd=20)."
            )
        graph = _compat.make_compiled_class(super().compile(*args, **kwargs), DurableCompiledGraph)
        graph.sanegraph_spend = SpendLog(journal=journal)
        graph.sanegraph_pool = pool
        return graph  # type: ignore[no-any-return]
