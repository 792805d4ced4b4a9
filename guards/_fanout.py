"""Live hop counts of the parallel branches of one superstep.

Branches of a superstep each read the ledger as it was when the superstep started, and
their hops reach it only at the join. ``guard_sends`` charges each branch one hop for
every earlier sibling, which is exact for branches of one step; a branch that is a
subgraph takes many steps, and its siblings would not see them until the join. This
module counts, in this process, the hops each branch has taken so far, so that a step in
one branch sees its siblings' steps too and the hop cap stays global.

A superstep runs in one process, so an in-process count sees every sibling. A branch is
the top-level task a step runs under (the first segment of its checkpoint namespace),
and its superstep is the root checkpoint the branches started from.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

from .ledger import FANOUT_HOPS, FANOUT_INDEX

__all__ = ("Branch", "branch_of")

_MAX_SUPERSTEPS = 256
_LOCK = threading.Lock()
_TALLIES: OrderedDict[str, dict[str, list[Any]]] = OrderedDict()
"""Root checkpoint id -> branch -> [fan-out index (-1: none), hops taken, hops taken per
agent, the branch's top-level node]."""


class Branch:
    """One branch's place in its superstep's tally."""

    __slots__ = ("index", "name", "node", "tally")

    def __init__(self, tally: dict[str, list[Any]], name: str, index: int) -> None:
        self.tally = tally
        self.name = name
        self.node = name.split(":", 1)[0]
        self.index = index

    def claim(self, agent: str, check: Callable[[int, int], Any]) -> Any:
        """Run ``check(siblings_hops, siblings_hops_of_agent)`` and, if it passes (returns
        None), count one hop of ``agent`` for this branch, atomically: two siblings cannot
        both take the last hop."""
        with _LOCK:
            trip = check(*self._siblings(agent))
            if trip is None:
                entry = self.tally.get(self.name)
                if entry is None:
                    entry = self.tally[self.name] = [self.index, 0, {}, self.node]
                entry[1] += 1
                entry[2][agent] = entry[2].get(agent, 0) + 1
            return trip

    def release(self, agent: str) -> None:
        """Take back a hop of ``agent`` claimed by this branch: the step ended without
        one (stopped, or raised and will run again)."""
        with _LOCK:
            entry = self.tally.get(self.name)
            if entry is not None and entry[2].get(agent, 0) > 0:
                entry[1] -= 1
                entry[2][agent] -= 1

    def _siblings(self, agent: str) -> tuple[int, int]:
        """Hops the other branches took that this branch's ledger does not show: all of
        them, and those of ``agent``.

        ``guard_sends`` already charged this branch one hop for each earlier sibling
        (lower fan-out index), and one of its node's hops for each earlier sibling sent to
        the same node: only the hops past those are added.
        """
        mine = self.index
        node = self.node
        total = of_agent = 0
        for name, (index, hops, agents, other_node) in self.tally.items():
            if name == self.name:
                continue
            theirs = agents.get(agent, 0)
            if mine >= 0 and 0 <= index < mine:
                hops -= 1
                if agent == node == other_node:
                    theirs -= 1
            if hops > 0:
                total += hops
            if theirs > 0:
                of_agent += theirs
        return total, of_agent


def branch_of(ledger: Mapping[str, Any], info: Any, config: Mapping[str, Any]) -> Branch | None:
    """The branch a step runs in, or None when it is not one of parallel branches.

    A step of a subgraph (its namespace has a ``|``) counts under its top-level task; a
    top-level step only when ``guard_sends`` made it a fan-out branch.
    """
    if info is None:
        return None
    ns: str = info.checkpoint_ns
    if "|" in ns:
        configurable = config.get("configurable") or {}
        root = (configurable.get("checkpoint_map") or {}).get("")
        base = ledger.get("base") or {}
        index = base.get(FANOUT_INDEX, -1)
    elif FANOUT_HOPS in ledger:
        root = info.checkpoint_id
        index = ledger["hops"] - ledger[FANOUT_HOPS]  # type: ignore[literal-required]
    else:
        return None
    if not root:
        return None
    with _LOCK:
        tally = _TALLIES.get(root)
        if tally is None:
            tally = _TALLIES[root] = {}
            if len(_TALLIES) > _MAX_SUPERSTEPS:
                _TALLIES.popitem(last=False)
    return Branch(tally, ns.split("|", 1)[0], index)
