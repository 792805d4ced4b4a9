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


def _raise_to(row: list[int], floor: Spend) -> None:
    row[0] = max(row[0], floor.usd_micros)
    row[1] = max(row[1], floor.input_tokens)
    row[2] = max(row[2], floor.output_tokens)


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


_Row = list[int]
"""Six ints: settled usd micro-dollars, input and output tokens, then the same reserved."""


def _row() -> _Row:
    return [0, 0, 0, 0, 0, 0]


class ThreadSpend:
    """What one thread paid, and the calls it has reserved and not settled yet.

    Every method takes the thread's lock for a few integer operations, never for I/O.
    The numbers are plain ints in lists (the meter reads and writes them on every call).
    """

    __slots__ = ("_agents", "_calls", "_next", "_thread", "lock", "thread_id")

    def __init__(
        self,
        thread_id: str,
        *,
        paid: Spend = _ZERO,
        paid_by_agent: Mapping[str, Spend] | None = None,
    ) -> None:
        self.thread_id = thread_id
        self.lock = threading.Lock()
        self._thread: _Row = [paid.usd_micros, paid.input_tokens, paid.output_tokens, 0, 0, 0]
        self._agents: dict[str, _Row] = {}
        for agent, s in (paid_by_agent or {}).items():
            self._agents[agent] = [s.usd_micros, s.input_tokens, s.output_tokens, 0, 0, 0]
        self._calls: dict[str, tuple[str, int, int, int]] = {}
        """Reservations not settled yet: call key -> (agent, usd, input, output)."""
        self._next: dict[str, int] = {}
        """The next call index of each task (by namespace) that made calls here."""

    # -- reads (lock held by the caller, or a snapshot) ---------------------------------

    def so_far(self, agent: str) -> tuple[int, int, int, int, int, int]:
        """Settled plus reserved, as ``(thread usd, input, output, agent usd, input,
        output)``, for a check (lock held)."""
        t = self._thread
        a = self._agents.get(agent)
        if a is None:
            return t[0] + t[3], t[1] + t[4], t[2] + t[5], 0, 0, 0
        return t[0] + t[3], t[1] + t[4], t[2] + t[5], a[0] + a[3], a[1] + a[4], a[2] + a[5]

    def catch_up(self, paid: Spend, by_agent: Mapping[str, Any]) -> None:
        """Count at least what a ledger's copy says was paid (component by component):
        another process may have run the thread since this log last saw it."""
        with self.lock:
            _raise_to(self._thread, paid)
            for agent, value in by_agent.items():
                row = self._agents.get(agent)
                if row is None:
                    row = self._agents[agent] = _row()
                _raise_to(row, Spend.coerce(value))

    def paid(self) -> Paid:
        """What the thread paid: its settled calls, by agent (a snapshot)."""
        with self.lock:
            t = self._thread
            return Paid(
                spend(t[0], t[1], t[2]),
                {
                    agent: spend(a[0], a[1], a[2])
                    for agent, a in self._agents.items()
                    if a[0] or a[1] or a[2]
                },
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

    def reserve(self, key: str, *, agent: str, usd: int, inp: int, out: int) -> None:
        """Count a call's projection as reserved (lock held: the check before it, and
        this, are one atomic step)."""
        self._calls[key] = (agent, usd, inp, out)
        t = self._thread
        t[3] += usd
        t[4] += inp
        t[5] += out
        a = self._agents.get(agent)
        if a is None:
            a = self._agents[agent] = _row()
        a[3] += usd
        a[4] += inp
        a[5] += out

    def _take(self, key: str) -> tuple[str, int, int, int] | None:
        found = self._calls.pop(key, None)
        if found is not None:
            agent, usd, inp, out = found
            t = self._thread
            t[3] -= usd
            t[4] -= inp
            t[5] -= out
            a = self._agents[agent]
            a[3] -= usd
            a[4] -= inp
            a[5] -= out
        return found

    def settle(self, key: str, actual: Spend) -> None:
        """Replace a reservation with what the call cost."""
        with self.lock:
            found = self._take(key)
            if found is not None:
                self._add(found[0], actual.usd_micros, actual.input_tokens, actual.output_tokens)

    def _add(self, agent: str, usd: int, inp: int, out: int) -> None:
        t = self._thread
        t[0] += usd
        t[1] += inp
        t[2] += out
        a = self._agents[agent]
        a[0] += usd
        a[1] += inp
        a[2] += out

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
            agent, usd, inp, out = found
            self._add(agent, usd, inp, out)
            return spend(usd, inp, out)


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
