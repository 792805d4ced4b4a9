"""Guards at both tiers: checks over hand-built ledgers, then real graphs end to end."""

from __future__ import annotations

import asyncio
import re
import time
from collections import Counter
from typing import Any, Literal

import pytest
from langchain_core.messages import AIMessage
from langchain_core.runnables import RunnableConfig, RunnableLambda
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, StateGraph
from langgraph.types import Command, Send

from sanegraph.guards import (
    Budget,
    ConfigurationError,
    DeadlineExceeded,
    EnvelopePolicy,
    Escalation,
    GuardedState,
    GuardedStateGraph,
    GuardPolicy,
    GuardTripped,
    HopCap,
    HopCapExceeded,
    InvalidDecision,
    OwnerPolicy,
    envelopes_of,
    guard_route,
    guard_sends,
    guarded,
    outcome_of,
    read_ledger,
    task_owner,
)
from sanegraph.guards._scope import SCOPE_KEY, RunScope
from sanegraph.guards.checks import check_deadline, check_envelope, check_hops
from sanegraph.guards.envelope import coerce_envelope
from sanegraph.guards.ledger import new_ledger
from sanegraph.guards.reducer import fold_ledger
from sanegraph.guards.testing import ScriptedChatModel, envelope_message, scripted_agent


class State(GuardedState, total=False):
    topic: str
    notes: list[str]


class Fan(GuardedState, total=False):
    tasks: list[str]


def ledger_with(**values: Any) -> Any:
    ledger = new_ledger()
    ledger.update(values)  # type: ignore[typeddict-item]
    return ledger


# --- unit tier: the pure checks -------------------------------------------------------


def test_hop_cap_trips_only_when_the_next_hop_would_exceed() -> None:
    cap = HopCap(max_hops=3)
    assert check_hops(ledger_with(hops=2), cap, agent="a") is None
    trip = check_hops(ledger_with(hops=3), cap, agent="a")
    assert trip is not None
    assert (trip["kind"], trip["limit"], trip["observed"], trip["agent"]) == ("hop_cap", 3, 4, "a")
    assert trip["message"] == (
        "The next hop would exceed max_hops=3 (hops=3, agent='a'). Raise HopCap.max_hops, "
        "or let the task owner escalate so a human can grant more hops."
    )


def test_granted_hops_raise_the_cap() -> None:
    assert (
        check_hops(ledger_with(hops=3, grants={"hops": 2}), HopCap(max_hops=3), agent="a") is None
    )


def test_per_agent_cap() -> None:
    cap = HopCap(max_hops=10, per_agent={"analyst": 2})
    assert check_hops(ledger_with(hops=5, by_agent={"analyst": 1}), cap, agent="analyst") is None
    trip = check_hops(ledger_with(hops=5, by_agent={"analyst": 2}), cap, agent="analyst")
    assert trip is not None and trip["scope"] == "agent" and trip["limit"] == 2
    assert check_hops(ledger_with(hops=5, by_agent={"analyst": 2}), cap, agent="writer") is None
    granted = ledger_with(hops=5, by_agent={"analyst": 2}, grants={"hops:analyst": 1})
    assert check_hops(granted, cap, agent="analyst") is None


def test_deadline_counts_from_the_first_step() -> None:
    budget = Budget(seconds=10)
    assert check_deadline(ledger_with(started_at=None), budget, agent="a", now=1e9) is None
    assert check_deadline(ledger_with(started_at=100.0), budget, agent="a", now=110.0) is None
    trip = check_deadline(ledger_with(started_at=100.0), budget, agent="a", now=110.5)
    assert trip is not None and trip["kind"] == "deadline" and trip["observed"] == 10.5
    assert (
        check_deadline(
            ledger_with(started_at=100.0, grants={"seconds": 1}), budget, agent="a", now=110.5
        )
        is None
    )
    assert check_deadline(ledger_with(started_at=0.0), None, agent="a", now=1e9) is None


def test_envelope_checks() -> None:
    good, _ = coerce_envelope({"status": "success", "result": 1, "confidence": 0.4})
    assert check_envelope(good, EnvelopePolicy(), error=None, agent="a", hops=1) is None
    low = check_envelope(good, EnvelopePolicy(min_confidence=0.5), error=None, agent="a", hops=1)
    assert low is not None and low["kind"] == "low_confidence" and low["observed"] == 0.4
    bad, error = coerce_envelope("I need more context")
    trip = check_envelope(bad, EnvelopePolicy(), error=error, agent="a", hops=1)
    assert trip is not None and trip["kind"] == "invalid_envelope"
    assert bad.status == "failed"


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: HopCap(max_hops=0), "HopCap.max_hops must be a whole number >= 1, got 0."),
        (lambda: HopCap(per_agent={"a": -1}), "HopCap.per_agent['a'] must be a whole number >= 1"),
        (lambda: Budget(seconds=-1), "Budget.seconds must be a positive number, got -1."),
        (
            lambda: EnvelopePolicy(min_confidence=2),
            "EnvelopePolicy.min_confidence must be in [0, 1]",
        ),
        (lambda: OwnerPolicy(on_trip="retry"), "OwnerPolicy on_trip must be one of partial"),
        (lambda: GuardPolicy(hops="many"), "hops must be a HopCap or an int, got str."),
        (lambda: guarded(42), "guarded() needs a callable or a Runnable agent, got int."),
    ],
)
def test_bad_configuration_says_what_to_change(build: Any, message: str) -> None:
    with pytest.raises(ConfigurationError, match=re.escape(message)):
        build()


def test_policy_shorthand() -> None:
    policy = GuardPolicy(hops=5, budget=Budget(seconds=30), owner="escalate")
    assert policy.hops == HopCap(max_hops=5)
    assert policy.budget == Budget(seconds=30)
    assert policy.owner.action_for("hop_cap") == "escalate"


# --- graph tier -----------------------------------------------------------------------


class Calls:
    """Counts agent calls: the guarded side effect that must not happen on a trip."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    def researcher(self, state: State) -> dict[str, Any]:
        self.counts["researcher"] += 1
        return {
            "status": "success",
            "result": f"doc {self.counts['researcher']}",
            "confidence": 0.9,
        }

    def analyst(self, state: State) -> dict[str, Any]:
        self.counts["analyst"] += 1
        return {"status": "partial", "result": None, "reason": "I need more context"}


def loop_graph(
    policy: GuardPolicy, calls: Calls, *, builder: type[StateGraph] = GuardedStateGraph
) -> Any:
    """The researcher/analyst incident, hand-wired."""
    b = builder(State)
    b.add_node("researcher", guarded(calls.researcher, policy, name="researcher"))
    b.add_node("analyst", guarded(calls.analyst, policy, name="analyst"))
    b.add_node("owner", task_owner(policy), destinations=("researcher", "analyst", END))
    b.add_edge(START, "researcher")
    b.add_conditional_edges("researcher", guard_route("analyst"))
    b.add_conditional_edges("analyst", guard_route("researcher"))
    return b


def test_hop_cap_stops_the_loop_and_the_owner_keeps_the_partial_result(
    saver: Any, config: Any
) -> None:
    calls = Calls()
    graph = loop_graph(GuardPolicy(hops=5), calls).compile(checkpointer=saver)
    final = graph.invoke({"topic": "tides"}, config)
    ledger = read_ledger(final)
    assert ledger["hops"] == 5
    assert calls.counts == {"researcher": 3, "analyst": 2}  # the 6th step never ran
    assert ledger["status"] == "done"
    assert ledger["trips"][-1]["kind"] == "hop_cap"
    assert ledger["trips"][-1]["agent"] == "analyst"
    outcome = outcome_of(final)
    assert outcome is not None
    assert (outcome["status"], outcome["result"], outcome["source"]) == (
        "partial",
        "doc 3",
        "researcher",
    )
    assert graph.get_state(config).next == ()


async def test_hop_cap_async(async_saver: Any, config: Any) -> None:
    counts: Counter[str] = Counter()

    async def researcher(state: State) -> dict[str, Any]:
        counts["researcher"] += 1
        await asyncio.sleep(0)
        return {"status": "success", "result": "doc"}

    async def analyst(state: State) -> dict[str, Any]:
        counts["analyst"] += 1
        return {"status": "partial", "reason": "I need more context"}

    policy = GuardPolicy(hops=4)
    b = GuardedStateGraph(State)
    b.add_node("researcher", guarded(researcher, policy))
    b.add_node("analyst", guarded(analyst, policy))
    b.add_node("owner", task_owner(policy), destinations=("researcher", "analyst", END))
    b.add_edge(START, "researcher")
    b.add_conditional_edges("researcher", guard_route("analyst"))
    b.add_conditional_edges("analyst", guard_route("researcher"))
    graph = b.compile(checkpointer=async_saver)
    final = await graph.ainvoke({"topic": "tides"}, config)
    assert read_ledger(final)["hops"] == 4
    assert counts == {"researcher": 2, "analyst": 2}
    assert read_ledger(final)["status"] == "done"


def test_per_agent_cap_in_a_graph(config: Any) -> None:
    calls = Calls()
    policy = GuardPolicy(hops=HopCap(max_hops=50, per_agent={"analyst": 2}))
    final = loop_graph(policy, calls).compile(checkpointer=InMemorySaver()).invoke({}, config)
    assert calls.counts == {"researcher": 3, "analyst": 2}
    assert read_ledger(final)["trips"][-1]["scope"] == "agent"


def test_counts_survive_re_invoking_a_finished_thread(saver: Any, config: Any) -> None:
    calls = Calls()
    graph = loop_graph(GuardPolicy(hops=5, owner="escalate"), calls).compile(checkpointer=saver)
    graph.invoke({"topic": "tides"}, config)
    graph.invoke(Command(resume={"action": "abort", "reason": "enough"}), config)
    assert read_ledger(graph.get_state(config).values)["status"] == "aborted"
    # New input on the same thread starts a new turn from the saved ledger: nothing is
    # reset, so the very first step trips the cap again and the owner asks the human.
    graph.invoke({"topic": "again"}, config)
    snapshot = graph.get_state(config)
    assert snapshot.next == ("owner",)
    ledger = read_ledger(snapshot.values)
    assert (ledger["hops"], ledger["trip_count"], ledger["status"]) == (5, 2, "tripped")
    assert sum(calls.counts.values()) == 5
    # Passing a previous result back in as input does not count its hops twice.
    graph.invoke(Command(resume={"action": "continue", "extra_hops": 1}), config)
    graph.invoke(Command(resume={"action": "abort"}), config)
    again = graph.invoke(graph.get_state(config).values, config)
    assert read_ledger(again)["hops"] == 6
    assert sum(calls.counts.values()) == 6


def test_deadline_trips_and_routes_to_the_owner(config: Any) -> None:
    def slow(state: State) -> dict[str, Any]:
        time.sleep(0.02)
        return {"status": "partial", "reason": "more"}

    policy = GuardPolicy(hops=1000, budget=Budget(seconds=0.05), loops=False)
    b = GuardedStateGraph(State)
    b.add_node("slow", guarded(slow, policy))
    b.add_node("owner", task_owner(policy), destinations=("slow", END))
    b.add_edge(START, "slow")
    b.add_conditional_edges("slow", guard_route("slow"))
    final = b.compile(checkpointer=InMemorySaver()).invoke({}, config)
    ledger = read_ledger(final)
    trip = ledger["trips"][-1]
    assert trip["kind"] == "deadline"
    assert trip["observed"] > trip["limit"] == 0.05
    assert 2 <= ledger["hops"] < 1000


def test_invalid_output_becomes_a_failed_envelope_and_a_trip(saver: Any, config: Any) -> None:
    model = ScriptedChatModel(["I need more context"])
    policy = GuardPolicy()
    b = GuardedStateGraph(State)
    b.add_node("analyst", guarded(scripted_agent(model, name="analyst"), policy))
    b.add_node(
        "writer", guarded(lambda s: {"status": "success", "result": "x"}, policy, name="writer")
    )
    b.add_node("owner", task_owner(policy), destinations=("analyst", "writer", END))
    b.add_edge(START, "analyst")
    b.add_conditional_edges("analyst", guard_route("writer"))
    b.add_edge("writer", END)
    final = b.compile(checkpointer=saver).invoke({"topic": "t"}, config)
    envelope = envelopes_of(final)["analyst"]
    assert envelope["status"] == "failed"
    assert (
        envelope["reason"]
        == "invalid envelope: AIMessage content is not JSON: 'I need more context'"
    )
    ledger = read_ledger(final)
    assert [t["kind"] for t in ledger["trips"]] == ["invalid_envelope"]
    assert "writer" not in envelopes_of(final)
    assert outcome_of(final)["status"] == "failed"  # type: ignore[index]


def test_scripted_model_envelopes_and_confidence_gate(config: Any) -> None:
    model = ScriptedChatModel([envelope_message("success", {"answer": 42}, confidence=0.3)])
    policy = GuardPolicy(envelopes=EnvelopePolicy(min_confidence=0.5), owner="abort")
    b = GuardedStateGraph(State)
    b.add_node("analyst", guarded(scripted_agent(model, name="analyst"), policy))
    b.add_node("owner", task_owner(policy), destinations=(END,))
    b.add_edge(START, "analyst")
    b.add_conditional_edges("analyst", guard_route(END))
    final = b.compile(checkpointer=InMemorySaver()).invoke({"topic": "t"}, config)
    assert envelopes_of(final)["analyst"]["result"] == {"answer": 42}
    assert read_ledger(final)["trips"][-1]["kind"] == "low_confidence"
    assert read_ledger(final)["status"] == "aborted"


def test_owner_raise_surfaces_the_trip(config: Any) -> None:
    graph = loop_graph(GuardPolicy(hops=3, owner="raise"), Calls()).compile(
        checkpointer=InMemorySaver()
    )
    with pytest.raises(
        HopCapExceeded, match=re.escape("The next hop would exceed max_hops=3")
    ) as info:
        graph.invoke({}, config)
    assert (info.value.limit, info.value.observed, info.value.agent) == (3, 4, "analyst")
    # The checkpoint before the owner is kept: the run can be inspected.
    assert read_ledger(graph.get_state(config).values)["status"] == "tripped"


def test_escalation_pauses_with_a_typed_payload_and_resumes(saver: Any, config: Any) -> None:
    calls = Calls()
    graph = loop_graph(GuardPolicy(hops=4, owner="escalate"), calls).compile(checkpointer=saver)
    graph.invoke({"topic": "tides"}, config)
    snapshot = graph.get_state(config)
    assert snapshot.next == ("owner",)
    payload = Escalation.model_validate(snapshot.interrupts[0].value)
    assert (payload.kind, payload.limit, payload.observed, payload.hops) == ("hop_cap", 4, 5, 4)
    assert payload.by_agent == {"researcher": 2, "analyst": 2}
    assert [r["status"] for r in payload.recent] == ["success", "partial", "success", "partial"]

    # Raise the cap: the run continues where it stopped and trips again at the new cap.
    graph.invoke(Command(resume={"action": "continue", "extra_hops": 2}), config)
    assert read_ledger(graph.get_state(config).values)["hops"] == 6
    assert calls.counts == {"researcher": 3, "analyst": 3}

    final = graph.invoke(Command(resume={"action": "accept_partial"}), config)
    assert read_ledger(final)["status"] == "done"
    assert outcome_of(final)["result"] == "doc 3"  # type: ignore[index]


def test_an_invalid_decision_is_refused_and_the_run_stays_paused(saver: Any, config: Any) -> None:
    calls = Calls()
    graph = loop_graph(GuardPolicy(hops=2, owner="escalate"), calls).compile(checkpointer=saver)
    graph.invoke({}, config)
    message = (
        "Invalid decision for the 'hop_cap' escalation (extra_hops: Field required). Resume "
        "with Command(resume=...) using one of: {'action': 'continue', 'extra_hops': N} or "
        "{'action': 'accept_partial'} or {'action': 'abort', 'reason': '...'}. The run is "
        "still paused."
    )
    with pytest.raises(InvalidDecision, match=re.escape(message)):
        graph.invoke(Command(resume={"action": "continue"}), config)
    with pytest.raises(InvalidDecision, match="action"):
        graph.invoke(Command(resume="yes please"), config)
    snapshot = graph.get_state(config)
    assert snapshot.next == ("owner",) and len(snapshot.interrupts) == 1
    assert read_ledger(snapshot.values)["hops"] == 2
    graph.invoke(Command(resume={"action": "continue", "extra_hops": 1}), config)
    assert read_ledger(graph.get_state(config).values)["hops"] == 3
    final = graph.invoke(Command(resume={"action": "abort", "reason": "wrong topic"}), config)
    assert read_ledger(final)["status"] == "aborted"
    assert "aborted by a human: wrong topic" in outcome_of(final)["reason"]  # type: ignore[index]


async def test_escalation_async(async_saver: Any, config: Any) -> None:
    graph = loop_graph(GuardPolicy(hops=2, owner="escalate"), Calls()).compile(
        checkpointer=async_saver
    )
    await graph.ainvoke({}, config)
    with pytest.raises(InvalidDecision):
        await graph.ainvoke(Command(resume={"action": "continue", "extra_hops": 0}), config)
    await graph.ainvoke(Command(resume={"action": "continue", "extra_hops": 2}), config)
    state = await graph.aget_state(config)
    assert read_ledger(state.values)["hops"] == 4
    assert state.next == ("owner",)


def test_deadline_escalation_needs_extra_seconds(config: Any) -> None:
    def slow(state: State) -> dict[str, Any]:
        time.sleep(0.03)
        return {"status": "success", "result": 1}

    policy = GuardPolicy(budget=Budget(seconds=0.02), owner="escalate")
    b = GuardedStateGraph(State)
    b.add_node("slow", guarded(slow, policy))
    b.add_node("owner", task_owner(policy), destinations=("slow", END))
    b.add_edge(START, "slow")
    b.add_conditional_edges("slow", guard_route("slow"))
    graph = b.compile(checkpointer=InMemorySaver())
    graph.invoke({}, config)
    with pytest.raises(InvalidDecision, match=re.escape("extra_seconds: Field required")):
        graph.invoke(Command(resume={"action": "continue", "extra_hops": 3}), config)
    graph.invoke(Command(resume={"action": "continue", "extra_seconds": 0.05}), config)
    assert read_ledger(graph.get_state(config).values)["grants"] == {"seconds": 0.05}


def test_an_unrouted_trip_raises_instead_of_looping(config: Any) -> None:
    calls = Calls()
    policy = GuardPolicy(hops=2)
    b = GuardedStateGraph(State)
    b.add_node("researcher", guarded(calls.researcher, policy, name="researcher"))
    b.add_node("analyst", guarded(calls.analyst, policy, name="analyst"))
    b.add_edge(START, "researcher")
    b.add_edge("researcher", "analyst")
    b.add_edge("analyst", "researcher")
    graph = b.compile(checkpointer=InMemorySaver())
    with pytest.raises(HopCapExceeded, match="use guard_route"):
        graph.invoke({}, config)
    assert calls.counts == {"researcher": 1, "analyst": 1}


def test_a_trip_is_recorded_by_the_node_not_raised(config: Any) -> None:
    graph = loop_graph(GuardPolicy(hops=1), Calls()).compile(checkpointer=InMemorySaver())
    updates = list(graph.stream({}, config, stream_mode="updates"))
    # The refusing step is an ordinary, successful task that wrote the trip.
    refused = updates[1]["analyst"]["guard"]
    assert refused["trip"]["kind"] == "hop_cap"
    assert "hop" not in refused


def test_guarding_adds_no_superstep(config: Any) -> None:
    class Plain(GuardedState, total=False):
        n: int

    def bump(state: Plain) -> dict[str, Any]:
        return {"n": state.get("n", 0) + 1, "envelope": {"status": "success", "result": 1}}

    def chain(wrap: bool) -> int:
        b = GuardedStateGraph(Plain)
        for name in ("a", "b", "c"):
            b.add_node(name, guarded(bump, name=name) if wrap else bump)
        b.add_edge(START, "a")
        b.add_edge("a", "b")
        b.add_edge("b", "c")
        b.add_edge("c", END)
        graph = b.compile(checkpointer=InMemorySaver())
        graph.invoke({"n": 0}, config)
        steps = [s.metadata["step"] for s in graph.get_state_history(config)]
        config["configurable"]["thread_id"] += "x"
        return max(steps)

    assert chain(True) == chain(False) == 3


def test_agents_may_take_config_runtime_or_be_runnables(config: Any) -> None:
    seen: list[str] = []

    def with_config(state: State, config: RunnableConfig) -> dict[str, Any]:
        seen.append(config["metadata"]["langgraph_node"])
        return {"status": "success", "result": "c"}

    def with_runtime(state: State, runtime: Any) -> dict[str, Any]:
        seen.append(type(runtime).__name__)
        return {"status": "success", "result": "r"}

    runnable = RunnableLambda(lambda state: {"status": "success", "result": "l"})
    b = GuardedStateGraph(State)
    b.add_node("one", guarded(with_config))
    b.add_node("two", guarded(with_runtime))
    b.add_node("three", guarded(runnable, name="three"))
    b.add_edge(START, "one")
    b.add_edge("one", "two")
    b.add_edge("two", "three")
    b.add_edge("three", END)
    final = b.compile(checkpointer=InMemorySaver()).invoke({}, config)
    assert seen == ["one", "Runtime"]
    assert {k: v["result"] for k, v in envelopes_of(final).items()} == {
        "one": "c",
        "two": "r",
        "three": "l",
    }
    assert read_ledger(final)["by_agent"] == {"one": 1, "two": 1, "three": 1}


def test_state_updates_and_commands_pass_through(config: Any) -> None:
    def planner(state: State) -> Command[Literal["worker"]]:
        return Command(
            goto="worker",
            update={
                "notes": ["planned"],
                "messages": [],
                "envelope": {"status": "success", "result": "plan"},
            },
        )

    def worker(state: State) -> dict[str, Any]:
        return {
            "notes": [*state["notes"], "done"],
            "messages": [AIMessage('{"status": "success", "result": 7}')],
        }

    class WithMessages(State, total=False):
        messages: list[Any]

    policy = GuardPolicy()
    b = GuardedStateGraph(WithMessages)
    b.add_node("planner", guarded(planner, policy), destinations=("worker",))
    b.add_node("worker", guarded(worker, policy))
    b.add_edge(START, "planner")
    b.add_edge("worker", END)
    final = b.compile(checkpointer=InMemorySaver()).invoke({}, config)
    assert final["notes"] == ["planned", "done"]
    assert envelopes_of(final)["planner"]["result"] == "plan"
    assert envelopes_of(final)["worker"]["result"] == 7
    assert "envelope" not in final


def test_fan_out_respects_the_hop_cap(saver: Any, config: Any) -> None:
    ran: list[str] = []

    def worker(state: dict[str, Any]) -> dict[str, Any]:
        ran.append(state["task"])
        return {"status": "success", "result": state["task"]}

    policy = GuardPolicy(hops=3)

    def fan_out(state: Fan) -> list[Send]:
        return guard_sends(state, [Send("worker", {"task": t}) for t in state["tasks"]])

    b = GuardedStateGraph(Fan)
    b.add_node("worker", guarded(worker, policy))
    b.add_node("owner", task_owner(policy), destinations=(END,))
    b.add_conditional_edges(START, fan_out, ["worker"])
    b.add_conditional_edges("worker", guard_route(END))
    final = b.compile(checkpointer=saver).invoke({"tasks": list("abcde")}, config)
    ledger = read_ledger(final)
    assert sorted(ran) == ["a", "b", "c"]
    assert ledger["hops"] == 3
    assert ledger["trip_count"] == 2
    # Refused branches show in the round as failed, so an aggregate sees every branch.
    statuses = {key: env["status"] for key, env in envelopes_of(final).items()}
    assert statuses == {
        "worker[0]": "success",
        "worker[1]": "success",
        "worker[2]": "success",
        "worker[3]": "failed",
        "worker[4]": "failed",
    }
    assert envelopes_of(final)["worker[3]"]["reason"].startswith("not run: The next hop")
    assert ledger["status"] == "done"


def test_route_requires_known_destinations() -> None:
    def router(state: Any) -> str:
        return "x"

    with pytest.raises(
        ConfigurationError, match=re.escape("annotate it with -> Literal['a', 'b']")
    ):
        guard_route(router)


def test_guard_route_draws_every_branch() -> None:
    def router(state: Any) -> Literal["a", "b"]:
        return "a"

    route = guard_route(router)
    assert route({"guard": fold_ledger({}, {})}) == "a"
    tripped = fold_ledger({}, {"trip": {"kind": "k", "message": "m", "hop": 0, "agent": None}})
    assert route({"guard": tripped}) == "owner"
    assert route.__annotations__["return"] == Literal["a", "b", "owner"]


def test_unrouted_deadline_surfaces_as_deadline_exceeded() -> None:
    ledger = fold_ledger(
        {}, {"trip": {"kind": "deadline", "message": "late", "hop": 0, "agent": "a"}}
    )
    node = guarded(lambda s: {"status": "success"}, name="a")
    config = {"metadata": {"langgraph_node": "a"}, "configurable": {SCOPE_KEY: RunScope()}}
    with pytest.raises(DeadlineExceeded, match="late"):
        node({"guard": ledger}, config, None)
    assert issubclass(DeadlineExceeded, GuardTripped) and issubclass(GuardTripped, RuntimeError)


def test_continue_after_a_trip_inside_a_subgraph_resumes_at_the_subgraph_node(config: Any) -> None:
    calls: Counter[str] = Counter()
    policy = GuardPolicy(hops=3, owner="escalate")

    def inner(state: State) -> dict[str, Any]:
        calls["inner"] += 1
        return {"status": "success", "result": calls["inner"]}

    sub = GuardedStateGraph(State)
    sub.add_node("inner", guarded(inner, policy))
    sub.add_edge(START, "inner")
    sub.add_conditional_edges("inner", guard_route("inner", owner=END))
    outer = GuardedStateGraph(State)
    outer.add_node("sub", sub.compile())
    outer.add_node("owner", task_owner(policy), destinations=("sub", END))
    outer.add_edge(START, "sub")
    outer.add_conditional_edges("sub", guard_route(END))
    graph = outer.compile(checkpointer=InMemorySaver())
    graph.invoke({}, config)
    ledger = read_ledger(graph.get_state(config).values)
    assert (ledger["hops"], ledger["status"], ledger["trips"][-1]["node"]) == (
        3,
        "tripped",
        "inner",
    )
    graph.invoke(Command(resume={"action": "continue", "extra_hops": 2}), config)
    # The owner went back to "sub" (the node at its own level), which ran inner twice more.
    assert calls["inner"] == 5
    assert read_ledger(graph.get_state(config).values)["hops"] == 5


# -- policies are plain data -------------------------------------------------------------


def _policies() -> list[Any]:
    from sanegraph.guards import LoopPolicy, Price
    from sanegraph.guards.loops import MinHash

    return [
        GuardPolicy(),
        GuardPolicy(
            hops=HopCap(max_hops=20, per_agent={"researcher": 5}),
            budget=Budget(
                usd=5,
                per_agent={"researcher": {"usd": 1.0, "tokens": 50_000}},
                prices={"house": Price(input_per_mtok=1, output_per_mtok=2)},
            ),
            envelopes=EnvelopePolicy(min_confidence=0.7),
            loops=LoopPolicy(watch=("draft",), fingerprint_per_agent={"router": ("request",)}),
            owner=OwnerPolicy(on_trip="escalate", by_kind={"deadline": "abort"}),
        ),
        HopCap(per_agent={"a": 2}),
        Budget(seconds=10),
        LoopPolicy(similarity=MinHash(k=8)),
        OwnerPolicy(by_kind={"hop_cap": "partial"}),
    ]


@pytest.mark.parametrize("policy", _policies(), ids=lambda p: type(p).__name__)
def test_policies_are_frozen_hashable_picklable_and_compare_by_value(policy: Any) -> None:
    import dataclasses
    import pickle

    copy = pickle.loads(pickle.dumps(policy))
    assert copy == policy and copy is not policy
    assert hash(copy) == hash(policy)
    assert {policy: 1}[copy] == 1
    field = dataclasses.fields(policy)[0].name
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(policy, field, None)


def test_a_policys_mappings_are_read_only() -> None:
    policy = GuardPolicy(
        hops=HopCap(per_agent={"a": 2}), owner=OwnerPolicy(by_kind={"deadline": "abort"})
    )
    with pytest.raises(TypeError, match="read-only"):
        policy.hops.per_agent["a"] = 100  # type: ignore[index]
    with pytest.raises(TypeError, match="read-only"):
        policy.owner.by_kind.update(deadline="partial")  # type: ignore[attr-defined]


def test_an_unknown_trip_kind_in_owner_policy_lists_the_kinds() -> None:
    with pytest.raises(
        ConfigurationError,
        match=re.escape(
            "OwnerPolicy.by_kind has an unknown trip kind 'hopcap'. The kinds are 'hop_cap', 'deadline', 'budget',"
        ),
    ):
        OwnerPolicy(by_kind={"hopcap": "escalate"})  # type: ignore[dict-item]
