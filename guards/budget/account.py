"""The account of one guarded step's model calls: what they spent, what is in flight, and
the check a new call must pass before it is made.

:class:`Account` holds the numbers and applies :func:`~.check.check_spend` (through its
fast path, the gate) atomically with counting the call as in flight, so that parallel
calls cannot all pass on the same headroom. The steps that run alongside each other in a
thread (parallel branches of a superstep) put their accounts in one :class:`SpendGroup`
and count each other's spend; an account nested in another (a guarded step inside a
guarded step) counts what the enclosing ones spent and passes its own spend up.
:class:`~.meter.BudgetMeter` is the LangChain callback handler that feeds it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Collection, Mapping
from typing import Any, cast
from uuid import UUID

from ..errors import BudgetExceeded
from ..trips import Trip
from .calls import FinishedCall, InFlight
from .check import REMEDY, below, budget_trip, check_spend, gate_for, no_warnings, usd
from .policy import Budget
from .spend import Spend, SpendPool, spend

__all__ = ("Account", "PoolHolds", "SpendGroup")

logger = logging.getLogger("sanegraph.guards.budget")

_ZERO = Spend()


class _Tally:
    """An account's running totals, in ints (updated on every call, read by its group)."""

    __slots__ = ("f_in", "f_out", "f_usd", "inp", "n_in", "n_out", "n_usd", "out", "usd")

    def __init__(self) -> None:
        self.usd = self.inp = self.out = 0  # ended calls
        self.f_usd = self.f_in = self.f_out = 0  # calls in flight, at their projection
        self.n_usd = self.n_in = self.n_out = 0  # calls of accounts nested in this one

    def own(self) -> Spend:
        """This step's calls, ended and in flight."""
        return spend(self.usd + self.f_usd, self.inp + self.f_in, self.out + self.f_out)

    def add_flight(self, call: InFlight, sign: int) -> None:
        self.f_usd += sign * call.usd_micros
        self.f_in += sign * call.input_tokens
        self.f_out += sign * call.output_tokens


class SpendGroup:
    """The accounts of steps that run at the same time in one thread.

    Parallel branches of a superstep all start from the same ledger, so none of them sees
    what the others spend until the superstep ends. Their accounts join one group, share
    its lock, and count each other's spend (ended calls, calls in flight, and nested
    steps') in every check: the branches draw on one budget. A guarded step finds its
    group in the run's scope (one per parent checkpoint and namespace level).
    """

    __slots__ = ("_members", "lock")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self._members: list[Account] = []

    def join(self, account: Account) -> None:
        """Add an account (its constructor does)."""
        with self.lock:
            self._members.append(account)

    def others(self, account: Account) -> Spend:
        """What the other members spent and have in flight (call with ``lock`` held)."""
        usd = inp = out = 0
        for other in self._members:
            if other is not account:
                t = other.tally
                usd += t.usd + t.n_usd + t.f_usd
                inp += t.inp + t.n_in + t.f_in
                out += t.out + t.n_out + t.f_out
        return spend(usd, inp, out)

    def others_locked(self, account: Account) -> Spend:
        """:meth:`others`, taking the lock."""
        with self.lock:
            return self.others(account)


class Account:
    """What one guarded step's calls spent, and the check a new call must pass.

    Args:
        budget: The limits.
        agent: The agent the calls are attributed to.
        spent_before: The thread's spend before this step.
        spent_by_agent_before: Spend per agent before this step.
        grants: Extra allowance granted by humans, by limit key.
        warned: Limit keys already warned about.
        hops: The thread's hop count, for trip records.
        first_call: The index of the step's first call.
        group: The accounts of steps running alongside this one, or None.
    """

    __slots__ = (
        "_agent_before",
        "_before",
        "_gate",
        "_group",
        "_warned",
        "agent",
        "budget",
        "calls",
        "grants",
        "hops",
        "lock",
        "outer",
        "pending",
        "started",
        "tally",
        "trip",
        "warnings",
    )

    def __init__(
        self,
        budget: Budget,
        *,
        agent: str,
        spent_before: Spend | Mapping[str, int] | None,
        spent_by_agent_before: Mapping[str, Spend | Mapping[str, int]] | None,
        grants: Mapping[str, float] | None,
        warned: Collection[str],
        hops: int,
        first_call: int,
        group: SpendGroup | None,
    ) -> None:
        self.budget = budget
        self.agent = agent
        self.grants = dict(grants) if grants else {}
        self.hops = hops
        self._before = _ZERO if spent_before is None else Spend.coerce(spent_before)
        self._agent_before = (
            Spend.coerce(spent_by_agent_before.get(agent)) if spent_by_agent_before else _ZERO
        )
        self._warned: set[str] = set(warned)
        self.warnings: list[str] = []
        """Limit keys whose warning threshold this step's calls reached (each once)."""
        self._group = group
        # Accounts of one group share a lock: a call's check and its registration as in
        # flight are atomic across parallel branches, so two cannot both take the last room.
        self.lock = threading.Lock() if group is None else group.lock
        self.tally = _Tally()
        if group is not None:
            group.join(self)
        self.outer: Account | None = None
        """The account of the enclosing guarded step, if this one is nested in it."""
        self.pending: dict[UUID, InFlight] = {}
        """Calls in flight, by run id."""
        self.calls: list[FinishedCall] = []
        """Calls that ended, in the order they ended."""
        self.started = first_call
        self._gate: tuple[dict[str, float], Any] | None = None
        self.trip: Trip | None = None
        """The step's first trip, or None."""

    def _outer_spend(self) -> Spend:
        """What enclosing steps (and their siblings) spent so far: not in this step's
        ledger yet."""
        outer = _ZERO
        parent = self.outer
        while parent is not None:
            with parent.lock:
                outer = outer + parent.tally.own()
            if parent._group is not None:
                outer = outer + parent._group.others_locked(parent)
            parent = parent.outer
        return outer

    def admit(self, run_id: UUID, call: InFlight) -> InFlight:
        """Check the call against everything spent so far and count it as in flight, or
        trip (:meth:`tripped`). Returns the call with its index in the step."""
        outer = self._outer_spend() if self.outer is not None else _ZERO
        c_usd, c_in, c_out = call.usd_micros, call.input_tokens, call.output_tokens
        t = self.tally
        with self.lock:
            # Own calls (ended and in flight) count for the agent; nested steps' calls
            # (other agents) and enclosing steps' count for the thread only.
            own = t.own()
            before = self._before
            others = self._group.others(self) if self._group is not None else _ZERO
            usd_total = before.usd_micros + own.usd_micros + t.n_usd + outer.usd_micros
            in_total = before.input_tokens + own.input_tokens + t.n_in + outer.input_tokens
            out_total = before.output_tokens + own.output_tokens + t.n_out + outer.output_tokens
            usd_total += others.usd_micros
            in_total += others.input_tokens
            out_total += others.output_tokens
            gate = self._gate_now()
            if gate is not None and below(
                gate,
                c_in + c_out,
                usd_total + c_usd,
                in_total + c_in,
                out_total + c_out,
                self._agent_before,
                own.usd_micros + c_usd,
                own.input_tokens + c_in,
                own.output_tokens + c_out,
            ):
                warnings = no_warnings
            else:
                projected = spend(c_usd, c_in, c_out)
                trip, warnings = check_spend(
                    spend(usd_total, in_total, out_total),
                    projected,
                    budget=self.budget,
                    agent=self.agent,
                    spent_by_agent={self.agent: self._agent_before + own},
                    grants=self.grants,
                    warned=self._warned,
                    hops=self.hops,
                )
                if trip is not None:
                    cast(dict[str, Any], trip)["projected"] = projected.to_dict()
                    self.tripped(trip)
            call = call._replace(call_index=self.started)
            self.started += 1
            # Counted as in flight before a pool is asked, so a parallel call sees it.
            self.pending[run_id] = call
            t.add_flight(call, 1)
            for warned in warnings:
                self._warned.add(warned)
                self.warnings.append(warned)
        for warned in warnings:
            logger.warning(
                "Budget warning: the model calls of %r reached %s of the %s limit.",
                self.agent,
                f"{self.budget.warn_at:.0%}",
                warned,
            )
        return call

    def forget(self, run_id: UUID) -> None:
        """Take a call off the calls in flight, if it still is (a failed call, or one
        never made)."""
        with self.lock:
            call = self.pending.pop(run_id, None)
            if call is not None:  # not if clear() came first
                self.tally.add_flight(call, -1)

    def settle(self, done: FinishedCall) -> None:
        """Replace a call's projection by what it used, here and in enclosing accounts."""
        t = self.tally
        with self.lock:
            if self.pending.pop(done.run_id, None) is not None:
                t.add_flight(done.flight, -1)
            t.usd += done.usd_micros
            t.inp += done.input_tokens
            t.out += done.output_tokens
            self.calls.append(done)
        parent = self.outer
        while parent is not None:
            with parent.lock:
                pt = parent.tally
                pt.n_usd += done.usd_micros
                pt.n_in += done.input_tokens
                pt.n_out += done.output_tokens
            parent = parent.outer

    def clear(self) -> None:
        """Forget every call in flight (the step ended)."""
        t = self.tally
        with self.lock:
            self.pending.clear()
            t.f_usd = t.f_in = t.f_out = 0

    def tripped(self, trip: Trip) -> None:
        """Keep the step's first trip and raise it as :class:`BudgetExceeded`."""
        cast(dict[str, Any], trip).setdefault("projected", None)
        if self.trip is None:
            self.trip = trip
        raise BudgetExceeded(
            trip["message"],
            limit=trip["limit"],
            observed=trip["observed"],
            agent=trip["agent"],
            scope=trip["scope"],
            trip=trip,
        )

    def _gate_now(self) -> Any:
        """The warning thresholds of the budget's limits for this agent and grants,
        rebuilt when ``grants`` change (lock held)."""
        cached = self._gate
        if cached is None or cached[0] != self.grants:
            cached = self._gate = (
                dict(self.grants),
                gate_for(self.budget, self.agent, self.grants),
            )
        return cached[1]


class PoolHolds:
    """A step's reservations in a shared pool: one per call in flight, reserved before the
    call (at its projection), committed at what it cost, released if it failed."""

    __slots__ = ("_account", "_held", "pool")

    def __init__(self, pool: SpendPool, account: Account) -> None:
        self.pool = pool
        self._account = account
        self._held: dict[UUID, object] = {}

    def reserve(self, run_id: UUID, call: InFlight) -> None:
        """Reserve a call's projection, or take the call off the account and trip."""
        account = self._account
        projected = spend(call.usd_micros, call.input_tokens, call.output_tokens)
        try:
            reservation = self.pool.reserve(projected, key=call.key)
        except BaseException:
            account.forget(run_id)
            raise
        if reservation is None:
            account.forget(run_id)
            account.tripped(
                budget_trip(
                    "The next model call would exceed the shared budget pool (next "
                    f"call ~{usd(projected.usd_micros)}, {projected.tokens} tokens, "
                    f"agent={account.agent!r}): the pool refused the reservation. Raise the "
                    f"pool's limit, {REMEDY}",
                    key="pool",
                    limit=None,
                    observed=projected.usd,
                    agent=account.agent,
                    hops=account.hops,
                    scope="pool",
                )
            )
        with account.lock:
            self._held[run_id] = reservation

    def commit(self, run_id: UUID, actual: Spend) -> None:
        """Replace a call's reservation with what it cost."""
        with self._account.lock:
            reservation = self._held.pop(run_id, None)
        if reservation is not None:
            self.pool.commit(reservation, actual)

    def release(self, run_id: UUID) -> None:
        """Give back a failed call's reservation."""
        with self._account.lock:
            reservation = self._held.pop(run_id, None)
        if reservation is not None:
            self.pool.release(reservation)

    def release_all(self) -> None:
        """Give back the reservations of calls that never ended (the step ended)."""
        with self._account.lock:
            left = list(self._held.values())
            self._held.clear()
        for reservation in left:
            self.pool.release(reservation)
