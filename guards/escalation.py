"""Escalation: what the task owner shows a human (:class:`Escalation`, the ``interrupt``
payload) and the decisions the human may send back with ``Command(resume=...)``
(:data:`Decision`). A decision that does not fit the trip raises
:class:`~sanegraph.guards.InvalidDecision` inside ``interrupt``, so the run stays paused
and can be answered again.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Annotated, Any, Literal

from langgraph.types import interrupt
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .errors import InvalidDecision
from .ledger import EnvelopeRecord, Ledger
from .trips import LOOP_KINDS, Trip

__all__ = (
    "AbortRun",
    "AcceptPartial",
    "ContinueRun",
    "Decision",
    "Escalation",
    "ask",
    "budget_family",
    "escalation",
)


class ContinueRun(BaseModel):
    """Human decision: continue the run, granting more allowance.

    Example:
        ```python
        graph.invoke(Command(resume={"action": "continue", "extra_hops": 5}), config)
        ```
    """

    model_config = ConfigDict(extra="forbid")
    action: Literal["continue"] = "continue"
    extra_hops: int = Field(default=0, ge=0)
    """Hops added to the cap that tripped (global, or the agent's own)."""
    extra_seconds: float = Field(default=0.0, ge=0)
    """Seconds added to ``Budget.seconds``."""
    extra_usd: float = Field(default=0.0, ge=0, allow_inf_nan=False)
    """US dollars added to the money limit that tripped (the thread's, or the agent's);
    for other trips, to ``Budget.usd``."""
    extra_tokens: int = Field(default=0, ge=0)
    """Tokens added to the token limit that tripped (``tokens``, ``input_tokens``,
    ``output_tokens``, ``per_call_tokens``, or the agent's); for other trips, to
    ``Budget.tokens``."""
    note: str = ""
    """Why; kept in the ledger's outcome trail."""


class AcceptPartial(BaseModel):
    """Human decision: finish the run with the best partial result.

    Example:
        ```python
        graph.invoke(Command(resume={"action": "accept_partial", "note": "good enough"}), config)
        ```
    """

    model_config = ConfigDict(extra="forbid")
    action: Literal["accept_partial"] = "accept_partial"
    note: str = ""


class AbortRun(BaseModel):
    """Human decision: abort the run.

    Example:
        ```python
        graph.invoke(Command(resume={"action": "abort", "reason": "wrong topic"}), config)
        ```
    """

    model_config = ConfigDict(extra="forbid")
    action: Literal["abort"] = "abort"
    reason: str = ""


Decision = Annotated[ContinueRun | AcceptPartial | AbortRun, Field(discriminator="action")]
"""A human's answer to an :class:`Escalation`, discriminated by ``action``."""


class Escalation(BaseModel):
    """What the owner shows a human when it escalates a trip (the ``interrupt`` value).

    Example:
        ```python
        snapshot = graph.get_state(config)
        escalation = Escalation.model_validate(snapshot.interrupts[0].value)
        print(escalation.kind, escalation.observed, escalation.limit, escalation.options)
        ```
    """

    kind: str
    """The trip kind (``"hop_cap"``, ``"deadline"``, ``"invalid_envelope"``...)."""
    message: str
    """What tripped, the limit, the observed value, where, and the remedy."""
    agent: str | None
    """The agent whose step tripped."""
    limit: Any
    """The maximum allowed."""
    observed: Any
    """The value that would have exceeded it."""
    hops: int
    """Agent steps so far."""
    by_agent: dict[str, int]
    """Agent steps so far, per agent."""
    elapsed_seconds: float | None
    """Wall-clock seconds since the thread's first guarded step."""
    recent: list[dict[str, Any]]
    """The last envelope records (agent, status, confidence, reason), oldest first."""
    options: list[str]
    """Accepted decisions, as ``Command(resume=...)`` values."""
    limit_key: str | None = None
    """Budget trips: the limit that tripped (``"usd"``, ``"tokens:researcher"``, ``"pool"``...)."""
    spent: dict[str, int] | None = None
    """Budget trips: the thread's model spend (``usd_micros``, ``input_tokens``,
    ``output_tokens``)."""
    spent_by_agent: dict[str, dict[str, int]] | None = None
    """Budget trips: model spend per agent."""
    projected: dict[str, int] | None = None
    """Budget trips: the blocked call's projection (None when a shared pool refused it)."""
    detector: str | None = None
    """Loop trips: the detector that fired (``"repeat"``, ``"cycle"``, ``"no_progress"``...)."""
    steps: list[dict[str, Any]] | None = None
    """Loop trips: the repeating steps (agent, hop, fingerprint, a short text)."""


def _continue_option(trip: Trip) -> str:
    kind = trip["kind"]
    if kind == "hop_cap":
        return "{'action': 'continue', 'extra_hops': N}"
    if kind == "deadline":
        return "{'action': 'continue', 'extra_seconds': S}"
    if kind == "budget":
        family = budget_family(trip)
        if family == "usd":
            return "{'action': 'continue', 'extra_usd': D}"
        if family == "tokens":
            return "{'action': 'continue', 'extra_tokens': N}"
        return "{'action': 'continue'} (after raising the pool's limit)"
    if kind in LOOP_KINDS:
        return "{'action': 'continue'} (the loop window starts afresh)"
    return "{'action': 'continue'}"


def _options(trip: Trip) -> list[str]:
    return [
        _continue_option(trip),
        "{'action': 'accept_partial'}",
        "{'action': 'abort', 'reason': '...'}",
    ]


def budget_family(trip: Trip) -> str:
    """``"usd"``, ``"tokens"`` or ``"pool"``: what a top-up of a budget trip must add."""
    key = trip.get("limit_key") or "usd"
    if key == "pool":
        return "pool"
    return "usd" if key.split(":", 1)[0] == "usd" else "tokens"


def escalation(ledger: Ledger, trip: Trip, *, now: float) -> Escalation:
    """What the owner shows a human for ``trip``, from the ledger at time ``now``."""
    started = ledger["started_at"]
    recent: list[EnvelopeRecord] = ledger["recent"]
    return Escalation(
        kind=trip["kind"],
        message=trip["message"],
        agent=trip["agent"],
        limit=trip["limit"],
        observed=trip["observed"],
        hops=ledger["hops"],
        by_agent=dict(ledger["by_agent"]),
        elapsed_seconds=None if started is None else round(now - started, 3),
        recent=[dict(r) for r in recent],
        options=_options(trip),
        **_budget_fields(ledger, trip),
    )


def _budget_fields(ledger: Ledger, trip: Trip) -> dict[str, Any]:
    if "detector" in trip:
        return {"detector": trip["detector"], "steps": trip.get("steps")}
    if trip["kind"] != "budget":
        return {}
    return {
        "limit_key": trip.get("limit_key"),
        "spent": dict(ledger["spent"]),
        "spent_by_agent": {a: dict(v) for a, v in ledger["spent_by_agent"].items()},
        "projected": trip.get("projected"),
    }


class _ContinueHops(ContinueRun):
    extra_hops: int = Field(ge=1)


class _ContinueTime(ContinueRun):
    extra_seconds: float = Field(gt=0)


class _ContinueUsd(ContinueRun):
    extra_usd: float = Field(gt=0, allow_inf_nan=False)


class _ContinueTokens(ContinueRun):
    extra_tokens: int = Field(ge=1)


class _ContinuePool(ContinueRun):
    @model_validator(mode="after")
    def _nothing_to_grant(self) -> _ContinuePool:
        if self.extra_usd or self.extra_tokens:
            raise ValueError(
                "a shared pool is not topped up per thread: raise its limit with "
                "SharedBudget.set_limits(...), then resume with {'action': 'continue'}"
            )
        return self


_CONTINUE: dict[str, type[ContinueRun]] = {
    "hop_cap": _ContinueHops,
    "deadline": _ContinueTime,
    "budget:usd": _ContinueUsd,
    "budget:tokens": _ContinueTokens,
    "budget:pool": _ContinuePool,
}


def _schema_key(trip: Trip) -> str:
    kind = trip["kind"]
    return f"budget:{budget_family(trip)}" if kind == "budget" else kind


@lru_cache(maxsize=16)
def _schema(key: str) -> Any:
    """The resume schema for a trip: ``continue`` must grant what ran out."""
    cont = _CONTINUE.get(key, ContinueRun)
    return Annotated[cont | AcceptPartial | AbortRun, Field(discriminator="action")]


def ask(payload: Escalation, trip: Trip) -> ContinueRun | AcceptPartial | AbortRun:
    """Pause for a human decision, validated inside ``interrupt`` so that an invalid one
    is never recorded and the same interrupt can be answered again."""
    kind = trip["kind"]
    schema = _schema(_schema_key(trip))
    try:
        return interrupt(payload.model_dump(mode="json"), response_schema=schema)  # type: ignore[no-any-return]
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'][1:]) or 'action'}: {e['msg']}"
            for e in exc.errors()
        )
        raise InvalidDecision(
            f"Invalid decision for the {kind!r} escalation ({problems}). Resume with "
            f"Command(resume=...) using one of: {' or '.join(_options(trip))}. The run "
            "is still paused."
        ) from exc
