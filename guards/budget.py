"""Budgets: what model calls cost, the intake check, and the callback that meters calls.

The core is pure and I/O-free: :class:`Spend` (what was spent, in integer micro-dollars
and tokens, so sums are exact and do not depend on order), :func:`price_call` (prices from
``genai-prices``, or from the policy) and :func:`check_spend` (the "would exceed" check).
:class:`BudgetMeter` is the one LangChain callback handler: attached to a guarded step's
model calls, it projects each call in ``on_chat_model_start`` and blocks it (raising
:class:`BudgetExceeded`, so the model is never called) when the budget, or a shared
:class:`SpendPool`, cannot cover it; in ``on_llm_end`` it records what the call really
used (``AIMessage.usage_metadata``).

Limit keys name each limit in warnings, grants and trips: ``"usd"``, ``"tokens"``,
``"input_tokens"``, ``"output_tokens"``, ``"per_call_tokens"``, ``"pool"`` and, per agent,
``"usd:<agent>"``, ``"tokens:<agent>"``... (as ``"hops:<agent>"`` for hop grants).
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
from langchain_core.outputs import ChatGeneration, LLMResult
from langchain_core.tracers.context import register_configure_hook

from ._intake import (
    REMEDY,
    Gate,
    GateEntry,
    below,
    budget_trip,
    check_spend,
    gate_for,
    no_warnings,
    usd,
)
from ._pricing import AgentLimits, ExhaustedAction, NoUsage, Price, Pricer, price_call, pricer
from ._spend import Spend, SpendJournal, SpendPool, spend
from ._tokens import count_messages, count_tools
from .errors import BudgetExceeded, ConfigurationError
from .ledger import Trip
from .policy import Budget

__all__ = (
    "AgentLimits",
    "BudgetExceeded",
    "BudgetMeter",
    "ExhaustedAction",
    "NoUsage",
    "Price",
    "Spend",
    "SpendGroup",
    "SpendJournal",
    "SpendPool",
    "check_spend",
    "metering",
    "price_call",
)

logger = logging.getLogger("sanegraph.guards.budget")

_ZERO = Spend()


class SpendGroup:
    """The budget meters of steps that run at the same time in one thread.

    Parallel branches of a superstep all start from the same ledger, so none of them sees
    what the others spend until the superstep ends. Their meters join one group, share
    its lock, and count each other's spend (ended calls, calls in flight, and nested
    steps') in every intake check: the branches draw on one budget. ``guarded()`` makes
    one group per (thread, parent checkpoint, namespace level).
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
                usd += other._usd + other._nested_usd + other._flight_usd
                inp += other._in + other._nested_in + other._flight_in
                out += other._out + other._nested_out + other._flight_out
        return spend(usd, inp, out)

    def others_locked(self, meter: BudgetMeter) -> Spend:
        """:meth:`others`, taking the lock."""
        with self.lock:
            return self.others(meter)


# -- the meter ----------------------------------------------------------------------------

_MAX_TOKEN_PARAMS = (
    "max_tokens",
    "max_completion_tokens",
    "max_output_tokens",
    "max_tokens_to_sample",
    "num_predict",
)
_MODEL_PARAMS = ("model", "model_name", "model_id")

_NO_USAGE_MODELS: set[tuple[str | None, str]] = set()
"""(provider, model) pairs seen answering without usage while ``no_usage="refuse"``."""


_Pending = tuple[
    int, str, str | None, str, int, int | None, int, int, Pricer, UUID | None, Mapping[str, Any]
]
"""A call in flight: ``(index, key prefix, provider, model, input tokens, max_tokens,
projected usd_micros, projected output tokens, pricer, parent run id, run metadata)``
(a tuple: one is made per model call)."""

_Call = tuple[_Pending, UUID, int, int, int, bool]
"""A finished call: ``(its _Pending, run id, input tokens, output tokens, usd_micros,
estimated)``; :attr:`BudgetMeter.calls` makes the records from these when read."""


def _max_tokens(metadata: Mapping[str, Any], params: Mapping[str, Any]) -> int | None:
    value = metadata.get("ls_max_tokens")
    if value is None:
        for name in _MAX_TOKEN_PARAMS:
            value = params.get(name)
            if value is not None:
                break
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    return None


def _reported_usage(response: LLMResult) -> tuple[int, int] | None:
    for generations in response.generations:
        for generation in generations:
            message = getattr(generation, "message", None)
            usage = getattr(message, "usage_metadata", None)
            if usage:
                return int(usage.get("input_tokens", 0)), int(usage.get("output_tokens", 0))
    legacy = (response.llm_output or {}).get("token_usage")
    if isinstance(legacy, Mapping) and ("prompt_tokens" in legacy or "completion_tokens" in legacy):
        return int(legacy.get("prompt_tokens") or 0), int(legacy.get("completion_tokens") or 0)
    return None


def _estimated_output(response: LLMResult) -> int:
    # Several generations of one run are alternatives (n > 1): each was generated.
    total = 0
    for generations in response.generations:
        for generation in generations:
            if isinstance(generation, ChatGeneration):
                total += count_tokens_approximately([generation.message])
            else:
                total += count_tokens_approximately([("ai", generation.text)])
    return total


class BudgetMeter(BaseCallbackHandler):
    """Meters one guarded step's model calls and blocks a call the budget cannot cover.

    A sync handler with ``raise_error = True`` and ``run_inline = True``: raising in
    ``on_chat_model_start`` aborts the call before the model runs, for ``invoke`` and
    ``ainvoke`` alike (an async handler could not stop a sync call).

    Before each call (``on_chat_model_start``) it reads the provider, model and
    ``max_tokens`` from the run metadata LangChain adds for every chat model
    (``ls_provider``, ``ls_model_name``, ``ls_max_tokens``; falling back to
    ``invocation_params``), counts the input tokens with ``count_tokens_approximately``
    (messages, plus tool schemas found in ``invocation_params["tools"]``; each message's
    count is cached, so a call counts only the messages no earlier call had, see
    "counting input tokens" in the source) and projects the call as
    ``input tokens + max_tokens`` (input only when the model sets no ``max_tokens``: then
    the output of the last allowed call can overshoot a limit). It runs
    :func:`check_spend` (skipped when every limit stays below its warning threshold, where
    it would neither trip nor warn) against everything spent so far (``spent_before`` plus
    this step's calls, ended and in flight), then reserves the projection in ``pool`` if
    one is set. Either refusing raises :class:`BudgetExceeded` carrying the trip record; the
    first trip is also kept in :attr:`trip` (an agent may swallow the exception).

    After each call (``on_llm_end``) it reads ``usage_metadata`` from the answer
    (estimating it, or refusing the model, per ``Budget.no_usage``), prices it, adds it
    to :attr:`spent`, commits the pool reservation and calls ``on_call`` with the call's
    record. A failed call (``on_llm_error``) releases its reservation.

    Attach it with :func:`metering` (every call made in the context, whatever config the
    call is given; nested guarded steps meter their own calls) or pass it in
    ``config={"callbacks": [meter]}`` (calls under that config only).

    Call keys: ``"<key>|<index>"``, where ``index`` counts this step's calls in the order
    they start and ``key`` defaults to ``"<thread_id>|<checkpoint_ns>"`` from the first
    call's metadata (``thread_id`` and ``langgraph_checkpoint_ns``, i.e. ``node:task_id``,
    which a re-run task keeps), or a random ``"meter-<hex>"`` outside a graph. A resumed
    step that makes the same calls in the same order gets the same keys.

    Args:
        budget: The limits.
        agent: The agent the step's calls are attributed to.
        spent_before: The thread's spend before this step (``Ledger.spent``).
        spent_by_agent_before: Spend per agent before this step
            (``Ledger.spent_by_agent``).
        prices: Policy prices; defaults to ``budget.prices``.
        pool: A shared pool to reserve each call in.
        on_call: Called with each metered call's record (the journal hook).
        grants: Extra allowance granted by humans, by limit key (``Ledger.grants``).
        warned: Limit keys already warned about (``Ledger.warned``).
        hops: The thread's hop count, for trip records.
        key: Prefix of the call keys.
        first_call: The index of the step's first call: a re-run of a task whose earlier
            attempt made calls continues after them (see :class:`SpendJournal`).
        group: The meters of steps running at the same time in the thread (parallel
            branches of one superstep): each call's check also counts what the others
            spent and have in flight, which their ledger deltas do not show yet.

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

    # Attributes in slots: a meter is made per guarded step, and read on each model call.
    __slots__ = (
        "_agent_before",
        "_before",
        "_calls",
        "_flight_in",
        "_flight_out",
        "_flight_usd",
        "_gate_for",
        "_group",
        "_in",
        "_lock",
        "_nested_in",
        "_nested_out",
        "_nested_usd",
        "_out",
        "_outer",
        "_pending",
        "_priced",
        "_reserved",
        "_started",
        "_usd",
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
        if group is None:
            self._lock = threading.Lock()
        else:
            self._lock = group.lock
            group.join(self)
        # What this step's ended calls spent, what its calls in flight are projected to
        # spend, and what meters nested in it spent: ints, updated on every call.
        self._usd = self._in = self._out = 0
        self._flight_usd = self._flight_in = self._flight_out = 0
        self._nested_usd = self._nested_in = self._nested_out = 0
        self._outer: BudgetMeter | None = None
        self._pending: dict[UUID, _Pending] = {}
        self._reserved: dict[UUID, object] = {}
        self._calls: list[_Call] = []
        self._priced: tuple[str | None, str, Pricer] | None = None
        self._warnings: list[str] = []
        self._started = first_call
        self._gate_for: GateEntry | None = None
        self.trip: Trip | None = None

    # Events this handler ignores, as class attributes rather than properties: LangChain
    # reads them for every event of every run the meter is attached to (each chain and
    # tool start and end), and a class attribute is read without a call. Model events
    # (``ignore_llm``, ``ignore_chat_model``) are metered.
    ignore_chain = True
    """True: chain events are not metered."""
    ignore_agent = True
    """True: agent and tool events are not metered."""
    ignore_retriever = True
    """True: retriever events are not metered."""
    ignore_retry = True
    """True: retry events are not metered (the retried model call is)."""
    ignore_custom_event = True
    """True: custom events are not metered."""
    ignore_llm = False
    """False: completion model calls are metered."""
    ignore_chat_model = False
    """False: chat model calls are metered."""

    # -- what was spent -------------------------------------------------------------------

    @property
    def spent(self) -> Spend:
        """What this step's finished calls spent."""
        with self._lock:
            return spend(self._usd, self._in, self._out)

    @property
    def nested_spent(self) -> Spend:
        """What calls metered by meters nested in this one (guarded steps inside this
        step, see :func:`metering`) spent. Not in :attr:`spent`; counted in the checks."""
        with self._lock:
            return spend(self._nested_usd, self._nested_in, self._nested_out)

    @property
    def calls(self) -> list[dict[str, Any]]:
        """The records of this step's finished calls, in the order they finished (a copy):
        ``key``, ``index``, ``run_id``, ``parent_run_id``, ``agent``, ``provider``,
        ``model``, ``input_tokens``, ``output_tokens``, ``usd_micros``, ``estimated``,
        ``max_tokens``, ``projected`` (a ``Spend`` dict), ``thread_id``,
        ``checkpoint_ns``, ``node``."""
        with self._lock:
            calls = list(self._calls)
        return [self._record(call) for call in calls]

    def _record(self, call: _Call) -> dict[str, Any]:
        pending, run_id, input_tokens, output_tokens, usd_micros, estimated = call
        index, prefix, provider, model, counted, max_tokens, p_usd, p_out, _, parent, meta = pending
        return {
            "key": f"{prefix}|{index}",
            "index": index,
            "run_id": str(run_id),
            "parent_run_id": str(parent) if parent else None,
            "agent": self.agent,
            "provider": provider,
            "model": model,
            "input_tokens": input_tokens,
            "output_tokens": output_tokens,
            "usd_micros": usd_micros,
            "estimated": estimated,
            "max_tokens": max_tokens,
            "projected": {"usd_micros": p_usd, "input_tokens": counted, "output_tokens": p_out},
            "thread_id": meta.get("thread_id"),
            "checkpoint_ns": meta.get("langgraph_checkpoint_ns"),
            "node": meta.get("langgraph_node"),
        }

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
        # count_tokens_approximately(batch, tools=tools) for each batch, from cached parts.
        counted = (
            count_messages(messages[0])
            if len(messages) == 1
            else sum(map(count_messages, messages))
        )
        if isinstance(tools, list) and tools:
            counted += count_tools(tools) * len(messages)
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
        provider = metadata.get("ls_provider")
        model = metadata.get("ls_model_name")
        if not model:
            model = next((params[n] for n in _MODEL_PARAMS if params.get(n)), None)
        if not isinstance(model, str) or not model:
            raise ConfigurationError(
                "A model call reports no model name (no ls_model_name in its run metadata, "
                "no model in its invocation params), so its cost is unknown. Give the chat "
                "model a model name (its `model`/`model_name` field, or override "
                "_get_ls_params to report ls_model_name)."
            )
        if not isinstance(provider, str) or not provider:
            provider = None
        budget = self.budget
        if budget.no_usage == "refuse" and (provider, model) in _NO_USAGE_MODELS:
            raise ConfigurationError(
                f"Model {model!r} (provider {provider!r}) reports no usage_metadata and "
                "Budget.no_usage='refuse': the call was not made. Use a chat model "
                "integration that reports usage, or set Budget(no_usage='estimate')."
            )
        max_tokens = metadata.get("ls_max_tokens")
        if type(max_tokens) is not int or max_tokens <= 0:
            max_tokens = _max_tokens(metadata, params)
        output_tokens = max_tokens or 0
        priced = self._priced
        if priced is None or priced[1] != model or priced[0] != provider:
            priced = self._priced = (provider, model, pricer(provider, model, self.prices))
        price = priced[2]
        usd_micros = price(input_tokens, output_tokens)
        # What enclosing steps spent themselves so far is not in this step's ledger yet.
        outer = _ZERO
        parent = self._outer
        while parent is not None:
            outer = outer + parent._own_so_far()
            if parent._group is not None:
                outer = outer + parent._group.others_locked(parent)
            parent = parent._outer
        with self._lock:
            prefix = self.key
            if prefix is None:
                thread = metadata.get("thread_id")
                ns = metadata.get("langgraph_checkpoint_ns")
                # Outside a graph there is nothing stable to key on: keys are unique only.
                prefix = self.key = f"{thread}|{ns}" if thread or ns else f"meter-{uuid4().hex}"
            # Own calls (ended and in flight) count for the agent; nested steps' calls
            # (other agents) and enclosing steps' count for the thread only.
            own_usd = self._usd + self._flight_usd
            own_in = self._in + self._flight_in
            own_out = self._out + self._flight_out
            before = self._before
            usd_total = before.usd_micros + own_usd + self._nested_usd + usd_micros
            in_total = before.input_tokens + own_in + self._nested_in + input_tokens
            out_total = before.output_tokens + own_out + self._nested_out + output_tokens
            if outer is not _ZERO:
                usd_total += outer.usd_micros
                in_total += outer.input_tokens
                out_total += outer.output_tokens
            if self._group is not None:
                others = self._group.others(self)
                usd_total += others.usd_micros
                in_total += others.input_tokens
                out_total += others.output_tokens
            # The gate: when every limit stays below its warning threshold after the call
            # (so none can trip either), check_spend would return (None, []): skip it.
            gate = self._gate()
            if gate is not None and below(
                gate,
                input_tokens + output_tokens,
                usd_total,
                in_total,
                out_total,
                self._agent_before,
                own_usd + usd_micros,
                own_in + input_tokens,
                own_out + output_tokens,
            ):
                warnings = no_warnings
            else:
                projected = spend(usd_micros, input_tokens, output_tokens)
                trip, warnings = check_spend(
                    spend(
                        usd_total - usd_micros,
                        in_total - input_tokens,
                        out_total - output_tokens,
                    ),
                    projected,
                    budget,
                    agent=self.agent,
                    spent_by_agent={
                        self.agent: self._agent_before + spend(own_usd, own_in, own_out)
                    },
                    grants=self.grants,
                    warned=self._warned,
                    hops=self.hops,
                )
                if trip is not None:
                    cast(dict[str, Any], trip)["projected"] = projected.to_dict()
                    self._tripped(trip)
            index = self._started
            self._started = index + 1
            # Counted as in flight before the pool is asked, so a parallel call of this
            # step sees it.
            self._pending[run_id] = (
                index,
                prefix,
                provider,
                model,
                input_tokens,
                max_tokens,
                usd_micros,
                output_tokens,
                price,
                parent_run_id,
                metadata,
            )
            self._flight_usd += usd_micros
            self._flight_in += input_tokens
            self._flight_out += output_tokens
            for warned in warnings:
                self._warned.add(warned)
                self._warnings.append(warned)
        for warned in warnings:
            logger.warning(
                "Budget warning: the model calls of %r reached %s of the %s limit.",
                self.agent,
                f"{budget.warn_at:.0%}",
                warned,
            )
        if self.pool is not None:
            self._reserve(run_id, spend(usd_micros, input_tokens, output_tokens), prefix, index)

    def _reserve(self, run_id: UUID, projected: Spend, prefix: str, index: int) -> None:
        """Reserve a call's projection in the pool, or forget the call and trip."""
        pool = cast(SpendPool, self.pool)
        try:
            reservation = pool.reserve(projected, key=f"{prefix}|{index}")
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
        """Take a call off the calls in flight (a failed call, or one never made)."""
        with self._lock:
            self._land(run_id)

    def _land(self, run_id: UUID) -> None:
        """Take a call off the calls in flight, if it still is (call under the lock)."""
        pending = self._pending.pop(run_id, None)
        if pending is not None:  # not if close() came first
            self._flight_usd -= pending[6]
            self._flight_in -= pending[4]
            self._flight_out -= pending[7]

    def _gate(self) -> Gate | None:
        """The warning thresholds of the budget's limits for this meter's agent and grants
        (see :func:`_make_gate`), rebuilt when ``budget``, ``agent`` or ``grants`` change."""
        budget, agent, grants = self.budget, self.agent, self.grants
        cached = self._gate_for
        if cached is None or cached[0] is not budget or cached[1] != agent or cached[2] != grants:
            cached = self._gate_for = gate_for(budget, agent, grants)
        return cached[3]

    def _own_so_far(self) -> Spend:
        with self._lock:
            return spend(
                self._usd + self._flight_usd,
                self._in + self._flight_in,
                self._out + self._flight_out,
            )

    def _add_nested(self, usd_micros: int, input_tokens: int, output_tokens: int) -> None:
        with self._lock:
            self._nested_usd += usd_micros
            self._nested_in += input_tokens
            self._nested_out += output_tokens

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
        pending = self._pending.get(run_id)  # one dict read: atomic, no lock needed
        if pending is None:
            return  # not a call this meter admitted (it started before the meter)
        usage = _reported_usage(response)
        estimated = usage is None
        if usage is None:
            usage = (pending[4], _estimated_output(response))
        input_tokens, output_tokens = usage
        usd_micros = pending[8](input_tokens, output_tokens)
        call = (pending, run_id, input_tokens, output_tokens, usd_micros, estimated)
        with self._lock:
            self._land(run_id)
            self._usd += usd_micros
            self._in += input_tokens
            self._out += output_tokens
            self._calls.append(call)
            reservation = self._reserved.pop(run_id, None) if self._reserved else None
        parent = self._outer
        while parent is not None:
            parent._add_nested(usd_micros, input_tokens, output_tokens)
            parent = parent._outer
        if reservation is not None:
            cast(SpendPool, self.pool).commit(
                reservation, spend(usd_micros, input_tokens, output_tokens)
            )
        if self.on_call is not None:
            self.on_call(self._record(call))
        if estimated and self.budget.no_usage == "refuse":
            provider, model = pending[2], pending[3]
            _NO_USAGE_MODELS.add((provider, model))
            raise ConfigurationError(
                f"Model {model!r} (provider {provider!r}) answered without "
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
        with self._lock:
            self._pending.clear()
            self._flight_usd = self._flight_in = self._flight_out = 0
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
