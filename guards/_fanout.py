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
from collections.abc import Mapping
from typing import Any

from .ledger import FANOUT_HOPS, FANOUT_INDEX

__all__ = ("Branch", "branch_of")

_MAX_SUPERSTEPS = 256
_LOCK = threading.Lock()
_TALLIES: OrderedDict[str, dict[str, list[int]]] = OrderedDict()
"""Root checkpoint id -> branch -> [fan-out index (-1: none), hops taken]."""


class Branch:
    """One branch's place in its superstep's tally."""

    __slots__ = ("index", "name", "tally")

    def __init__(self, tally: dict[str, list[int]], name: str, index: int) -> None:
        self.tally = tally
        self.name = name
        self.index = index

    def claim(self, check: Any) -> Any:
        """Run ``check(siblings_hops)`` and, if it passes (returns None), count one hop
        for this branch, atomically: two siblings cannot both take the last hop."""
        with _LOCK:
            trip = check(self._siblings())
            if trip is None:
                entry = self.tally.get(self.name)
                if entry is None:
                    self.tally[self.name] = [self.index, 1]
                else:
                    entry[1] += 1
            return trip

    def release(self) -> None:
        """Take back a claimed hop: the step ended without one (stopped, or raised and
        will run again)."""
        with _LOCK:
            entry = self.tally.get(self.name)
            if entry is not None and entry[1] > 0:
                entry[1] -= 1

    def _siblings(self) -> int:
        """Hops the other branches took that this branch's ledger does not show.

        ``guard_sends`` already charged this branch one hop for each earlier sibling
        (lower fan-out index): of those, only the hops past the first are added.
        """
        mine = self.index
        extra = 0
        for name, (index, hops) in self.tally.items():
            if name == self.name:
                continue
            if mine >= 0 and 0 <= index < mine:
                hops -= 1
            if hops > 0:
                extra += hops
        return extra


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
