"""The account of one guarded step's model calls, against its thread's spend log.

:class:`Account` applies :func:`~.check.check_spend` (through its fast path, the gate) to a
new call against everything its thread paid and has reserved (:class:`~.log.ThreadSpend`),
and reserves the call there in the same atomic step, so parallel calls of the thread
cannot all pass on the same headroom. It keeps the step's own calls, for the step's
record. :class:`~.meter.BudgetMeter` is the LangChain callback handler that feeds it.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping
from typing import Any, cast
from uuid import UUID

from ..errors import BudgetExceeded
from ..trips import Trip
from .calls import FinishedCall, InFlight
from .check import REMEDY, below, budget_trip, check_spend, gate_for, no_warnings, usd
from .log import ThreadSpend
from .policy import Budget
from .spend import Spend, SpendPool, spend

__all__ = ("Account", "PoolHolds")

logger = logging.getLogger("sanegraph.guards.budget")

_ZERO = Spend()


class Account:
    """What one guarded step's calls spent, and the check a new call must pass.

    Args:
        budget: The limits.
        agent: The agent the calls are attributed to.
        thread: The thread's spend log entry (what every step of the thread paid).
        task: The step's task (its namespace): names its calls' keys and numbering.
        grants: Extra allowance granted by humans, by limit key.
        warned: Limit keys already warned about.
        hops: The thread's hop count, for trip records.
        first_call: The lowest index the step's first call may take (what a journal says
            earlier attempts of the task used).
    """

    __slots__ = (
        "_gate",
        "_warned",
        "agent",
        "budget",
        "calls",
        "first_call",
        "grants",
        "hops",
        "pending",
        "task",
        "thread",
        "trip",
        "warnings",
    )

    def __init__(
        self,
        budget: Budget,
        *,
        agent: str,
        thread: ThreadSpend,
        task: str,
        grants: Mapping[str, float] | None,
        warned: Collection[str],
        hops: int,
        first_call: int,
    ) -> None:
        self.budget = budget
        self.agent = agent
        self.thread = thread
        self.task = task
        self.grants = dict(grants) if grants else {}
        self.hops = hops
        self.first_call = first_call
        self._warned: set[str] = set(warned)
        self.warnings: list[str] = []
        """Limit keys whose warning threshold this step's calls reached (each once)."""
        self.pending: dict[UUID, InFlight] = {}
        """This step's calls in flight, by run id."""
        self.calls: list[FinishedCall] = []
        """This step's calls that ended, in the order they ended."""
        self._gate: tuple[dict[str, float], Any] | None = None
        self.trip: Trip | None = None
        """The step's first trip, or None."""

    @property
    def lock(self) -> Any:
        """The thread's lock (this account's numbers change under it)."""
        return self.thread.lock

    def spent(self) -> Spend:
        """What this step's finished calls cost."""
        with self.thread.lock:
            calls = list(self.calls)
        usd = inp = out = 0
        for call in calls:
            usd += call.usd_micros
            inp += call.input_tokens
            out += call.output_tokens
        return spend(usd, inp, out)

    def admit(self, run_id: UUID, call: InFlight) -> None:
        """Check the call against what its thread paid and has reserved, and reserve it
        there, or trip (:meth:`tripped`). The call's key index is already its own
        (:meth:`~.log.ThreadSpend.take_index`)."""
        thread = self.thread
        c_usd, c_in, c_out = call.usd_micros, call.input_tokens, call.output_tokens
        with thread.lock:
            t_usd, t_in, t_out, a_usd, a_in, a_out = thread.so_far(self.agent)
            gate = self._gate_now()
            if gate is not None and below(
                gate,
                c_in + call.max_tokens_or_zero,
                t_usd + c_usd,
                t_in + c_in,
                t_out + c_out,
                _ZERO,
                a_usd + c_usd,
                a_in + c_in,
                a_out + c_out,
            ):
                warnings = no_warnings
            else:
                projected = spend(c_usd, c_in, c_out)
                trip, warnings = check_spend(
                    spend(t_usd, t_in, t_out),
                    projected,
                    budget=self.budget,
                    agent=self.agent,
                    spent_by_agent={self.agent: spend(a_usd, a_in, a_out)},
                    grants=self.grants,
                    warned=self._warned,
                    hops=self.hops,
                    call_tokens=c_in + call.max_tokens_or_zero,
                )
                if trip is not None:
                    cast(dict[str, Any], trip)["projected"] = projected.to_dict()
                    self.tripped(trip)
            # Reserved before any pool or provider is asked, so a parallel call sees it.
            thread.reserve(call.key, agent=self.agent, usd=c_usd, inp=c_in, out=c_out)
            self.pending[run_id] = call
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

    def forget(self, run_id: UUID) -> InFlight | None:
        """Take back a call that failed before it was billed (or was never made)."""
        call = self.pending.pop(run_id, None)
        if call is not None:
            self.thread.release(call.key)
        return call

    def settle(self, done: FinishedCall) -> None:
        """Replace a call's reservation with what it cost."""
        self.pending.pop(done.run_id, None)
        self.thread.settle(done.flight.key, done.spend)
        with self.thread.lock:
            self.calls.append(done)

    def close(self) -> list[InFlight]:
        """The step ended: calls still in flight (no word from their provider) count at
        their projection, since they may have been billed. Returns them."""
        left = list(self.pending.values())
        self.pending.clear()
        for call in left:
            self.thread.settle_at_projection(call.key)
        return left

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

    def commit_left(self, left: list[tuple[UUID, Spend]]) -> None:
        """Commit the calls that never ended at their projection (the step ended)."""
        for run_id, projected in left:
            self.commit(run_id, projected)
