"""What the guarded steps of one run share: the run scope, and per superstep the live hop
tallies and spend groups of parallel branches.

A superstep's branches each read the ledger as it was when the superstep started; their
hops and spend reach it only at the join. So that a cap or a budget still holds across
branches, the steps of a superstep count what their siblings did so far in objects they
share, made per run and per superstep:

- :class:`RunScope` lives for one call of a guarded graph (``invoke``, ``stream`` and
  their async forms). ``GuardedStateGraph``'s compiled graph makes it and puts it in the
  run's config, which LangGraph hands to every task, subgraph and ``Send`` branch of the
  run; it also carries the run's resources (journal, pool) and the caches that must not
  outlive it.
- :class:`Superstep` lives for one superstep of the root graph: the scope keeps the
  current one and drops it when the next root superstep starts, which LangGraph does only
  after every task of the previous one ended and its writes were folded. Nothing here is
  evicted by size: a late branch always finds its siblings.

Spend is not kept here but in the graph's spend log (``budget/log.py``), which outlives
runs: money paid is a fact of the thread, not of one run. The scope hands it to the
run's steps.

A branch is the root-graph task a step runs under (the first segment of its namespace);
its superstep is the root checkpoint the branches started from.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import Any

from . import _compat
from .budget.log import SpendLog, ThreadSpend
from .budget.tokens import TokenCounter, shared_counter
from .errors import ConfigurationError
from .ledger import FANOUT_HOPS, FANOUT_INDEX

__all__ = ("SCOPE_KEY", "Branch", "RunScope", "Superstep", "scope_of")

SCOPE_KEY = "__sanegraph_scope"
"""Key of the run scope in ``config["configurable"]`` (a ``__`` key: LangGraph copies no
such key into checkpoint metadata, and LangSmith does not trace it)."""


class _Tally:
    """One branch's hops so far in its superstep."""

    __slots__ = ("by_agent", "hops", "index", "node")

    def __init__(self, index: int, node: str) -> None:
        self.index = index
        """The branch's fan-out index (how many earlier siblings ``guard_sends`` charged
        it for); -1 for a branch ``guard_sends`` did not start."""
        self.node = node
        """The branch's root-graph node."""
        self.hops = 0
        self.by_agent: dict[str, int] = {}


class Superstep:
    """What the parallel branches of one root superstep share."""

    __slots__ = ("_lock", "_tallies")

    def __init__(self, lock: threading.Lock) -> None:
        self._lock = lock
        self._tallies: dict[str, _Tally] = {}

    def branch(self, name: str, index: int) -> Branch:
        """The place of branch ``name`` (fan-out ``index``) in this superstep's tally."""
        return Branch(self, name, index)


class Branch:
    """One branch's place in its superstep's tally of hops."""

    __slots__ = ("_step", "index", "name", "node")

    def __init__(self, step: Superstep, name: str, index: int) -> None:
        self._step = step
        self.name = name
        self.node = _compat.segment_node(name, 0) or name
        self.index = index

    def claim(self, agent: str, check: Callable[[int, int], Any]) -> Any:
        """Run ``check(siblings_hops, siblings_hops_of_agent)`` and, if it passes (returns
        None), count one hop of ``agent`` for this branch, atomically: two siblings cannot
        both take the last hop."""
        step = self._step
        with step._lock:
            trip = check(*self._siblings(agent))
            if trip is None:
                tally = step._tallies.get(self.name)
                if tally is None:
                    tally = step._tallies[self.name] = _Tally(self.index, self.node)
                tally.hops += 1
                tally.by_agent[agent] = tally.by_agent.get(agent, 0) + 1
            return trip

    def release(self, agent: str) -> None:
        """Take back a hop of ``agent`` claimed by this branch: the step ended without
        one (stopped, or raised and will run again)."""
        step = self._step
        with step._lock:
            tally = step._tallies.get(self.name)
            if tally is not None and tally.by_agent.get(agent, 0) > 0:
                tally.hops -= 1
                tally.by_agent[agent] -= 1

    def _siblings(self, agent: str) -> tuple[int, int]:
        """Hops the other branches took that this branch's ledger does not show: all of
        them, and those of ``agent`` (call with the lock held).

        ``guard_sends`` already charged this branch one hop for each earlier sibling
        (lower fan-out index), and one of its node's hops for each earlier sibling sent to
        the same node: only the hops past those are added.
        """
        mine = self.index
        node = self.node
        total = of_agent = 0
        for name, tally in self._step._tallies.items():
            if name == self.name:
                continue
            hops = tally.hops
            theirs = tally.by_agent.get(agent, 0)
            if mine >= 0 and 0 <= tally.index < mine:
                hops -= 1
                if agent == node == tally.node:
                    theirs -= 1
            if hops > 0:
                total += hops
            if theirs > 0:
                of_agent += theirs
        return total, of_agent


class RunScope:
    """What the guarded steps of one run of a guarded graph share.

    Made by ``GuardedStateGraph``'s compiled graph for each call (``invoke``, ``stream``
    and their async forms) and found by every guarded step of the run in its config.

    Args:
        spend: The graph's spend log (what its threads paid); a private one by default.
        pool: The shared budget pool model calls reserve from, or None.
    """

    __slots__ = (
        "_current",
        "_lock",
        "_root",
        "_unthreaded",
        "pool",
        "refused_models",
        "spend",
        "tokens",
    )

    def __init__(self, *, spend: SpendLog | None = None, pool: Any = None) -> None:
        self.spend = spend if spend is not None else SpendLog()
        self.pool = pool
        self.tokens: TokenCounter = shared_counter()
        """Input-token counts of the messages model calls send (the process's counter:
        weakly keyed, a count leaves with its message)."""
        self.refused_models: set[tuple[str | None, str]] = set()
        """Models that answered without usage under ``Budget(no_usage="refuse")``."""
        self._lock = threading.Lock()
        self._root: str | None = None
        self._current: Superstep | None = None
        self._unthreaded: ThreadSpend | None = None

    @property
    def journal(self) -> Any:
        """The graph's journal, or None."""
        return self.spend.journal

    def unthreaded(self) -> ThreadSpend:
        """The spend of a run with no thread id (no checkpointer): this run's alone."""
        with self._lock:
            if self._unthreaded is None:
                self._unthreaded = ThreadSpend("(no thread)")
            return self._unthreaded

    def superstep(self, root_checkpoint: str) -> Superstep:
        """The superstep of the root graph that runs from ``root_checkpoint``.

        Root supersteps of a run follow one another: when a step of a new one asks, the
        previous one is over (every task ended, its writes folded) and is dropped.
        """
        with self._lock:
            current = self._current
            if current is None or self._root != root_checkpoint:
                current = self._current = Superstep(self._lock)
                self._root = root_checkpoint
            return current

    def branch_of(
        self, ledger: Mapping[str, Any], info: Any, config: Mapping[str, Any]
    ) -> Branch | None:
        """The branch a step runs in, or None when it is not one of parallel branches.

        A step of a subgraph counts under its root-graph task; a root-graph step only when
        ``guard_sends`` made it a fan-out branch.
        """
        if info is None:
            return None
        ns: str = info.checkpoint_ns
        if _compat.task_depth(ns):
            root = _compat.root_checkpoint_id(config)
            base = ledger.get("base") or {}
            index = base.get(FANOUT_INDEX, -1)
        elif FANOUT_HOPS in ledger:
            root = info.checkpoint_id
            index = ledger["hops"] - ledger[FANOUT_HOPS]
        else:
            return None
        if not root:
            return None
        return self.superstep(root).branch(_compat.top_segment(ns), index)


def scope_of(config: Mapping[str, Any], *, node: str | None = None) -> RunScope:
    """The run scope in a guarded step's config.

    Raises:
        ConfigurationError: The graph was not compiled by ``GuardedStateGraph``: its
            guarded steps would not share their superstep's caps and budget.
    """
    scope = (config.get("configurable") or {}).get(SCOPE_KEY)
    if scope is None:
        where = f" ({node!r})" if node else ""
        raise ConfigurationError(
            f"A guarded node{where} ran in a graph not compiled by GuardedStateGraph, so "
            "its caps and budget cannot hold across parallel steps. Build the graph with "
            "sanegraph.guards.GuardedStateGraph(State) instead of langgraph's "
            "StateGraph(State)."
        )
    return scope  # type: ignore[no-any-return]
