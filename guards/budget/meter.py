"""The budget meter: the LangChain callback handler that applies a :class:`Budget` to the
model calls of one guarded step.

A sync handler with ``raise_error = True`` and ``run_inline = True``: raising in
``on_chat_model_start`` aborts the call before the model runs, for ``invoke`` and
``ainvoke`` alike (an async handler could not stop a sync call).

Before each call (``on_chat_model_start``) it reads the provider, model and ``max_tokens``
from the run metadata LangChain adds for every chat model (``ls_provider``,
``ls_model_name``, ``ls_max_tokens``; falling back to ``invocation_params``), counts the
input tokens with ``count_tokens_approximately`` (messages, plus tool schemas found in
``invocation_params["tools"]``; see :class:`~.tokens.TokenCounter`) and projects the call
as ``input tokens + max_tokens`` (input only when the model sets no ``max_tokens``: then
the output of the last allowed call can overshoot a limit). It runs :func:`check_spend`
(skipped when every limit stays below its warning threshold, where it would neither trip
nor warn) against everything spent so far (``spent_before`` plus this step's calls, ended
and in flight, plus what steps running alongside it spent), then reserves the projection
in ``pool`` if one is set. Either refusing raises :class:`BudgetExceeded` carrying the trip
record; the first trip is also kept in :attr:`BudgetMeter.trip` (an agent may swallow the
exception).

After each call (``on_llm_end``) it reads ``usage_metadata`` from the answer (estimating
it, or refusing the model, per ``Budget.no_usage``), prices it, adds it to
:attr:`BudgetMeter.spent`, commits the pool reservation and calls ``on_call`` with the
call's record. A failed call (``on_llm_error``) releases its reservation.

Call keys: ``"<key>|<index>"``, where ``index`` counts the step's calls in the order they
start and ``key`` defaults to ``"<thread_id>|<checkpoint_ns>"`` from the first call's
metadata (``thread_id`` and ``langgraph_checkpoint_ns``, i.e. ``node:task_id``, which a
re-run task keeps), or a random ``"meter-<hex>"`` outside a graph.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Collection, Mapping
from contextlib import AbstractContextManager
from contextvars import ContextVar
from typing import Any, cast
from uuid import UUID, uuid4

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import BaseMessage
from langchain_core.messages.utils import count_tokens_approximately
from langchain_core.outputs import LLMResult
from langchain_core.tracers.context import register_configure_hook

from ..errors import BudgetExceeded, ConfigurationError
from ..trips import Trip
from .calls import FinishedCall, InFlight, call_model, estimated_output, max_tokens_of, usage_of
from .check import REMEDY, below, budget_trip, check_spend, gate_for, no_warnings, usd
from .policy import Budget
from .pricing import Price, Pricer, pricer
from .spend import Spend, SpendPool, spend
from .tokens import TokenCounter

__all__ = ("BudgetMeter", "SpendGroup", "metering")

logger = logging.getLogger("sanegraph.guards.budget")

_ZERO = Spend()


class _Tally:
    """A meter's running totals, in ints (updated on every call, read by its siblings)."""

    __slots__ = ("f_in", "f_out", "f_usd", "inp", "n_in", "n_out", "n_usd", "out", "usd")

    def __init__(self) -> None:
        self.usd = self.inp = self.out = 0  # ended calls
        self.f_usd = self.f_in = self.f_out = 0  # calls in flight, at their projection
        self.n_usd = self.n_in = self.n_out = 0  # calls of meters nested in this one

    def own(self) -> Spend:
        """This step's calls, ended and in flight."""
        return spend(self.usd + self.f_usd, self.inp + self.f_in, self.out + self.f_out)

    def add_flight(self, call: InFlight, sign: int) -> None:
        self.f_usd += sign * call.usd_micros
        self.f_in += sign * call.input_tokens
        self.f_out += sign * call.output_tokens


class SpendGroup:
    """The budget meters of steps that run at the same time in one thread.

    Parallel branches of a superstep all start from the same ledger, so none of them sees
    what the others spend until the superstep ends. Their meters join one group, share
    its lock, and count each other's spend (ended calls, calls in flight, and nested
    steps') in every intake check: the branches draw on one budget. A guarded step finds
    its group in the run's scope (one per parent checkpoint and namespace level).
    """

    __slots__ = ("_members", "lock")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self._members: list[BudgetMeter] = []

    def join(self, meter: BudgetMeter) -> None:
        """Add a meter (its constructor does)."""
        with self.lock:
            self._members.append(meter)

    def others(self, meter: BudgetMeter) -> Spend:
        """What the other members spent and have in flight (call with ``lock`` held)."""
        usd = inp = out = 0
        for other in self._members:
            if other is not meter:
                t = other._tally
                usd += t.usd + t.n_usd + t.f_usd
                inp += t.inp + t.n_in + t.f_in
                out += t.out + t.n_out + t.f_out
        return spend(usd, inp, out)

    def others_locked(self, meter: BudgetMeter) -> Spend:
        """:meth:`others`, taking the lock."""
        with self.lock:
            return self.others(meter)


class BudgetMeter(BaseCallbackHandler):
    """Meters one guarded step's model calls and blocks a call the budget cannot cover
    (see the module docstring for the rules).

    Attach it with :func:`metering` (every call made in the context, whatever config the
    call is given; nested guarded steps meter their own calls) or pass it in
    ``config={"callbacks": [meter]}`` (calls under that config only).

    Args:
        budget: The limits.
        agent: The agent the step's calls are attributed to.
        spent_before: The thread's spend before this step (``Ledger.spent``).
        spent_by_agent_before: Spend per agent before this step.
        prices: Policy prices; defaults to ``budget.prices``.
        pool: A shared pool to reserve each call in.
        on_call: Called with each metered call's record (the journal hook).
        grants: Extra allowance granted by humans, by limit key (``Ledger.grants``).
        warned: Limit keys already warned about (``Ledger.warned``).
        hops: The thread's hop count, for trip records.
        key: Prefix of the call keys.
        first_call: The index of the step's first call: a re-run of a task whose earlier
            attempt made calls continues after them.
        group: The meters of steps running at the same time in the thread: each call's
            check also counts what the others spent and have in flight.
        tokens: The token counter to count input messages with (a run shares one).
        refused: ``(provider, model)`` pairs to refuse under ``no_usage="refuse"`` (a run
            shares one set).

    Attributes:
        trip: The step's first trip record, or None.

    Example:
        ```python
        meter = BudgetMeter(Budget(usd=5), agent="analyst")
        model = ScriptedChatModel(["hi"], max_tokens=256)
        model.invoke("hello", config={"callbacks": [meter]})
        print(meter.spent.usd, meter.calls[0]["model"], meter.warnings)
        ```
    """

    raise_error = True
    run_inline = True
    # Read by LangChain for every event of every run the meter is attached to: class
    # attributes, read without a call. Only model events are metered.
    ignore_chain = True
    ignore_agent = True
    ignore_retriever = True
    ignore_retry = True
    ignore_custom_event = True
    ignore_llm = False
    ignore_chat_model = False

    __slots__ = (
        "_agent_before",
        "_before",
        "_calls",
        "_gate",
        "_group",
        "_lock",
        "_outer",
        "_pending",
        "_priced",
        "_refused",
        "_reserved",
        "_started",
        "_tally",
        "_tokens",
        "_warned",
        "_warnings",
        "agent",
        "budget",
        "grants",
        "hops",
        "key",
        "on_call",
        "pool",
        "prices",
        "trip",
    )

    def __init__(
        self,
        budget: Budget,
        *,
        agent: str,
        spent_before: Spend | Mapping[str, int] | None = None,
        spent_by_agent_before: Mapping[str, Spend | Mapping[str, int]] | None = None,
        prices: Mapping[str, Price] | None = None,
        pool: SpendPool | None = None,
        on_call: Callable[[dict[str, Any]], None] | None = None,
        grants: Mapping[str, float] | None = None,
        warned: Collection[str] = (),
        hops: int = 0,
        key: str | None = None,
        first_call: int = 0,
        group: SpendGroup | None = None,
        tokens: TokenCounter | None = None,
        refused: set[tuple[str | None, str]] | None = None,
    ) -> None:
        if not isinstance(budget, Budget):
            raise ConfigurationError(
                f"BudgetMeter needs a Budget, got {type(budget).__name__}. Pass e.g. "
                "BudgetMeter(Budget(usd=5), agent='analyst')."
            )
        self.budget = budget
        self.agent = agent
        self.prices = budget.prices if prices is None else prices
        self.pool = pool
        self.on_call = on_call
        self.grants = dict(grants) if grants else {}
        self.hops = hops
        self.key = key
        self._before = _ZERO if spent_before is None else Spend.coerce(spent_before)
        self._agent_before = (
            Spend.coerce(spent_by_agent_before.get(agent)) if spent_by_agent_before else _ZERO
        )
        self._warned: set[str] = set(warned)
        self._group = group
        # Meters of one group share a lock: a call's check and its registration as in
        # flight are atomic across parallel branches, so two cannot both take the last room.
        self._lock = threading.Lock() if group is None else group.lock
        self._tally = _Tally()
        if group is not None:
            group.join(self)
        self._tokens = tokens if tokens is not None else TokenCounter()
        self._refused = refused if refused is not None else set()
        self._outer: BudgetMeter | None = None
        self._pending: dict[UUID, InFlight] = {}
        self._reserved: dict[UUID, object] = {}
        self._calls: list[FinishedCall] = []
        self._priced: tuple[str | None, str, Pricer] | None = None
        self._warnings: list[str] = []
        self._started = first_call
        self._gate: tuple[dict[str, float], Any] | None = None
        self.trip: Trip | None = None

    # -- what was spent -------------------------------------------------------------------

    @property
    def spent(self) -> Spend:
        """What this step's finished calls spent."""
        t = self._tally
        with self._lock:
            return spend(t.usd, t.inp, t.out)

    @property
    def nested_spent(self) -> Spend:
        """What calls metered by meters nested in this one (guarded steps inside this
        step, see :func:`metering`) spent. Not in :attr:`spent`; counted in the checks."""
        t = self._tally
        with self._lock:
            return spend(t.n_usd, t.n_in, t.n_out)

    @property
    def calls(self) -> list[dict[str, Any]]:
        """The records of this step's finished calls, in the order they finished (a copy):
        ``key``, ``index``, ``run_id``, ``parent_run_id``, ``agent``, ``provider``,
        ``model``, ``input_tokens``, ``output_tokens``, ``usd_micros``, ``estimated``,
        ``max_tokens``, ``projected`` (a ``Spend`` dict), ``thread_id``,
        ``checkpoint_ns``, ``node``."""
        with self._lock:
            calls = list(self._calls)
        return [call.record(self.agent) for call in calls]

    @property
    def warnings(self) -> list[str]:
        """Limit keys whose ``warn_at`` threshold this step's calls reached (each once)."""
        with self._lock:
            return list(self._warnings)

    # -- intake -------------------------------------------------------------------------

    def on_chat_model_start(
        self,
        serialized: dict[str, Any],
        messages: list[list[BaseMessage]],
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        """Project the call and block it if the budget or the pool cannot cover it."""
        params: Mapping[str, Any] = kwargs.get("invocation_params") or {}
        tools = params.get("tools")
        count = self._tokens.count
        # count_tokens_approximately(batch, tools=tools) for each batch, from cached parts.
        counted = count(messages[0]) if len(messages) == 1 else sum(map(count, messages))
        if isinstance(tools, list) and tools:
            counted += self._tokens.tools(tools) * len(messages)
        self._intake(run_id, parent_run_id, metadata or {}, params, counted)

    def on_llm_start(
        self,
        serialized: dict[str, Any],
        prompts: list[str],
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        """Same as :meth:`on_chat_model_start`, for completion (non-chat) models."""
        params: Mapping[str, Any] = kwargs.get("invocation_params") or {}
        counted = count_tokens_approximately([("human", p) for p in prompts])
        self._intake(run_id, parent_run_id, metadata or {}, params, counted)

    def _intake(
        self,
        run_id: UUID,
        parent_run_id: UUID | None,
        metadata: Mapping[str, Any],
        params: Mapping[str, Any],
        input_tokens: int,
    ) -> None:
        active = _ACTIVE.get()
        if active is not None and active is not self:
            return  # a meter nested in this one (an inner guarded step) meters the call
        provider, model = call_model(metadata, params)
        if self.budget.no_usage == "refuse" and (provider, model) in self._refused:
            raise ConfigurationError(
                f"Model {model!r} (provider {provider!r}) reports no usage_metadata and "
                "Budget.no_usage='refuse': the call was not made. Use a chat model "
                "integration that reports usage, or set Budget(no_usage='estimate')."
            )
        max_tokens = max_tokens_of(metadata, params)
        output_tokens = max_tokens or 0
        priced = self._priced
        if priced is None or priced[1] != model or priced[0] != provider:
            priced = self._priced = (provider, model, pricer(provider, model, self.prices))
        price = priced[2]
        prefix = self.key
        if prefix is None:
            thread = metadata.get("thread_id")
            ns = metadata.get("langgraph_checkpoint_ns")
            # Outside a graph there is nothing stable to key on: keys are unique only.
            prefix = self.key = f"{thread}|{ns}" if thread or ns else f"meter-{uuid4().hex}"
        call = InFlight(
            0,
            prefix,
            provider,
            model,
            input_tokens,
            max_tokens,
            price(input_tokens, output_tokens),
            output_tokens,
            price,
            parent_run_id,
            metadata,
        )
        call = self._admit(run_id, call)
        if self.pool is not None:
            self._reserve(run_id, call)

    def _outer_spend(self) -> Spend:
        """What enclosing steps (and their siblings) spent so far: not in this step's
        ledger yet."""
        outer = _ZERO
        parent = self._outer
        while parent is not None:
            with parent._lock:
                outer = outer + parent._tally.own()
            if parent._group is not None:
                outer = outer + parent._group.others_locked(parent)
            parent = parent._outer
        return outer

    def _admit(self, run_id: UUID, call: InFlight) -> InFlight:
        """Check the call against everything spent so far and count it as in flight, or
        trip (atomic across the group: two calls cannot both take the last room)."""
        outer = self._outer_spend() if self._outer is not None else _ZERO
        c_usd, c_in, c_out = call.usd_micros, call.input_tokens, call.output_tokens
        t = self._tally
        with self._lock:
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
                    self._tripped(trip)
            call = call._replace(call_index=self._started)
            self._started += 1
            # Counted as in flight before the pool is asked, so a parallel call sees it.
            self._pending[run_id] = call
            t.add_flight(call, 1)
            for warned in warnings:
                self._warned.add(warned)
                self._warnings.append(warned)
        for warned in warnings:
            logger.warning(
                "Budget warning: the model calls of %r reached %s of the %s limit.",
                self.agent,
                f"{self.budget.warn_at:.0%}",
                warned,
            )
        return call

    def _reserve(self, run_id: UUID, call: InFlight) -> None:
        """Reserve a call's projection in the pool, or forget the call and trip."""
        pool = cast(SpendPool, self.pool)
        projected = spend(call.usd_micros, call.input_tokens, call.output_tokens)
        try:
            reservation = pool.reserve(projected, key=call.key)
        except BaseException:
            self._forget(run_id)
            raise
        if reservation is None:
            self._forget(run_id)
            with self._lock:
                self._tripped(
                    budget_trip(
                        "The next model call would exceed the shared budget pool (next "
                        f"call ~{usd(projected.usd_micros)}, {projected.tokens} tokens, "
                        f"agent={self.agent!r}): the pool refused the reservation. Raise the "
                        f"pool's limit, {REMEDY}",
                        key="pool",
                        limit=None,
                        observed=projected.usd,
                        agent=self.agent,
                        hops=self.hops,
                        scope="pool",
                    )
                )
        with self._lock:
            self._reserved[run_id] = reservation

    def _forget(self, run_id: UUID) -> None:
        """Take a call off the calls in flight, if it still is (a failed call, one never
        made, or one that ended)."""
        with self._lock:
            call = self._pending.pop(run_id, None)
            if call is not None:  # not if close() came first
                self._tally.add_flight(call, -1)

    def _gate_now(self) -> Any:
        """The warning thresholds of the budget's limits for this meter's agent and
        grants, rebuilt when ``grants`` change (lock held)."""
        cached = self._gate
        if cached is None or cached[0] != self.grants:
            cached = self._gate = (
                dict(self.grants),
                gate_for(self.budget, self.agent, self.grants),
            )
        return cached[1]

    def _tripped(self, trip: Trip) -> None:
        """Keep the step's first trip and raise it (called under the lock)."""
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

    # -- after the call -------------------------------------------------------------------

    def on_llm_end(
        self,
        response: LLMResult,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        **kwargs: Any,
    ) -> None:
        """Record what the call used, commit its reservation, and call ``on_call``."""
        call = self._pending.get(run_id)  # one dict read: atomic, no lock needed
        if call is None:
            return  # not a call this meter admitted (it started before the meter)
        usage = usage_of(response)
        estimated = usage is None
        if usage is None:
            usage = (call.input_tokens, estimated_output(response))
        input_tokens, output_tokens = usage
        usd_micros = call.pricer(input_tokens, output_tokens)
        done = FinishedCall(call, run_id, input_tokens, output_tokens, usd_micros, estimated)
        t = self._tally
        with self._lock:
            if self._pending.pop(run_id, None) is not None:
                t.add_flight(call, -1)
            t.usd += usd_micros
            t.inp += input_tokens
            t.out += output_tokens
            self._calls.append(done)
            reservation = self._reserved.pop(run_id, None) if self._reserved else None
        parent = self._outer
        while parent is not None:
            with parent._lock:
                pt = parent._tally
                pt.n_usd += usd_micros
                pt.n_in += input_tokens
                pt.n_out += output_tokens
            parent = parent._outer
        if reservation is not None:
            cast(SpendPool, self.pool).commit(
                reservation, spend(usd_micros, input_tokens, output_tokens)
            )
        if self.on_call is not None:
            self.on_call(done.record(self.agent))
        if estimated and self.budget.no_usage == "refuse":
            self._refused.add((call.provider, call.model))
            raise ConfigurationError(
                f"Model {call.model!r} (provider {call.provider!r}) answered without "
                f"usage_metadata and Budget.no_usage='refuse'. This call's spend was "
                f"estimated ({input_tokens} input + {output_tokens} output tokens, "
                f"{usd(usd_micros)}) and recorded; later calls to the model are "
                "refused. Use a chat model integration that reports usage, or set "
                "Budget(no_usage='estimate')."
            )

    def on_llm_error(
        self,
        error: BaseException,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        **kwargs: Any,
    ) -> None:
        """Forget the failed call and release its pool reservation."""
        self._forget(run_id)
        with self._lock:
            reservation = self._reserved.pop(run_id, None)
        if reservation is not None:
            cast(SpendPool, self.pool).release(reservation)

    def close(self) -> None:
        """Release the reservations of calls that never ended (call when the step ends)."""
        t = self._tally
        with self._lock:
            self._pending.clear()
            t.f_usd = t.f_in = t.f_out = 0
            left = list(self._reserved.values())
            self._reserved.clear()
        if self.pool is not None:
            for reservation in left:
                self.pool.release(reservation)


_ACTIVE: ContextVar[BudgetMeter | None] = ContextVar("sanegraph_budget_meter", default=None)
# LangChain adds the active meter to every callback manager it configures in this context,
# even for a call given its own ``callbacks`` (as get_usage_metadata_callback does).
register_configure_hook(_ACTIVE, inheritable=True)


class _QuietTrips(logging.Filter):
    """Drop LangChain's warning for a call the meter blocked on purpose.

    LangChain logs "Error in BudgetMeter.on_chat_model_start callback: BudgetExceeded(...)"
    at WARNING before re-raising a ``raise_error`` handler's exception. A blocked call is
    the budget working, recorded as a trip in the ledger; other callback errors (a
    ``ConfigurationError`` for an unpriced model) still show.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not (message.startswith("Error in BudgetMeter.") and "BudgetExceeded(" in message)


logging.getLogger("langchain_core.callbacks.manager").addFilter(_QuietTrips())


def metering(meter: BudgetMeter) -> AbstractContextManager[BudgetMeter]:
    """Meter every model call made in this context (and in tasks and runnables it starts).

    Inside the block, LangChain adds ``meter`` to the callbacks of every runnable it
    configures: model calls made with no config, with the node's original config, with a
    config of their own (even one with explicit ``callbacks``), inside chains, tools,
    ``RunnableLambda``s, ``batch`` and subgraphs, sync or async (contextvars follow
    ``asyncio`` tasks). Calls made from threads started by hand (a raw
    ``ThreadPoolExecutor``) are not seen: contextvars do not cross into them.

    Blocks nest: a meter activated inside another's block (a guarded step inside a
    guarded step) meters the calls made in its block alone, so each call is metered once,
    by the innermost step; what it spends is passed up as the outer meter's
    :attr:`~BudgetMeter.nested_spent`, and its checks count what the enclosing steps
    spent themselves.

    Example:
        ```python
        meter = BudgetMeter(Budget(usd=5), agent="analyst")
        with metering(meter):
            agent(state)  # every model call inside is projected, checked and recorded
        ```
    """
    return _Metering(meter)


class _Metering(AbstractContextManager[BudgetMeter]):
    """What :func:`metering` returns (a class: cheaper to enter than a generator's)."""

    __slots__ = ("_meter", "_token")

    def __init__(self, meter: BudgetMeter) -> None:
        self._meter = meter

    def __enter__(self) -> BudgetMeter:
        meter = self._meter
        outer = _ACTIVE.get()
        if outer is not meter:
            meter._outer = outer
        self._token = _ACTIVE.set(meter)
        return meter

    def __exit__(self, *exc_info: object) -> None:
        _ACTIVE.reset(self._token)
