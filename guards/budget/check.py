"""The intake check: would the next model call exceed the budget? Pure and I/O-free.

:func:`check_spend` is the rule; the "gate" below is its fast path for the meter: the
thresholds from which ``check_spend`` would warn or trip, computed once per budget, agent
and grants, so a call far from every limit skips the full check.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from decimal import ROUND_FLOOR, Decimal
from functools import lru_cache
from typing import Any, cast

from ..trips import Trip, make_trip
from .policy import Budget
from .spend import Spend

__all__ = ("check_spend",)

REMEDY = "or let a human top it up when the owner escalates."


def usd(micros: int) -> str:
    text = f"{micros / 1_000_000:.6f}".rstrip("0")
    whole, _, frac = text.partition(".")
    return f"${whole}.{frac.ljust(2, '0')}"


def _number(value: float) -> str:
    """A limit as typed: 5 -> "5", 2.5 -> "2.5", 1e-06 -> "0.000001"."""
    return format(Decimal(repr(value)).normalize(), "f")


def budget_trip(
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
    *,
    budget: Budget,
    agent: str,
    spent_by_agent: Mapping[str, Spend | Mapping[str, int]] | None = None,
    grants: Mapping[str, float] | None = None,
    warned: Collection[str] = (),
    hops: int = 0,
    call_tokens: int | None = None,
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
        call_tokens: The call's size for ``per_call_tokens``: its input plus the model's
            ``max_tokens`` (default: ``projected.tokens``). A projection may hold an output
            allowance for a model that sets no ``max_tokens``; that is not the call's size.

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
        size = projected.tokens if call_tokens is None else call_tokens
        if size > allowed_call:
            return budget_trip(
                f"The next model call would exceed Budget.per_call_tokens={allowed_call} "
                f"(next call ~{size} tokens: {projected.input_tokens} input + "
                f"{size - projected.input_tokens} max output, agent={agent!r}). Raise "
                "Budget.per_call_tokens, or lower the model's max_tokens or trim its input.",
                key="per_call_tokens",
                limit=allowed_call,
                observed=size,
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


@lru_cache(maxsize=1024)
def _limit_micros(usd: float) -> int:
    """A USD limit in whole micro-dollars, rounded down (exact: no float error)."""
    exact = Decimal(repr(usd)) * 1_000_000
    return int(exact.to_integral_value(rounding=ROUND_FLOOR))


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
        return budget_trip(
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
        spent_text, next_text = usd(before), usd(next_call)
    else:
        spent_text, next_text = f"{before} {unit}", f"{next_call} {unit}"
    limit_text = _number(allowed) if name == "usd" else f"{int(allowed)}"
    if scope == "agent":
        field = f"Budget.per_agent[{agent!r}][{name!r}]"
        return (
            f"The next model call of {agent!r} would exceed {field}={limit_text} (spent by "
            f"{agent!r}={spent_text}, next call ~{next_text}). Raise {field}, {REMEDY}"
        )
    field = f"Budget.{name}"
    return (
        f"The next model call would exceed {field}={limit_text} (spent={spent_text}, next "
        f"call ~{next_text}, agent={agent!r}). Raise {field}, {REMEDY}"
    )


# -- the fast path ---------------------------------------------------------------------

Gate = tuple[
    int | None, tuple[float, float, float, float], tuple[float, float, float, float] | None
]
"""``(per_call_tokens allowed, thread thresholds, agent thresholds or None)``."""

no_warnings: list[str] = []
"""The warnings of a call the gate let through (never appended to)."""


def _threshold(limit: float | None, key: str, index: int, budget: Budget, granted: Any) -> float:
    """The amount from which :func:`_check_limit` warns (or trips) for one limit."""
    if limit is None:
        return math.inf
    allowed = limit + granted[key] if key in granted else limit
    allowed_units = _limit_micros(allowed) if index == 0 else allowed
    return budget.warn_at * allowed_units


def _make_gate(budget: Budget, agent: str, granted: Mapping[str, float]) -> Gate:
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


def below(
    gate: Gate,
    call_tokens: int,
    usd_micros: int,
    input_tokens: int,
    output_tokens: int,
    agent_before: Spend,
    agent_usd_micros: int,
    agent_input_tokens: int,
    agent_output_tokens: int,
) -> bool:
    """Whether every limit of ``gate`` stays below its warning threshold after a call of
    ``call_tokens`` (projected): the thread's spend with the call is ``usd_micros``,
    ``input_tokens``, ``output_tokens``; the agent's is ``agent_before`` plus the
    ``agent_*`` amounts (this step's calls and the projected one). Ints, no ``Spend``
    made: the meter asks on every model call."""
    call_cap, thread, mine = gate
    if call_cap is not None and call_tokens > call_cap:
        return False
    if not (
        usd_micros < thread[0]
        and input_tokens + output_tokens < thread[1]
        and input_tokens < thread[2]
        and output_tokens < thread[3]
    ):
        return False
    if mine is None:
        return True
    usd_micros = agent_before.usd_micros + agent_usd_micros
    input_tokens = agent_before.input_tokens + agent_input_tokens
    output_tokens = agent_before.output_tokens + agent_output_tokens
    return (
        usd_micros < mine[0]
        and input_tokens + output_tokens < mine[1]
        and input_tokens < mine[2]
        and output_tokens < mine[3]
    )


@lru_cache(maxsize=256)
def _cached_gate(budget: Budget, agent: str, grants: tuple[tuple[str, float], ...]) -> Gate | None:
    try:
        return _make_gate(budget, agent, dict(grants))
    except Exception:  # a limit check_spend itself cannot convert: it says why
        return None


def gate_for(budget: Budget, agent: str, grants: Mapping[str, float]) -> Gate | None:
    """The gate of ``budget`` for ``agent`` with ``grants`` (None: always run the full
    check). A pure function of its arguments, memoized: the steps of a thread share their
    budget, so their meters share its gates."""
    return _cached_gate(budget, agent, tuple(sorted(grants.items())))
