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
import math
import operator
import threading
from collections import OrderedDict
from collections.abc import Callable, Collection, Mapping, Sequence
from contextlib import AbstractContextManager
from contextvars import ContextVar
from dataclasses import dataclass
from decimal import ROUND_FLOOR, Decimal
from typing import Any, Protocol, cast, runtime_checkable
from uuid import UUID, uuid4

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import AIMessage, BaseMessage, ChatMessage, SystemMessage, ToolMessage
from langchain_core.messages.utils import count_tokens_approximately
from langchain_core.outputs import ChatGeneration, LLMResult
from langchain_core.tracers.context import register_configure_hook

from ._pricing import AgentLimits, ExhaustedAction, NoUsage, Price, price_call
from .checks import make_trip
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

_REMEDY = "or let a human top it up when the owner escalates."


@dataclass(frozen=True, slots=True, kw_only=True)
class Spend:
    """Model spend: micro-dollars and tokens, all non-negative ints.

    Integers make sums exact and independent of order (parallel branches fold in any
    order). The JSON form (:meth:`to_dict`) is what the ledger keeps in ``spent``.

    Example:
        ```python
        total = Spend(usd_micros=450, input_tokens=1000, output_tokens=500) + Spend()
        assert (total.usd, total.tokens) == (0.00045, 1500)
        assert Spend.from_dict(total.to_dict()) == total
        ```
    """

    usd_micros: int = 0
    """Cost in micro-dollars (USD * 1,000,000)."""
    input_tokens: int = 0
    """Input (prompt) tokens."""
    output_tokens: int = 0
    """Output (completion) tokens."""

    def __add__(self, other: Spend) -> Spend:
        if not isinstance(other, Spend):
            return NotImplemented
        return _spend(
            self.usd_micros + other.usd_micros,
            self.input_tokens + other.input_tokens,
            self.output_tokens + other.output_tokens,
        )

    @property
    def tokens(self) -> int:
        """Input plus output tokens."""
        return self.input_tokens + self.output_tokens

    @property
    def usd(self) -> float:
        """Cost in US dollars."""
        return self.usd_micros / 1_000_000

    def to_dict(self) -> dict[str, int]:
        """The JSON form: ``{"usd_micros": ..., "input_tokens": ..., "output_tokens": ...}``."""
        return {
            "usd_micros": self.usd_micros,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, int] | None) -> Spend:
        """Read the JSON form; missing keys (an empty ledger's ``{}``) count as 0."""
        if not data:
            return _ZERO
        return cls(
            usd_micros=int(data.get("usd_micros", 0)),
            input_tokens=int(data.get("input_tokens", 0)),
            output_tokens=int(data.get("output_tokens", 0)),
        )

    @classmethod
    def coerce(cls, value: Spend | Mapping[str, int] | None) -> Spend:
        """A ``Spend`` from an instance, its JSON form, or None (nothing spent)."""
        if isinstance(value, Spend):
            return value
        return cls.from_dict(value)


_ZERO = Spend()

_new_spend = object.__new__
_set_usd = cast(Any, Spend).usd_micros.__set__
_set_input = cast(Any, Spend).input_tokens.__set__
_set_output = cast(Any, Spend).output_tokens.__set__


def _spend(usd_micros: int, input_tokens: int, output_tokens: int) -> Spend:
    """``Spend(usd_micros=..., input_tokens=..., output_tokens=...)``, without the frozen
    dataclass's per-field ``object.__setattr__`` calls (2.5x faster: per model call)."""
    spend = _new_spend(Spend)
    _set_usd(spend, usd_micros)
    _set_input(spend, input_tokens)
    _set_output(spend, output_tokens)
    return spend


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
        total = _ZERO
        for other in self._members:
            if other is not meter:
                total = total + other._spent + other._nested + other._in_flight()
        return total

    def others_locked(self, meter: BudgetMeter) -> Spend:
        """:meth:`others`, taking the lock."""
        with self.lock:
            return self.others(meter)


@runtime_checkable
class SpendPool(Protocol):
    """A budget shared by many threads or processes, with reserve-then-commit.

    The meter reserves a call's projected spend before the call, then commits what the
    call really cost, or releases the reservation when the call fails. An implementation
    (``SharedBudget`` over SQLite) must make ``reserve`` atomic and idempotent for a key,
    and expire the reservations of a crashed holder.

    Example:
        ```python
        class Pool:  # in memory, one process
            def __init__(self, usd_micros: int) -> None:
                self.left = usd_micros
            def reserve(self, amount: Spend, *, key: str) -> object | None:
                if amount.usd_micros > self.left:
                    return None
                self.left -= amount.usd_micros
                return amount
            def commit(self, reservation: Any, actual: Spend) -> None:
                self.left += reservation.usd_micros - actual.usd_micros
            def release(self, reservation: Any) -> None:
                self.left += reservation.usd_micros
        ```
    """

    def reserve(self, amount: Spend, *, key: str) -> object | None:
        """Reserve ``amount`` under the call's idempotency ``key``; None if it cannot."""

    def commit(self, reservation: Any, actual: Spend) -> object:
        """Replace a reservation with what the call really spent (the result is ignored)."""

    def release(self, reservation: Any) -> object:
        """Give a reservation back: the call failed or never ended (the result is ignored)."""


@runtime_checkable
class SpendJournal(Protocol):
    """Where a guarded step journals its model calls at the moment of spending.

    Keys are ``(task, call index)``, with the task named by LangGraph's
    ``runtime.execution_info`` (thread, namespace, parent checkpoint, task id). After a
    crash LangGraph re-runs the interrupted task with the same key, so the guarded node
    asks :meth:`prior_calls` what earlier attempts of the task spent: that spend counts
    against the budget and goes into the step's ledger delta (never lost), and the
    re-run's calls continue at the next index (never counted twice).
    ``sanegraph.checkpoints.Journal`` is the SQLite implementation.
    """

    def prior_calls(self, info: Any) -> tuple[int, Spend]:
        """``(next call index, spend)`` of the calls earlier attempts of the task
        journaled: ``(0, Spend())`` for a task's first attempt."""

    def log_call(self, info: Any, record: Mapping[str, Any]) -> object:
        """Journal one metered call (a :attr:`BudgetMeter.calls` record, whose ``index``
        is its call index), once per key."""

    def log_step(
        self,
        info: Any,
        *,
        agent: str,
        hop: int,
        status: str,
        latency_us: int,
        tripped: str | None,
    ) -> object:
        """Journal one guarded step (the task's latest attempt)."""


# -- the intake check -------------------------------------------------------------------


def _usd(micros: int) -> str:
    text = f"{micros / 1_000_000:.6f}".rstrip("0")
    whole, _, frac = text.partition(".")
    return f"${whole}.{frac.ljust(2, '0')}"


def _number(value: float) -> str:
    """A limit as typed: 5 -> "5", 2.5 -> "2.5", 1e-06 -> "0.000001"."""
    return format(Decimal(repr(value)).normalize(), "f")


def _trip(
    message: str,
    *,
    key: str,
    limit: Any,
    observed: Any,
    agent: str,
    hops: int,
    scope: str,
) -> Trip:
    trip = make_trip(
        "budget", message, limit=limit, observed=observed, agent=agent, hops=hops, scope=scope
    )
    # Which limit tripped, as a key of grants and warnings ("usd", "tokens:analyst"...).
    cast(dict[str, Any], trip)["limit_key"] = key
    return trip


_LIMITS = (
    ("usd", 0, "$"),
    ("tokens", 1, "tokens"),
    ("input_tokens", 2, "input tokens"),
    ("output_tokens", 3, "output tokens"),
)
"""Thread and agent limits: name, index in ``_amounts``, unit."""


def check_spend(
    spent: Spend,
    projected: Spend,
    budget: Budget,
    *,
    agent: str,
    spent_by_agent: Mapping[str, Spend | Mapping[str, int]] | None = None,
    grants: Mapping[str, float] | None = None,
    warned: Collection[str] = (),
    hops: int = 0,
) -> tuple[Trip | None, list[str]]:
    """Check whether the next model call would exceed the budget, before it is made.

    For each limit set: ``spent + projected > limit + grants[key]`` trips (exactly at the
    limit is allowed). USD is compared in whole micro-dollars (the limit rounded down).
    Thread limits (``usd``,
    ``tokens``, ``input_tokens``, ``output_tokens``) use ``spent``; ``per_agent[agent]``
    limits use ``spent_by_agent[agent]``; ``per_call_tokens`` caps ``projected.tokens``
    alone. The first limit found exceeded, in that order (``per_call_tokens`` first), is
    reported.

    Warnings: the keys of limits (not ``per_call_tokens``) for which
    ``spent + projected >= warn_at * limit``, leaving out those in ``warned``. Pass the
    keys already recorded (``Ledger.warned``) so that each is reported once.

    Args:
        spent: What counts against the thread limits so far (thread spend, plus this
            step's calls and calls in flight).
        projected: The next call's projection.
        budget: The limits.
        agent: The agent making the call.
        spent_by_agent: What agents spent so far, by name (``Spend`` or its JSON form);
            only ``agent``'s entry is read.
        grants: Extra allowance granted by humans, by limit key (USD for ``"usd"``).
        warned: Limit keys already warned about.
        hops: The thread's hop count, for the trip record.

    Returns:
        ``(trip, warnings)``: a ``kind="budget"`` trip record (with an extra
        ``limit_key``) or None, and the new warning keys (empty when it trips).

    Example:
        ```python
        trip, warnings = check_spend(
            Spend(usd_micros=4_980_000), Spend(usd_micros=40_000), Budget(usd=5),
            agent="analyst",
        )
        assert trip is not None and trip["limit_key"] == "usd"
        ```
    """
    granted = grants or {}
    cap = budget.per_call_tokens
    if cap is not None:
        allowed_call = cap + int(granted.get("per_call_tokens", 0))
        if projected.tokens > allowed_call:
            return _trip(
                f"The next model call would exceed Budget.per_call_tokens={allowed_call} "
                f"(next call ~{projected.tokens} tokens: {projected.input_tokens} input + "
                f"{projected.output_tokens} max output, agent={agent!r}). Raise "
                "Budget.per_call_tokens, or lower the model's max_tokens or trim its input.",
                key="per_call_tokens",
                limit=allowed_call,
                observed=projected.tokens,
                agent=agent,
                hops=hops,
                scope="call",
            ), []
    warnings: list[str] = []
    amounts = _amounts(spent), _amounts(projected)
    for name, index, unit in _LIMITS:
        limit = getattr(budget, name)
        if limit is not None:
            trip = _check_limit(
                name, name, limit, amounts, index, unit, "thread", budget, agent, granted, hops
            )
            if trip is True:
                if name not in warned:
                    warnings.append(name)
            elif trip:
                return trip, []
    mine = (budget.per_agent or {}).get(agent)
    if mine:
        used = Spend.coerce((spent_by_agent or {}).get(agent))
        amounts = _amounts(used), amounts[1]
        for name, index, unit in _LIMITS:
            limit = cast(Mapping[str, float], mine).get(name)
            if limit is not None:
                key = f"{name}:{agent}"
                trip = _check_limit(
                    key, name, limit, amounts, index, unit, "agent", budget, agent, granted, hops
                )
                if trip is True:
                    if key not in warned:
                        warnings.append(key)
                elif trip:
                    return trip, []
    return None, warnings


_LIMIT_MICROS: dict[float, int] = {}


def _limit_micros(usd: float) -> int:
    """A USD limit in whole micro-dollars, rounded down (exact: no float error)."""
    micros = _LIMIT_MICROS.get(usd)
    if micros is None:
        exact = Decimal(repr(usd)) * 1_000_000
        micros = _LIMIT_MICROS[usd] = int(exact.to_integral_value(rounding=ROUND_FLOOR))
    return micros


def _amounts(spend: Spend) -> tuple[int, int, int, int]:
    return (
        spend.usd_micros,
        spend.input_tokens + spend.output_tokens,
        spend.input_tokens,
        spend.output_tokens,
    )


def _check_limit(
    key: str,
    name: str,
    limit: float,
    amounts: tuple[tuple[int, int, int, int], tuple[int, int, int, int]],
    index: int,
    unit: str,
    scope: str,
    budget: Budget,
    agent: str,
    granted: Mapping[str, float],
    hops: int,
) -> Trip | bool:
    """A trip, True (the warning threshold is reached) or False, for one limit."""
    allowed = limit + granted[key] if key in granted else limit
    before = amounts[0][index]
    next_call = amounts[1][index]
    after = before + next_call
    allowed_units = _limit_micros(allowed) if index == 0 else allowed
    if after > allowed_units:
        return _trip(
            _message(name, scope, agent, allowed, before, next_call, unit),
            key=key,
            limit=allowed,
            observed=round(after / 1_000_000, 6) if index == 0 else after,
            agent=agent,
            hops=hops,
            scope=scope,
        )
    return after >= budget.warn_at * allowed_units


def _message(
    name: str, scope: str, agent: str, allowed: float, before: int, next_call: int, unit: str
) -> str:
    if name == "usd":
        spent_text, next_text = _usd(before), _usd(next_call)
    else:
        spent_text, next_text = f"{before} {unit}", f"{next_call} {unit}"
    limit_text = _number(allowed) if name == "usd" else f"{int(allowed)}"
    if scope == "agent":
        field = f"Budget.per_agent[{agent!r}][{name!r}]"
        return (
            f"The next model call of {agent!r} would exceed {field}={limit_text} (spent by "
            f"{agent!r}={spent_text}, next call ~{next_text}). Raise {field}, {_REMEDY}"
        )
    field = f"Budget.{name}"
    return (
        f"The next model call would exceed {field}={limit_text} (spent={spent_text}, next "
        f"call ~{next_text}, agent={agent!r}). Raise {field}, {_REMEDY}"
    )


# -- counting input tokens --------------------------------------------------------------
#
# ``count_tokens_approximately`` (with its defaults: no usage-metadata scaling) rounds up
# per message, so the count of a list of messages is the sum of the counts of each message,
# plus the tools' part counted once. A conversation's earlier messages are the same objects
# from one model call to the next (the graph state keeps them), so each message's count is
# cached and every call counts only its new messages.
#
# Entries are keyed by ``id(message)`` and hold the message itself (its id cannot be reused
# while cached) and the objects the count was computed from: ``content`` (and its length),
# ``name`` and the one other field the count reads for its class (an AI message's
# ``tool_calls``, a tool message's ``tool_call_id``, a chat message's ``role``, a system
# message's ``additional_kwargs``), each compared by identity (and length) before the count
# is reused; anything else is counted again. Caveat: a change made *inside* one of those
# objects (a tool call's ``args`` dict, a content block's dict, mutated in place) is not
# seen, and the message keeps its old count until it leaves the cache. The count is the
# projection's estimate only: what a call spent always comes from its ``usage_metadata``.

_COUNT_CACHE_SIZE = 4096
"""Messages whose counts are kept: the oldest cached leaves first (bounded memory)."""

_COUNTS: OrderedDict[int, tuple[Any, ...]] = OrderedDict()
"""``id(message)`` -> ``(message, content, content size, name, field, value, value size,
tokens)``: ``field`` names the class's extra field (None if it has none); a size is the
``len()`` of a mutable container (a list, a dict), None for a string (immutable)."""

_COUNTS_LOCK = threading.Lock()
"""Taken to add (and evict) entries; lookups are single dict reads and take no lock."""

_EXTRA_FIELD: dict[type, str | None] = {}
"""Per message class, the field the count reads besides content and name (or None)."""

_EXTRA_FIELDS = (
    (AIMessage, "tool_calls"),
    (ToolMessage, "tool_call_id"),
    (ChatMessage, "role"),
    (SystemMessage, "additional_kwargs"),
)


def _extra_field(cls: type) -> str | None:
    try:
        return _EXTRA_FIELD[cls]
    except KeyError:
        found = next((name for base, name in _EXTRA_FIELDS if issubclass(cls, base)), None)
        _EXTRA_FIELD[cls] = found
        return found


def _size(value: Any) -> int | None:
    return None if value is None or isinstance(value, str) else len(value)


def _count_one(message: Any) -> int:
    """One message's count (cached when it is a ``BaseMessage``)."""
    tokens = count_tokens_approximately([message])
    if isinstance(message, BaseMessage):
        content = message.content
        field = _extra_field(type(message))
        value = getattr(message, field) if field is not None else None
        entry = (message, content, _size(content), message.name, field, value, _size(value), tokens)
        with _COUNTS_LOCK:
            _COUNTS[id(message)] = entry
            while len(_COUNTS) > _COUNT_CACHE_SIZE:
                _COUNTS.popitem(last=False)
    return tokens


def _count_messages(messages: Sequence[BaseMessage]) -> int:
    """``count_tokens_approximately(messages)``, counting only messages not seen before."""
    total = 0
    get = _COUNTS.get
    for message in messages:
        entry = get(id(message))
        # entry[0] is message: the entry holds it, so no other live object has its id.
        if (
            entry is not None
            and entry[1] is message.content
            and entry[3] is message.name
            and (entry[2] is None or entry[2] == len(entry[1]))
        ):
            field = entry[4]
            if field is None or (
                getattr(message, field) is entry[5]
                and (entry[6] is None or entry[6] == len(entry[5]))
            ):
                total += entry[7]
                continue
        total += _count_one(message)
    return total


_TOOL_COUNTS: OrderedDict[int, tuple[list[Any], tuple[Any, ...], int]] = OrderedDict()
"""``id(tools)`` -> ``(tools, tuple(tools), tokens)`` for the tool lists of model calls."""

_TOOL_CACHE_SIZE = 64


def _count_tools(tools: list[Any]) -> int:
    """``count_tokens_approximately([], tools=tools)``: the tools' part of a call's count.

    Cached for the same list holding the same tool objects (a model bound to its tools
    once); a tool dict changed in place keeps its old count, as messages do."""
    entry = _TOOL_COUNTS.get(id(tools))
    if (
        entry is not None
        and entry[0] is tools
        and len(tools) == len(entry[1])
        and all(map(operator.is_, tools, entry[1]))
    ):
        return entry[2]
    tokens = count_tokens_approximately([], tools=tools)
    with _COUNTS_LOCK:
        _TOOL_COUNTS[id(tools)] = (tools, tuple(tools), tokens)
        while len(_TOOL_COUNTS) > _TOOL_CACHE_SIZE:
            _TOOL_COUNTS.popitem(last=False)
    return tokens


# -- the meter ----------------------------------------------------------------------------

_Gate = tuple[
    int | None, tuple[float, float, float, float], tuple[float, float, float, float] | None
]
"""``(per_call_tokens allowed, thread thresholds, agent thresholds or None)``."""

_GateEntry = tuple[Budget, str, dict[str, float], _Gate | None]
"""``(budget, agent, grants, gate)``: a gate and what it was made from."""

_GATES: OrderedDict[tuple[int, str], _GateEntry] = OrderedDict()
"""Gates by ``(id(budget), agent)`` (each entry holds its budget: the id stays unique)."""

_GATE_CACHE_SIZE = 256

_NO_WARNINGS: list[str] = []
"""The warnings of a call the gate let through (never appended to)."""


def _threshold(limit: float | None, key: str, index: int, budget: Budget, granted: Any) -> float:
    """The amount from which :func:`_check_limit` warns (or trips) for one limit."""
    if limit is None:
        return math.inf
    allowed = limit + granted[key] if key in granted else limit
    allowed_units = _limit_micros(allowed) if index == 0 else allowed
    return budget.warn_at * allowed_units


def _make_gate(budget: Budget, agent: str, granted: Mapping[str, float]) -> _Gate:
    """Thresholds below which :func:`check_spend` returns ``(None, [])``.

    ``check_spend`` trips a limit when ``spent + projected > allowed`` and warns when
    ``spent + projected >= warn_at * allowed``; ``warn_at <= 1``, so an amount below the
    warning threshold neither trips nor warns, whatever was warned before. Per limit
    (``usd``, ``tokens``, ``input_tokens``, ``output_tokens``, in ``_amounts`` order) the
    threshold is computed exactly as ``_check_limit`` computes it (``inf`` when unset).
    """
    cap = budget.per_call_tokens
    call_cap = None if cap is None else cap + int(granted.get("per_call_tokens", 0))
    thread = cast(
        tuple[float, float, float, float],
        tuple(
            _threshold(getattr(budget, name), name, index, budget, granted)
            for name, index, _ in _LIMITS
        ),
    )
    mine = (budget.per_agent or {}).get(agent)
    own = None
    if mine:
        limits = cast(Mapping[str, float], mine)
        own = cast(
            tuple[float, float, float, float],
            tuple(
                _threshold(limits.get(name), f"{name}:{agent}", index, budget, granted)
                for name, index, _ in _LIMITS
            ),
        )
    return call_cap, thread, own


def _below(gate: _Gate, spent: Spend, agent_before: Spend, own: Spend, projected: Spend) -> bool:
    """Whether every limit of ``gate`` stays below its warning threshold after the call
    (``spent`` counts for the thread, ``agent_before + own`` for the agent)."""
    call_cap, thread, mine = gate
    usd = projected.usd_micros
    inp = projected.input_tokens
    out = projected.output_tokens
    if call_cap is not None and inp + out > call_cap:
        return False
    i = spent.input_tokens + inp
    o = spent.output_tokens + out
    if not (
        spent.usd_micros + usd < thread[0] and i + o < thread[1] and i < thread[2] and o < thread[3]
    ):
        return False
    if mine is None:
        return True
    agent_spent = agent_before + own
    i = agent_spent.input_tokens + inp
    o = agent_spent.output_tokens + out
    return (
        agent_spent.usd_micros + usd < mine[0] and i + o < mine[1] and i < mine[2] and o < mine[3]
    )


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


@dataclass(slots=True)
class _Pending:
    index: int
    key: str
    provider: str | None
    model: str
    input_tokens: int
    max_tokens: int | None
    projected: Spend
    reservation: object | None
    parent_run_id: str | None
    where: tuple[Any, Any, Any]
    """``(thread_id, checkpoint_ns, node)`` from the run metadata."""


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
        "_gate_for",
        "_group",
        "_lock",
        "_nested",
        "_outer",
        "_pending",
        "_spent",
        "_started",
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
        self._spent = _ZERO
        self._nested = _ZERO
        self._outer: BudgetMeter | None = None
        self._pending: dict[UUID, _Pending] = {}
        self._calls: list[dict[str, Any]] = []
        self._warnings: list[str] = []
        self._started = first_call
        self._gate_for: _GateEntry | None = None
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
            return self._spent

    @property
    def nested_spent(self) -> Spend:
        """What calls metered by meters nested in this one (guarded steps inside this
        step, see :func:`metering`) spent. Not in :attr:`spent`; counted in the checks."""
        with self._lock:
            return self._nested

    @property
    def calls(self) -> list[dict[str, Any]]:
        """The records of this step's finished calls, in the order they finished (a copy):
        ``key``, ``index``, ``run_id``, ``parent_run_id``, ``agent``, ``provider``,
        ``model``, ``input_tokens``, ``output_tokens``, ``usd_micros``, ``estimated``,
        ``max_tokens``, ``projected`` (a ``Spend`` dict), ``thread_id``,
        ``checkpoint_ns``, ``node``."""
        with self._lock:
            return list(self._calls)

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
            _count_messages(messages[0])
            if len(messages) == 1
            else sum(map(_count_messages, messages))
        )
        if isinstance(tools, list) and tools:
            counted += _count_tools(tools) * len(messages)
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
        max_tokens = _max_tokens(metadata, params)
        output_tokens = max_tokens or 0
        projected = _spend(
            price_call(provider, model, input_tokens, output_tokens, prices=self.prices),
            input_tokens,
            output_tokens,
        )
        agent = self.agent
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
            own = self._spent + self._in_flight() if self._pending else self._spent
            total = own if self._before is _ZERO else self._before + own
            if self._nested is not _ZERO:
                total = total + self._nested
            if outer is not _ZERO:
                total = total + outer
            if self._group is not None:
                total = total + self._group.others(self)
            # The gate: when every limit stays below its warning threshold (so none can
            # trip either), check_spend would return (None, []): skip it.
            gate = self._gate()
            if gate is not None and _below(gate, total, self._agent_before, own, projected):
                warnings = _NO_WARNINGS
            else:
                trip, warnings = check_spend(
                    total,
                    projected,
                    budget,
                    agent=agent,
                    spent_by_agent={agent: self._agent_before + own},
                    grants=self.grants,
                    warned=self._warned,
                    hops=self.hops,
                )
                if trip is not None:
                    cast(dict[str, Any], trip)["projected"] = projected.to_dict()
                    self._tripped(trip)
            index = self._started
            self._started = index + 1
            call_key = f"{prefix}|{index}"
            pending = _Pending(
                index=index,
                key=call_key,
                provider=provider,
                model=model,
                input_tokens=input_tokens,
                max_tokens=max_tokens,
                projected=projected,
                reservation=None,
                parent_run_id=str(parent_run_id) if parent_run_id else None,
                where=(
                    metadata.get("thread_id"),
                    metadata.get("langgraph_checkpoint_ns"),
                    metadata.get("langgraph_node"),
                ),
            )
            # Counted as in flight before the pool is asked, so a parallel call of this
            # step sees it.
            self._pending[run_id] = pending
            for warned in warnings:
                self._warned.add(warned)
                self._warnings.append(warned)
        for warned in warnings:
            logger.warning(
                "Budget warning: the model calls of %r reached %s of the %s limit.",
                agent,
                f"{budget.warn_at:.0%}",
                warned,
            )
        if self.pool is not None:
            try:
                reservation = self.pool.reserve(projected, key=call_key)
            except BaseException:
                with self._lock:
                    self._pending.pop(run_id, None)
                raise
            if reservation is None:
                with self._lock:
                    self._pending.pop(run_id, None)
                    self._tripped(
                        _trip(
                            "The next model call would exceed the shared budget pool (next "
                            f"call ~{_usd(projected.usd_micros)}, {projected.tokens} tokens, "
                            f"agent={agent!r}): the pool refused the reservation. Raise the "
                            f"pool's limit, {_REMEDY}",
                            key="pool",
                            limit=None,
                            observed=projected.usd,
                            agent=agent,
                            hops=self.hops,
                            scope="pool",
                        )
                    )
            pending.reservation = reservation

    def _gate(self) -> _Gate | None:
        """The warning thresholds of the budget's limits for this meter's agent and grants
        (see :func:`_make_gate`), rebuilt when ``budget``, ``agent`` or ``grants`` change."""
        budget, agent, grants = self.budget, self.agent, self.grants
        cached = self._gate_for
        if cached is None or cached[0] is not budget or cached[1] != agent or cached[2] != grants:
            # The steps of a thread share their Budget: so do their meters' gates.
            cached = _GATES.get((id(budget), agent))
            if cached is None or cached[0] is not budget or cached[2] != grants:
                try:
                    gate = _make_gate(budget, agent, grants)
                except Exception:  # a limit check_spend itself cannot convert: it says why
                    gate = None
                cached = (budget, agent, dict(grants), gate)
                with _COUNTS_LOCK:
                    _GATES[(id(budget), agent)] = cached
                    while len(_GATES) > _GATE_CACHE_SIZE:
                        _GATES.popitem(last=False)
            self._gate_for = cached
        return cached[3]

    def _in_flight(self) -> Spend:
        """Projections of this step's calls not yet ended (called under the lock)."""
        total = _ZERO
        for pending in self._pending.values():
            total = total + pending.projected
        return total

    def _own_so_far(self) -> Spend:
        with self._lock:
            return self._spent + self._in_flight()

    def _add_nested(self, actual: Spend) -> None:
        with self._lock:
            self._nested = self._nested + actual

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
            usage = (pending.input_tokens, _estimated_output(response))
        input_tokens, output_tokens = usage
        actual = _spend(
            price_call(
                pending.provider, pending.model, input_tokens, output_tokens, prices=self.prices
            ),
            input_tokens,
            output_tokens,
        )
        thread_id, checkpoint_ns, node = pending.where
        projected = pending.projected
        record: dict[str, Any] = {
            "key": pending.key,
            "index": pending.index,
            "run_id": str(run_id),
            "parent_run_id": pending.parent_run_id,
            "agent": self.agent,
            "provider": pending.provider,
            "model": pending.model,
            "input_tokens": input_tokens,
            "output_tokens": output_tokens,
            "usd_micros": actual.usd_micros,
            "estimated": estimated,
            "max_tokens": pending.max_tokens,
            "projected": {
                "usd_micros": projected.usd_micros,
                "input_tokens": projected.input_tokens,
                "output_tokens": projected.output_tokens,
            },
            "thread_id": thread_id,
            "checkpoint_ns": checkpoint_ns,
            "node": node,
        }
        with self._lock:
            self._pending.pop(run_id, None)
            spent = self._spent
            self._spent = actual if spent is _ZERO else spent + actual
            self._calls.append(record)
        parent = self._outer
        while parent is not None:
            parent._add_nested(actual)
            parent = parent._outer
        if self.pool is not None and pending.reservation is not None:
            self.pool.commit(pending.reservation, actual)
        if self.on_call is not None:
            self.on_call(record)
        if estimated and self.budget.no_usage == "refuse":
            _NO_USAGE_MODELS.add((pending.provider, pending.model))
            raise ConfigurationError(
                f"Model {pending.model!r} (provider {pending.provider!r}) answered without "
                f"usage_metadata and Budget.no_usage='refuse'. This call's spend was "
                f"estimated ({input_tokens} input + {output_tokens} output tokens, "
                f"{_usd(actual.usd_micros)}) and recorded; later calls to the model are "
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
        with self._lock:
            pending = self._pending.pop(run_id, None)
        if pending is not None and self.pool is not None and pending.reservation is not None:
            self.pool.release(pending.reservation)

    def close(self) -> None:
        """Release the reservations of calls that never ended (call when the step ends)."""
        with self._lock:
            left = list(self._pending.values())
            self._pending.clear()
        if self.pool is not None:
            for pending in left:
                if pending.reservation is not None:
                    self.pool.release(pending.reservation)


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
