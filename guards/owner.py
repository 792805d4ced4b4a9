"""The task owner: the node every trip is routed to.

By policy it finishes the run with the best partial result, aborts it, raises, or
escalates to a human with ``interrupt()`` and a typed :class:`Escalation` payload. The
human answers with ``Command(resume=decision)``: continue with a raised allowance, accept
the partial result, or abort. A decision that does not fit raises
:class:`~sanegraph.guards.InvalidDecision`; the run stays paused and can be answered again.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Annotated, Any, Literal

from langchain_core.messages import AIMessage, ToolMessage
from langchain_core.runnables import RunnableConfig
from langgraph.graph import END
from langgraph.types import Command, interrupt
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .errors import LOOP_KINDS, ConfigurationError, GuardTripped, InvalidDecision
from .ledger import EnvelopeRecord, Ledger, StepDelta, Trip, read_ledger
from .policy import GuardPolicy, OwnerAction

__all__ = (
    "AbortRun",
    "AcceptPartial",
    "ContinueRun",
    "Decision",
    "Escalation",
    "best_partial",
    "outcome_of",
    "task_owner",
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


def best_partial(state: Mapping[str, Any]) -> tuple[str, dict[str, Any]] | None:
    """The newest usable envelope, as ``(key, envelope dict)``.

    Usable: not ``failed`` and carrying a result. The ledger's recent records give the
    order; envelopes older than those are searched newest first.
    """
    ledger = read_ledger(state)
    envelopes = ledger["envelopes"]
    for record in reversed(ledger["recent"]):
        env = envelopes.get(record["key"])
        if env is not None and _usable(env):
            return record["key"], env
    for key, env in reversed(list(envelopes.items())):
        if _usable(env):
            return key, env
    return None


def _usable(envelope: Mapping[str, Any]) -> bool:
    return envelope.get("status") != "failed" and envelope.get("result") is not None


def outcome_of(state: Mapping[str, Any]) -> dict[str, Any] | None:
    """The owner's final envelope (a dict), or None if no owner finished the run."""
    return read_ledger(state)["outcome"]


def _continue_option(trip: Trip) -> str:
    kind = trip["kind"]
    if kind == "hop_cap":
        return "{'action': 'continue', 'extra_hops': N}"
    if kind == "deadline":
        return "{'action': 'continue', 'extra_seconds': S}"
    if kind == "budget":
        family = _budget_family(trip)
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


def _budget_family(trip: Trip) -> str:
    """``"usd"``, ``"tokens"`` or ``"pool"``: what a top-up of a budget trip must add."""
    key = trip.get("limit_key") or "usd"
    if key == "pool":
        return "pool"
    return "usd" if key.split(":", 1)[0] == "usd" else "tokens"


def _escalation(ledger: Ledger, trip: Trip, now: float) -> Escalation:
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
    return f"budget:{_budget_family(trip)}" if kind == "budget" else kind


def _schema(key: str) -> Any:
    """The resume schema for a trip: ``continue`` must grant what ran out."""
    cont = _CONTINUE.get(key, ContinueRun)
    return Annotated[cont | AcceptPartial | AbortRun, Field(discriminator="action")]


_SCHEMAS: dict[str, Any] = {}


def _ask(payload: Escalation, trip: Trip) -> ContinueRun | AcceptPartial | AbortRun:
    """Pause for a human decision, validated inside ``interrupt`` so that an invalid one
    is never recorded and the same interrupt can be answered again."""
    kind = trip["kind"]
    key = _schema_key(trip)
    schema = _SCHEMAS.get(key)
    if schema is None:
        schema = _SCHEMAS[key] = _schema(key)
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


def task_owner(
    policy: GuardPolicy | None = None,
    *,
    resume_to: str | Callable[[Any], str] | None = None,
) -> Callable[..., Command[Any]]:
    """Build the task-owner node that receives every trip.

    Add it to the graph under ``policy.owner_node`` (default ``"owner"``) and route trips
    to it with :func:`guard_route`. What it does with a trip is ``policy.owner``:

    - ``"partial"``: the run ends ``done``, with the best partial result as its outcome.
    - ``"abort"``: the run ends ``aborted``.
    - ``"raise"``: the trip is raised from ``invoke`` as a ``GuardTripped`` subclass.
    - ``"escalate"``: the run pauses with an :class:`Escalation`; resume it with
      ``Command(resume=decision)`` (see :data:`Decision`). ``continue`` grants the extra
      allowance and goes back to the tripped node (or ``resume_to``).

    Args:
        policy: The graph's guard policy.
        resume_to: Where ``continue`` goes: a node name, or ``(state) -> name``. Default:
            the node whose step tripped.

    Returns:
        A node function returning ``Command`` (add it with ``destinations=`` to draw its
        edges; :func:`~sanegraph.graphs.add_task_owner` does that).

    Example:
        ```python
        builder.add_node("owner", task_owner(policy), destinations=("analyst", END))
        ```
    """
    pol = GuardPolicy.coerce(policy)

    def owner(state: Any, config: RunnableConfig) -> Command[Any]:
        ledger = read_ledger(state)
        if not ledger["trips"]:
            raise ConfigurationError(
                "The task owner ran but nothing tripped. Route to it only with "
                "guard_route(...), which goes to the owner when the ledger is tripped."
            )
        trip = ledger["trips"][-1]
        action = _action(pol, trip)
        if action == "raise":
            raise GuardTripped.from_trip(trip)
        if action == "escalate":
            decision = _ask(_escalation(ledger, trip, time.time()), trip)
            if isinstance(decision, ContinueRun):
                return _continue(state, config, trip, decision, resume_to)
            if isinstance(decision, AbortRun):
                why = f": {decision.reason}" if decision.reason else ""
                return _finish(state, trip, "aborted", f"aborted by a human{why}")
            note = f": {decision.note}" if decision.note else ""
            return _finish(state, trip, "done", f"partial result accepted by a human{note}")
        if action == "abort":
            return _finish(state, trip, "aborted", "aborted by policy")
        return _finish(state, trip, "done", "best partial result kept")

    owner.__name__ = pol.owner_node if pol.owner_node.isidentifier() else "owner"
    return owner


_ON_EXHAUSTED: dict[str, OwnerAction] = {
    "interrupt": "escalate",
    "end": "partial",
    "raise": "raise",
}


def _action(policy: GuardPolicy, trip: Trip) -> OwnerAction:
    """The owner's action for a trip: ``OwnerPolicy.by_kind`` first; for a budget trip
    not named there, ``Budget.on_exhausted``; else ``OwnerPolicy.on_trip``."""
    kind = trip["kind"]
    if kind == "budget" and kind not in policy.owner.by_kind:
        exhausted = policy.budget.on_exhausted if policy.budget is not None else "interrupt"
        return _ON_EXHAUSTED[exhausted]
    return policy.owner.action_for(kind)


def _continue(
    state: Any,
    config: RunnableConfig,
    trip: Trip,
    decision: ContinueRun,
    resume_to: str | Callable[[Any], str] | None,
) -> Command[Any]:
    grant: dict[str, float] = {}
    if decision.extra_hops:
        key = "hops" if trip["scope"] != "agent" else f"hops:{trip['agent']}"
        grant[key] = decision.extra_hops
    if decision.extra_seconds:
        grant["seconds"] = decision.extra_seconds
    # Money and tokens go to the limit that tripped, or else to the thread's.
    family = _budget_family(trip) if trip["kind"] == "budget" else None
    limit_key = trip.get("limit_key") or ""
    if decision.extra_usd:
        grant[limit_key if family == "usd" else "usd"] = decision.extra_usd
    if decision.extra_tokens:
        grant[limit_key if family == "tokens" else "tokens"] = decision.extra_tokens
    delta: StepDelta = {"status": "running", "grant": grant}
    if trip["kind"] in LOOP_KINDS:
        # A human saw the loop and let it go on: detection starts again from here.
        delta["reset_window"] = True
    if resume_to is None:
        target = _tripped_node(trip, config)
    elif isinstance(resume_to, str):
        target = resume_to
    else:
        target = resume_to(state)
    if not target:
        raise ConfigurationError(
            "The owner cannot tell where to continue: pass task_owner(resume_to=...)."
        )
    update: dict[str, Any] = {"guard": delta}
    if trip.get("after_step") and target == _tripped_node(trip, config):
        # The agent runs again after its own step: tool calls that step asked for and
        # the trip kept from running must be answered, or the provider rejects the
        # conversation.
        _answer_tool_calls(
            update, state, trip, "a human let the run continue; call the tool again if needed"
        )
    return Command(goto=target, update=update)


def _answer_tool_calls(update: dict[str, Any], state: Any, trip: Trip, why: str) -> None:
    """Add to ``update`` a ``ToolMessage`` for each tool call of the last AI message in
    ``state["messages"]`` that no tool message answers.

    Chat providers reject a conversation in which an assistant's tool call has no tool
    result, so a run that a trip stopped between an agent's tool calls and its tools
    must not go back to a model (now, or in the thread's next turn) with them open. The
    messages are written as new ones: the ``messages`` channel must append (LangGraph's
    ``add_messages``, as in ``MessagesState``).
    """
    messages = state.get("messages") if isinstance(state, Mapping) else None
    if not isinstance(messages, list):
        return
    answered: set[str] = set()
    for message in reversed(messages):
        if isinstance(message, ToolMessage):
            answered.add(message.tool_call_id)
            continue
        if isinstance(message, AIMessage):
            content = f"Not run: {trip['kind']} stopped the run before this tool call ({why})."
            answers = [
                ToolMessage(content, tool_call_id=call["id"], name=call["name"], status="error")
                for call in message.tool_calls
                if call.get("id") and call["id"] not in answered
            ]
            if answers:
                update["messages"] = answers
        return


def _tripped_node(trip: Trip, config: RunnableConfig) -> str | None:
    """The node, at the owner's own nesting level, whose step tripped.

    A trip inside a subgraph names the inner node; the owner of the parent graph must
    continue at the subgraph's node, which is the matching segment of the namespace.
    """
    ns = trip.get("ns")
    if ns:
        own = (config.get("configurable") or {}).get("checkpoint_ns") or ""
        level = own.count("|")
        segments = ns.split("|")
        if level < len(segments):
            return segments[level].split(":", 1)[0]
    return trip.get("node") or trip["agent"]


def _finish(state: Any, trip: Trip, status: Literal["done", "aborted"], why: str) -> Command[Any]:
    best = best_partial(state)
    reason = f"{trip['kind']}: {trip['message']} ({why})"
    if best is None:
        outcome: dict[str, Any] = {
            "status": "failed",
            "result": None,
            "confidence": None,
            "reason": reason,
            "source": None,
        }
    else:
        key, env = best
        outcome = {
            "status": "partial" if status == "done" else "failed",
            "result": env.get("result"),
            "confidence": env.get("confidence"),
            "reason": reason,
            "source": key,
        }
    delta: StepDelta = {"status": status, "outcome": outcome}
    update: dict[str, Any] = {"guard": delta}
    # The run ends here; the thread's next turn must not find tool calls left open.
    _answer_tool_calls(update, state, trip, f"the run ended, {why}")
    return Command(goto=END, update=update)
