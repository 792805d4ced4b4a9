"""Pure guard checks over the ledger: each returns a trip record or None.

These are the functions the node and edge adapters call; they do no I/O and never raise
on a trip, so they can be tested with a hand-built ledger.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .budget.policy import Budget
from .envelope import Envelope
from .ledger import Ledger
from .policy import EnvelopePolicy, HopCap
from .trips import Trip, make_trip

__all__ = ("check_deadline", "check_envelope", "check_hops")


def check_hops(
    ledger: Ledger, cap: HopCap, *, agent: str, siblings: int = 0, agent_siblings: int = 0
) -> Trip | None:
    """Trip if the next step of ``agent`` would exceed the hop cap.

    Global: ``hops + siblings + 1 > max_hops + grants["hops"]``, where ``siblings`` are
    hops that parallel branches took and the ledger does not show yet. Per agent:
    ``by_agent[agent] + agent_siblings + 1 > per_agent[agent] + grants["hops:" + agent]``,
    ``agent_siblings`` being the parallel branches' hops of ``agent``.
    """
    hops = ledger["hops"] + siblings
    grants = ledger["grants"]
    allowed = cap.max_hops + int(grants.get("hops", 0))
    if hops + 1 > allowed:
        where = f", {siblings} of them in parallel branches" if siblings else ""
        return make_trip(
            "hop_cap",
            f"The next hop would exceed max_hops={allowed} (hops={hops}{where}, "
            f"agent={agent!r}). Raise HopCap.max_hops, or let the task owner escalate so "
            "a human can grant more hops.",
            limit=allowed,
            observed=hops + 1,
            agent=agent,
            hops=hops,
        )
    per_agent = cap.per_agent.get(agent)
    if per_agent is not None:
        used = ledger["by_agent"].get(agent, 0) + agent_siblings
        allowed = per_agent + int(grants.get(f"hops:{agent}", 0))
        if used + 1 > allowed:
            return make_trip(
                "hop_cap",
                f"The next hop of {agent!r} would exceed per_agent[{agent!r}]={allowed} "
                f"(hops of {agent!r}={used}, total hops={hops}). Raise "
                f"HopCap.per_agent[{agent!r}], or let a human grant more hops.",
                limit=allowed,
                observed=used + 1,
                agent=agent,
                hops=hops,
                scope="agent",
            )
    return None


def check_deadline(ledger: Ledger, budget: Budget | None, *, agent: str, now: float) -> Trip | None:
    """Trip if the thread's wall-clock time is used up.

    ``now - started_at > seconds + grants["seconds"]``; the clock starts at the first
    guarded step and keeps running across pauses.
    """
    if budget is None or budget.seconds is None:
        return None
    started = ledger["started_at"]
    if started is None:
        return None
    elapsed = now - started
    allowed = budget.seconds + float(ledger["grants"].get("seconds", 0.0))
    if elapsed > allowed:
        return make_trip(
            "deadline",
            f"The thread would exceed Budget.seconds={allowed:g} (elapsed={elapsed:.1f}s, "
            f"agent={agent!r}). Raise Budget.seconds, or let a human grant more time.",
            limit=allowed,
            observed=round(elapsed, 3),
            agent=agent,
            hops=ledger["hops"],
        )
    return None


def check_envelope(
    envelope: Envelope[Any] | Mapping[str, Any],
    policy: EnvelopePolicy,
    *,
    error: str | None,
    agent: str,
    hops: int,
) -> Trip | None:
    """Trip on an invalid envelope, or on a confidence below ``min_confidence``.

    ``envelope`` may be an :class:`Envelope` or its dict form (``envelope_to_dict``).
    """
    if error is not None:
        return make_trip(
            "invalid_envelope",
            f"{agent!r} returned an invalid envelope: {error}. Return an Envelope, a dict "
            "with status/result/confidence/reason, or an AIMessage carrying one as JSON "
            "or as a tool call.",
            limit="a valid Envelope",
            observed=error,
            agent=agent,
            hops=hops,
            scope="agent",
        )
    gate = policy.min_confidence
    if gate is None:
        return None
    if isinstance(envelope, Envelope):
        status, confidence = envelope.status, envelope.confidence
    else:
        status, confidence = envelope["status"], envelope["confidence"]
    if status != "failed" and (confidence is None or confidence < gate):
        return make_trip(
            "low_confidence",
            f"{agent!r} answered with confidence={confidence} below "
            f"min_confidence={gate}. Lower EnvelopePolicy.min_confidence, or let a "
            "human review the result.",
            limit=gate,
            observed=confidence,
            agent=agent,
            hops=hops,
            scope="agent",
        )
    return None
