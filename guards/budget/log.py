"""The spend log: what each thread paid, the source of truth for its budget.

Money paid to a provider is a fact, not graph state. A guarded graph keeps one
:class:`SpendLog` (made by ``GuardedStateGraph.compile``), and in it one
:class:`ThreadSpend` per thread: every model call the thread makes is reserved there at
its projection before it is made and settled at what it cost after, whatever the step
that made it does next (raises, is retried, is rolled back or forked, or runs alongside
its siblings). The ledger carries a copy (``spent``, ``spent_by_agent``) for routing and
display, folded as the highest figure any step reported, so a ledger that went back in
time (a rollback, a fork, a step whose write was lost) catches up with its next step.

What the log outlives depends on where it is kept:

- in memory (no journal): the calls of the graph's threads in this process, for the
  compiled graph's lifetime (a few hundred bytes a thread);
- with a journal (``compile(journal=Journal(...))``): every call is journaled as a
  reservation before it is made and settled after, so a thread read again in another
  process, after a crash, starts from everything it paid; a reservation never settled
  (the process died mid-call) counts at its projection, which is an upper bound when the
  model sets ``max_tokens``.

All branches of a thread share its :class:`ThreadSpend`: a call's check and its
reservation are one atomic step under the thread's lock, so parallel calls (branches of
one superstep, nested subgraphs, concurrent tool loops) cannot all pass on the same
headroom.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .spend import Spend, spend

__all__ = ("Paid", "SpendLog", "ThreadSpend")

_ZERO = Spend()


@dataclass(frozen=True, slots=True)
class Paid:
    """A thread's spend: in total and by agent (calls settled, plus reservations of calls
    that never settled, at their projection)."""

    total: Spend
    by_agent: Mapping[str, Spend]

    def to_delta(self) -> dict[str, Any]:
        """The ledger delta that makes the ledger's copy catch up with this."""
        return {
            "total": self.total.to_dict(),
            "by_agent": {agent: s.to_dict() for agent, s in self.by_agent.items()},
        }


class _Totals:
    """Ints: usd micro-dollars, input tokens, output tokens."""

    __slots__ = ("inp", "out", "usd")

    def __init__(self, usd: int = 0, inp: int = 0, out: int = 0) -> None:
        self.usd, self.inp, self.out = usd, inp, out

    def add(self, s: Spend, sign: int = 1) -> None:
        self.usd += sign * s.usd_micros
        self.inp += sign * s.input_tokens
        self.out += sign * s.output_tokens

    def spend(self) -> Spend:
        return spend(self.usd, self.inp, self.out)


def _raise_to(totals: _Totals, floor: Spend) -> None:
    totals.usd = max(totals.usd, floor.usd_micros)
    totals.inp = max(totals.inp, floor.input_tokens)
    totals.out = max(totals.out, floor.output_tokens)


class ThreadSpend:
    """What one thread paid, and the calls it has reserved and not settled yet.

    Every method takes the thread's lock for a few integer operations, never for I/O.
    """

    __slots__ = (
        "_agents",
        "_calls",
        "_next",
        "_reserved",
        "_settled",
        "lock",
        "thread_id",
    )

    def __init__(
        self,
        thread_id: str,
        *,
        paid: Spend = _ZERO,
        paid_by_agent: Mapping[str, Spend] | None = None,
    ) -> None:
        self.thread_id = thread_id
        self.lock = threading.Lock()
        self._settled = _Totals(paid.usd_micros, paid.input_tokens, paid.output_tokens)
        self._reserved = _Totals()
        self._agents: dict[str, tuple[_Totals, _Totals]] = {}
        for agent, s in (paid_by_agent or {}).items():
            self._agent(agent)[0].add(s)
        self._calls: dict[str, tuple[str, Spend]] = {}
        """Reservations not settled yet: call key -> (agent, projection)."""
        self._next: dict[str, int] = {}
        """The next call index of each task (by namespace) that made calls here."""

    def _agent(self, agent: str) -> tuple[_Totals, _Totals]:
        found = self._agents.get(agent)
        if found is None:
            found = self._agents[agent] = (_Totals(), _Totals())
        return found

    # -- reads (lock held by the caller, or a snapshot) ---------------------------------

    def so_far(self, agent: str) -> tuple[Spend, Spend]:
        """``(thread, agent)``: settled plus reserved, for a check (lock held)."""
        s, r = self._settled, self._reserved
        thread = spend(s.usd + r.usd, s.inp + r.inp, s.out + r.out)
        found = self._agents.get(agent)
        if found is None:
            return thread, _ZERO
        a, b = found
        return thread, spend(a.usd + b.usd, a.inp + b.inp, a.out + b.out)

    def catch_up(self, paid: Spend, by_agent: Mapping[str, Any]) -> None:
        """Count at least what a ledger's copy says was paid (component by component):
        another process may have run the thread since this log last saw it."""
        with self.lock:
            _raise_to(self._settled, paid)
            for agent, value in by_agent.items():
                _raise_to(self._agent(agent)[0], Spend.coerce(value))

    def paid(self) -> Paid:
        """What the thread paid: its settled calls, by agent (a snapshot)."""
        with self.lock:
            return Paid(
                self._settled.spend(),
                {agent: t[0].spend() for agent, t in self._agents.items() if t[0].usd or t[0].inp},
            )

    # -- call indices ---------------------------------------------------------------------

    def take_index(self, task: str, first: int) -> int:
        """The next call index of ``task`` (at least ``first``, what a journal says earlier
        attempts used): retries and re-runs of a task number their calls after the ones
        before, so every real call has its own key."""
        with self.lock:
            index = max(self._next.get(task, 0), first)
            self._next[task] = index + 1
            return index

    def task_done(self, task: str) -> None:
        """Forget a task's call numbering: it finished and will not run again."""
        with self.lock:
            self._next.pop(task, None)

    # -- reservations (lock held by the caller for reserve) ---------------------------

    def reserve(self, key: str, *, agent: str, projected: Spend) -> None:
        """Count a call's projection as reserved (lock held: the check before it, and
        this, are one atomic step)."""
        self._calls[key] = (agent, projected)
        self._reserved.add(projected)
        self._agent(agent)[1].add(projected)

    def _take(self, key: str) -> tuple[str, Spend] | None:
        found = self._calls.pop(key, None)
        if found is not None:
            agent, projected = found
            self._reserved.add(projected, -1)
            self._agent(agent)[1].add(projected, -1)
        return found

    def settle(self, key: str, actual: Spend) -> None:
        """Replace a reservation with what the call cost."""
        with self.lock:
            found = self._take(key)
            if found is not None:
                self._settled.add(actual)
                self._agent(found[0])[0].add(actual)

    def release(self, key: str) -> None:
        """Drop a reservation: the call failed before it was billed."""
        with self.lock:
            self._take(key)

    def settle_at_projection(self, key: str) -> Spend | None:
        """Settle a call that never ended at its projection (its step ended without a
        word from it: it may have been billed). Returns the projection, or None."""
        with self.lock:
            found = self._take(key)
            if found is None:
                return None
            agent, projected = found
            self._settled.add(projected)
            self._agent(agent)[0].add(projected)
            return projected


class SpendLog:
    """The spend of a compiled graph's threads (see the module docstring).

    Args:
        journal: A durable journal to read threads from and write calls to, or None.
    """

    __slots__ = ("_lock", "_threads", "journal")

    def __init__(self, *, journal: Any = None) -> None:
        self.journal = journal
        self._lock = threading.Lock()
        self._threads: dict[str, ThreadSpend] = {}

    def thread(
        self, thread_id: str, *, seed: tuple[Spend, Mapping[str, Spend]] | None
    ) -> ThreadSpend:
        """The thread's spend, made on first use from ``seed`` (what the journal, or else
        the ledger's copy, says the thread paid).

        ``seed`` is read by the caller when :meth:`known` says the thread is new here, so
        that reading a journal (I/O) happens outside the log's lock and, in async code,
        off the event loop.
        """
        with self._lock:
            found = self._threads.get(thread_id)
            if found is None:
                paid, by_agent = seed if seed is not None else (_ZERO, {})
                found = self._threads[thread_id] = ThreadSpend(
                    thread_id, paid=paid, paid_by_agent=by_agent
                )
            return found

    def known(self, thread_id: str) -> ThreadSpend | None:
        """The thread's spend if this log has it already."""
        return self._threads.get(thread_id)
