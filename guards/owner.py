"""The task owner: the node every trip is routed to.

By policy it finishes the run with the best partial result, aborts it, raises, or
escalates to a human with ``interrupt()`` and a typed
:class:`~sanegraph.guards.escalation.Escalation` payload. The human answers with
``Command(resume=decision)``: continue with a raised allowance, accept the partial result,
or abort (see :mod:`.escalation`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any, Literal

from langchain_core.messages import AIMessage, ToolMessage
from langchain_core.runnables import RunnableConfig
from langgraph.graph import END
from langgraph.types import Command

from . import _compat
from .errors import ConfigurationError, GuardTripped
from .escalation import AbortRun, ContinueRun, ask, budget_family, escalation
from .ledger import StepDelta, read_ledger
from .policy import GuardPolicy, OwnerAction
from .trips import LOOP_KINDS, Trip

__all__ = (
    "best_partial",
    "outcome_of",
    "task_owner",
)


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
            decision = ask(escalation(ledger, trip, now=time.time()), trip)
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
    family = budget_family(trip) if trip["kind"] == "budget" else None
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
        node = _compat.segment_node(ns, _compat.task_depth(own))
        if node is not None:
            return node
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
