"""Prebuilt graphs (sanegraph.graphs) end to end, with real LangGraph and checkpointers."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from typing import Any, TypedDict

import pytest
from langchain_core.runnables import RunnableLambda
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.graph import END, START, StateGraph
from langgraph.types import Command
from syrupy.assertion import SnapshotAssertion

from sanegraph.graphs import (
    SequentialState,
    add_task_owner,
    branch_envelopes,
    parallel_graph,
    sequential_graph,
)
from sanegraph.graphs.owner import add_task_owner as add_task_owner_in_module
from sanegraph.guards import (
    ConfigurationError,
    Escalation,
    GuardedState,
    GuardPolicy,
    envelopes_of,
    guard_route,
    guarded,
    outcome_of,
    read_ledger,
)
from sanegraph.guards.ledger import BRANCH_KEY, new_ledger
from sanegraph.guards.testing import ScriptedChatModel, envelope_message, scripted_agent

NEED_MORE = "I need more context"
HOP_CAP_6 = (
    "hop_cap: The next hop would exceed max_hops=6 (hops=6, agent='researcher'). Raise "
    "HopCap.max_hops, or let the task owner escalate so a human can grant more "
    "hops. (best partial result kept)"
)


def success(result: Any) -> dict[str, Any]:
    return {"status": "success", "result": result, "confidence": 0.9, "reason": ""}


def incident_agents(calls: Counter[str]) -> tuple[Callable[..., Any], Callable[..., Any]]:
    """The incident: the analyst always asks the researcher for more context."""

    def researcher(state: dict[str, Any]) -> dict[str, Any]:
        calls["researcher"] += 1
        return success(f"doc {calls['researcher']}")

    def analyst(state: dict[str, Any]) -> dict[str, Any]:
        calls["analyst"] += 1
        return {"status": "partial", "result": None, "reason": NEED_MORE}

    return researcher, analyst


def async_incident_agents(calls: Counter[str]) -> tuple[Callable[..., Any], Callable[..., Any]]:
    async def researcher(state: dict[str, Any]) -> dict[str, Any]:
        calls["researcher"] += 1
        return success(f"doc {calls['researcher']}")

    async def analyst(state: dict[str, Any]) -> dict[str, Any]:
        calls["analyst"] += 1
        return {"status": "partial", "result": None, "reason": NEED_MORE}

    return researcher, analyst


def assert_incident_stopped(state: dict[str, Any], calls: Counter[str]) -> None:
    ledger = read_ledger(state)
    # r1 a2 r3 a4 r5 a6, then the 7th hop (the researcher again) would exceed max_hops=6.
    assert ledger["hops"] == 6
    assert ledger["by_agent"] == {"researcher": 3, "analyst": 3}
    assert calls == Counter(researcher=3, analyst=3)
    assert ledger["status"] == "done"
    assert [(t["kind"], t["agent"], t["node"]) for t in ledger["trips"]] == [
        ("hop_cap", "researcher", "researcher")
    ]
    assert outcome_of(state) == {
        "status": "partial",
        "result": "doc 3",
        "confidence": 0.9,
        "reason": HOP_CAP_6,
        "source": "researcher",
    }


# --- sequential_graph ---------------------------------------------------------------------


def test_sequential_happy_path(saver: BaseCheckpointSaver[Any], config: dict[str, Any]) -> None:
    order: list[tuple[str, str]] = []

    def stage(name: str) -> Callable[..., Any]:
        def agent(state: dict[str, Any]) -> dict[str, Any]:
            order.append((name, state["task"]))
            return success(f"{name} done")

        return agent

    builder = sequential_graph(
        [("plan", stage("plan")), ("draft", stage("draft")), ("review", stage("review"))]
    )
    state = builder.compile(checkpointer=saver).invoke({"task": "Q3 report"}, config)

    assert order == [("plan", "Q3 report"), ("draft", "Q3 report"), ("review", "Q3 report")]
    assert envelopes_of(state) == {
        "plan": success("plan done"),
        "draft": success("draft done"),
        "review": success("review done"),
    }
    ledger = read_ledger(state)
    assert (ledger["hops"], ledger["status"], ledger["trips"]) == (3, "running", [])
    assert outcome_of(state) is None


def test_sequential_accepts_a_dict_runnables_and_a_custom_state(
    saver: BaseCheckpointSaver[Any], config: dict[str, Any]
) -> None:
    class Report(GuardedState, total=False):
        topic: str

    def outline(state: dict[str, Any]) -> dict[str, Any]:
        return success(["intro", state["topic"]])

    write = RunnableLambda(
        lambda state: success(" / ".join(envelopes_of(state)["outline"]["result"]))
    )
    builder = sequential_graph({"outline": outline, "write": write}, state_schema=Report)
    state = builder.compile(checkpointer=saver).invoke({"topic": "tides"}, config)

    assert envelopes_of(state)["write"]["result"] == "intro / tides"
    assert read_ledger(state)["hops"] == 2


# The incident tests below check the hop cap alone (loops=False): loop detection, on by
# default, stops the same incident sooner (tests/test_loop_scenarios.py).


def test_incident_stops_at_the_hop_cap(
    saver: BaseCheckpointSaver[Any], config: dict[str, Any]
) -> None:
    calls: Counter[str] = Counter()
    researcher, analyst = incident_agents(calls)
    builder = sequential_graph(
        [("researcher", researcher), ("analyst", analyst)], policy=GuardPolicy(hops=6, loops=False)
    )
    graph = builder.compile(checkpointer=saver)

    state = graph.invoke({"task": "Why did Q3 sales drop?"}, config)

    assert_incident_stopped(state, calls)
    assert graph.get_state(config).next == ()


async def test_incident_stops_at_the_hop_cap_async(
    async_saver: BaseCheckpointSaver[Any], config: dict[str, Any]
) -> None:
    calls: Counter[str] = Counter()
    researcher, analyst = async_incident_agents(calls)
    builder = sequential_graph(
        [("researcher", researcher), ("analyst", analyst)], policy=GuardPolicy(hops=6, loops=False)
    )
    graph = builder.compile(checkpointer=async_saver)

    state = await graph.ainvoke({"task": "Why did Q3 sales drop?"}, config)

    assert_incident_stopped(state, calls)
    assert (await graph.aget_state(config)).next == ()


def test_incident_with_scripted_models_calls_each_model_only_as_the_cap_allows(
    saver: BaseCheckpointSaver[Any], config: dict[str, Any]
) -> None:
    # A fourth call to either model would raise ScriptExhausted.
    researcher_model = ScriptedChatModel(
        responses=[envelope_message("success", f"doc {i}", confidence=0.8) for i in (1, 2, 3)]
    )
    analyst_model = ScriptedChatModel(
        responses=[envelope_message("partial", reason=NEED_MORE, as_tool_call=True)] * 3
    )
    builder = sequential_graph(
        [
            ("researcher", scripted_agent(researcher_model, name="researcher")),
            ("analyst", scripted_agent(analyst_model, name="analyst")),
        ],
        policy=GuardPolicy(hops=6),
    )
    state = builder.compile(checkpointer=saver).invoke({"task": "Why?"}, config)

    assert (researcher_model.call_count, analyst_model.call_count) == (3, 3)
    outcome = outcome_of(state)
    assert outcome is not None
    assert (outcome["status"], outcome["result"], outcome["source"]) == (
        "partial",
        "doc 3",
        "researcher",
    )


@pytest.mark.parametrize("status", ["partial", "failed"])
def test_on_incomplete_end_finishes_without_a_trip(
    saver: BaseCheckpointSaver[Any], config: dict[str, Any], status: str
) -> None:
    calls: Counter[str] = Counter()

    def first(state: dict[str, Any]) -> dict[str, Any]:
        calls["first"] += 1
        return success("facts")

    def second(state: dict[str, Any]) -> dict[str, Any]:
        calls["second"] += 1
        return {"status": status, "reason": "no Q4 data"}

    def third(state: dict[str, Any]) -> dict[str, Any]:
        calls["third"] += 1
        return success("never")

    builder = sequential_graph(
        [("first", first), ("second", second), ("third", third)], on_incomplete="end"
    )
    state = builder.compile(checkpointer=saver).invoke({"task": "t"}, config)

    assert calls == Counter(first=1, second=1)
    assert envelopes_of(state)["second"]["status"] == status
    ledger = read_ledger(state)
    assert (ledger["hops"], ledger["status"], outcome_of(state)) == (2, "running", None)


def test_on_incomplete_next_carries_on_with_the_incomplete_envelope(
    saver: BaseCheckpointSaver[Any], config: dict[str, Any]
) -> None:
    seen: list[dict[str, Any]] = []

    def first(state: dict[str, Any]) -> dict[str, Any]:
        return {"status": "partial", "result": "half", "reason": "no Q4 data"}

    def second(state: dict[str, Any]) -> dict[str, Any]:
        seen.append(envelopes_of(state)["first"])
        return {"status": "failed", "reason": "nothing to add"}

    def third(state: dict[str, Any]) -> dict[str, Any]:
        return success("summary")

    builder = sequential_graph(
        [("first", first), ("second", second), ("third", third)], on_incomplete="next"
    )
    state = builder.compile(checkpointer=saver).invoke({"task": "t"}, config)

    assert seen == [
        {"status": "partial", "result": "half", "confidence": None, "reason": "no Q4 data"}
    ]
    assert envelopes_of(state)["third"] == success("summary")
    assert read_ledger(state)["hops"] == 3


def test_on_incomplete_previous_ends_after_the_first_stage(
    saver: BaseCheckpointSaver[Any], config: dict[str, Any]
) -> None:
    calls: Counter[str] = Counter()

    def first(state: dict[str, Any]) -> dict[str, Any]:
        calls["first"] += 1
        return {"status": "failed", "reason": "no access"}

    def second(state: dict[str, Any]) -> dict[str, Any]:
        calls["second"] += 1
        return success("never")

    builder = sequential_graph([("first", first), ("second", second)])
    state = builder.compile(checkpointer=saver).invoke({"task": "t"}, config)

    assert calls == Counter(first=1)
    assert (read_ledger(state)["hops"], read_ledger(state)["status"]) == (1, "running")


def test_previous_stage_reads_why_the_next_one_sent_it_back(
    saver: BaseCheckpointSaver[Any], config: dict[str, Any]
) -> None:
    asked: list[str | None] = []

    def researcher(state: dict[str, Any]) -> dict[str, Any]:
        feedback = envelopes_of(state).get("analyst")
        asked.append(feedback["reason"] if feedback else None)
        return success(f"docs x{len(asked)}")

    def analyst(state: dict[str, Any]) -> dict[str, Any]:
        if envelopes_of(state)["researcher"]["result"] == "docs x1":
            return {"status": "partial", "reason": "need Q4 numbers"}
        return success("analysis")

    builder = sequential_graph([("researcher", researcher), ("analyst", analyst)])
    state = builder.compile(checkpointer=saver).invoke({"task": "t"}, config)

    assert asked == [None, "need Q4 numbers"]
    assert envelopes_of(state)["analyst"] == success("analysis")
    assert read_ledger(state)["hops"] == 4


def test_escalated_incident_resumes_with_more_hops_then_accepts_partial(
    saver: BaseCheckpointSaver[Any], config: dict[str, Any]
) -> None:
    calls: Counter[str] = Counter()
    researcher, analyst = incident_agents(calls)
    builder = sequential_graph(
        [("researcher", researcher), ("analyst", analyst)],
        policy=GuardPolicy(hops=6, owner="escalate", loops=False),
    )
    graph = builder.compile(checkpointer=saver)

    graph.invoke({"task": "Why?"}, config)
    snapshot = graph.get_state(config)
    assert snapshot.next == ("owner",)
    assert len(snapshot.interrupts) == 1
    escalation = Escalation.model_validate(snapshot.interrupts[0].value)
    assert (escalation.kind, escalation.agent, escalation.hops) == ("hop_cap", "researcher", 6)

    graph.invoke(Command(resume={"action": "continue", "extra_hops": 2}), config)
    snapshot = graph.get_state(config)
    assert calls == Counter(researcher=4, analyst=4)
    assert Escalation.model_validate(snapshot.interrupts[0].value).hops == 8

    state = graph.invoke(Command(resume={"action": "accept_partial"}), config)
    ledger = read_ledger(state)
    assert (ledger["status"], ledger["hops"], ledger["grants"]) == ("done", 8, {"hops": 2})
    outcome = outcome_of(state)
    assert outcome is not None
    assert (outcome["status"], outcome["result"], outcome["source"]) == (
        "partial",
        "doc 4",
        "researcher",
    )
    assert calls == Counter(researcher=4, analyst=4)
    assert graph.get_state(config).next == ()


def test_invalid_result_type_trips_to_the_owner(
    saver: BaseCheckpointSaver[Any], config: dict[str, Any]
) -> None:
    calls: Counter[str] = Counter()

    def count(state: dict[str, Any]) -> dict[str, Any]:
        calls["count"] += 1
        return success("many")

    def report(state: dict[str, Any]) -> dict[str, Any]:
        calls["report"] += 1
        return success("never")

    builder = sequential_graph([("count", count), ("report", report)], result_type={"count": int})
    state = builder.compile(checkpointer=saver).invoke({"task": "t"}, config)

    assert calls == Counter(count=1)
    ledger = read_ledger(state)
    assert [t["kind"] for t in ledger["trips"]] == ["invalid_envelope"]
    assert ledger["status"] == "done"


# --- parallel_graph -----------------------------------------------------------------------


def worker(calls: Counter[str], *, fail: bool = False) -> Callable[..., Any]:
    def agent(state: dict[str, Any]) -> dict[str, Any]:
        calls[state[BRANCH_KEY]] += 1
        if fail:
            return {"status": "failed", "result": None, "reason": f"no source for {state['task']}"}
        return success(f"{state['task']} found")

    return agent


def async_worker(calls: Counter[str], *, fail: bool = False) -> Callable[..., Any]:
    async def agent(state: dict[str, Any]) -> dict[str, Any]:
        calls[state[BRANCH_KEY]] += 1
        if fail:
            return {"status": "failed", "result": None, "reason": f"no source for {state['task']}"}
        return success(f"{state['task']} found")

    return agent


def recorder(seen: list[list[tuple[str, str, Any]]]) -> Callable[..., Any]:
    def aggregate(state: dict[str, Any]) -> dict[str, Any]:
        found = branch_envelopes(state)
        seen.append([(key, env.status, env.result) for key, env in found.items()])
        failed = [key for key, env in found.items() if env.status == "failed"]
        return {
            "status": "partial" if failed else "success",
            "result": sorted({env.result for env in found.values() if env.result}),
            "reason": f"failed: {', '.join(failed)}",
        }

    return aggregate


def async_recorder(seen: list[list[tuple[str, str, Any]]]) -> Callable[..., Any]:
    sync = recorder(seen)

    async def aggregate(state: dict[str, Any]) -> dict[str, Any]:
        return sync(state)  # type: ignore[no-any-return]

    return aggregate


EXPECTED_SEEN = [
    ("web[0]@0", "success", "EMEA found"),
    ("web[1]@0", "success", "APAC found"),
    ("docs[0]@0", "success", "EMEA found"),
    ("docs[1]@0", "success", "APAC found"),
    ("flaky[0]@0", "failed", None),
    ("flaky[1]@0", "failed", None),
]
EXPECTED_RESULT = {
    "status": "partial",
    "result": ["APAC found", "EMEA found"],
    "confidence": None,
    "reason": "failed: flaky[0]@0, flaky[1]@0",
}


def test_parallel_aggregate_sees_failures_as_data(
    saver: BaseCheckpointSaver[Any], config: dict[str, Any]
) -> None:
    calls: Counter[str] = Counter()
    seen: list[list[tuple[str, str, Any]]] = []
    builder = parallel_graph(
        {"web": worker(calls), "docs": worker(calls), "flaky": worker(calls, fail=True)},
        recorder(seen),
    )
    state = builder.compile(checkpointer=saver).invoke({"tasks": ["EMEA", "APAC"]}, config)

    assert seen == [EXPECTED_SEEN]
    assert calls == Counter({key: 1 for key, _, _ in EXPECTED_SEEN})
    assert envelopes_of(state)["aggregate"] == EXPECTED_RESULT
    ledger = read_ledger(state)
    assert (ledger["hops"], ledger["status"], ledger["by_agent"]) == (
        7,
        "running",
        {"web": 2, "docs": 2, "flaky": 2, "aggregate": 1},
    )


async def test_parallel_aggregate_sees_failures_as_data_async(
    async_saver: BaseCheckpointSaver[Any], config: dict[str, Any]
) -> None:
    calls: Counter[str] = Counter()
    seen: list[list[tuple[str, str, Any]]] = []
    builder = parallel_graph(
        {
            "web": async_worker(calls),
            "docs": async_worker(calls),
            "flaky": async_worker(calls, fail=True),
        },
        async_recorder(seen),
    )
    graph = builder.compile(checkpointer=async_saver)
    state = await graph.ainvoke({"tasks": ["EMEA", "APAC"]}, config)

    assert seen == [EXPECTED_SEEN]
    assert envelopes_of(state)["aggregate"] == EXPECTED_RESULT
    assert read_ledger(state)["hops"] == 7


REFUSED_4 = (
    "not run: The next hop would exceed max_hops=4 (hops={hops}, agent='flaky'). Raise "
    "HopCap.max_hops, or let the task owner escalate so a human can grant more "
    "hops."
)


def assert_fan_out_capped(state: dict[str, Any], calls: Counter[str], seen: list[Any]) -> None:
    assert calls == Counter({"web[0]@0": 1, "web[1]@0": 1, "docs[0]@0": 1, "docs[1]@0": 1})
    assert seen == []  # the aggregate never ran
    ledger = read_ledger(state)
    assert (ledger["hops"], ledger["status"], ledger["trip_count"]) == (4, "done", 2)
    assert ledger["by_agent"] == {"web": 2, "docs": 2}
    assert [(t["kind"], t["agent"], t["observed"]) for t in ledger["trips"]] == [
        ("hop_cap", "flaky", 5),
        ("hop_cap", "flaky", 6),
    ]
    assert "aggregate" not in envelopes_of(state)
    assert {
        key: env["reason"] for key, env in envelopes_of(state).items() if env["status"] == "failed"
    } == {
        "flaky[0]@0": REFUSED_4.format(hops=4),
        "flaky[1]@0": REFUSED_4.format(hops=5),
    }
    outcome = outcome_of(state)
    assert outcome is not None
    assert (outcome["status"], outcome["source"]) == ("partial", "docs[1]@0")


def test_hop_cap_holds_across_the_fan_out(
    saver: BaseCheckpointSaver[Any], config: dict[str, Any]
) -> None:
    calls: Counter[str] = Counter()
    seen: list[Any] = []
    builder = parallel_graph(
        {"web": worker(calls), "docs": worker(calls), "flaky": worker(calls)},
        recorder(seen),
        policy=GuardPolicy(hops=4),
    )
    graph = builder.compile(checkpointer=saver)
    state = graph.invoke({"tasks": ["EMEA", "APAC"]}, config)

    assert_fan_out_capped(state, calls, seen)
    assert graph.get_state(config).next == ()


async def test_hop_cap_holds_across_the_fan_out_async(
    async_saver: BaseCheckpointSaver[Any], config: dict[str, Any]
) -> None:
    calls: Counter[str] = Counter()
    seen: list[Any] = []
    builder = parallel_graph(
        {"web": async_worker(calls), "docs": async_worker(calls), "flaky": async_worker(calls)},
        async_recorder(seen),
        policy=GuardPolicy(hops=4),
    )
    state = await builder.compile(checkpointer=async_saver).ainvoke(
        {"tasks": ["EMEA", "APAC"]}, config
    )

    assert_fan_out_capped(state, calls, seen)


def test_one_tripped_branch_sends_the_run_to_the_owner_once(
    saver: BaseCheckpointSaver[Any], config: dict[str, Any]
) -> None:
    calls: Counter[str] = Counter()
    seen: list[Any] = []

    def garbled(state: dict[str, Any]) -> str:
        calls["garbled"] += 1
        return "Sure! Here are the numbers you asked for."

    builder = parallel_graph({"web": worker(calls), "garbled": garbled}, recorder(seen))
    graph = builder.compile(checkpointer=saver)
    ran = [
        node
        for update in graph.stream({"tasks": ["EMEA"]}, config, stream_mode="updates")
        for node in update
    ]

    assert calls == Counter({"web[0]@0": 1, "garbled": 1})
    assert seen == []
    assert ran.count("owner") == 1
    ledger = read_ledger(graph.get_state(config).values)
    assert [(t["kind"], t["node"]) for t in ledger["trips"]] == [("invalid_envelope", "garbled")]
    assert ledger["status"] == "done"


def test_escalated_fan_out_continues_to_the_aggregate(
    saver: BaseCheckpointSaver[Any], config: dict[str, Any]
) -> None:
    calls: Counter[str] = Counter()
    seen: list[list[tuple[str, str, Any]]] = []
    builder = parallel_graph(
        {"web": worker(calls), "docs": worker(calls)},
        ("combine", recorder(seen)),
        policy=GuardPolicy(hops=3, owner="escalate"),
    )
    graph = builder.compile(checkpointer=saver)

    graph.invoke({"tasks": ["EMEA", "APAC"]}, config)
    snapshot = graph.get_state(config)
    assert Escalation.model_validate(snapshot.interrupts[0].value).agent == "docs"
    assert seen == []

    state = graph.invoke(Command(resume={"action": "continue", "extra_hops": 1}), config)

    assert seen == [
        [
            ("web[0]@0", "success", "EMEA found"),
            ("web[1]@0", "success", "APAC found"),
            ("docs[0]@0", "success", "EMEA found"),
            ("docs[1]@0", "failed", None),
        ]
    ]
    assert envelopes_of(state)["combine"]["reason"] == "failed: docs[1]@0"
    ledger = read_ledger(state)
    assert (ledger["hops"], ledger["status"]) == (4, "running")


PARALLEL_HOP_CAP_6 = (
    "hop_cap: The next hop would exceed max_hops=6 (hops=6, agent='researcher'). Raise "
    "HopCap.max_hops, or let the task owner escalate so a human can grant more "
    "hops. (best partial result kept)"
)


def assert_parallel_incident_stopped(state: dict[str, Any], calls: Counter[str]) -> None:
    # Rounds at hops 0, 2 and 4 each ran the researcher and the analyst; the round at
    # hop 6 was refused, so the analyst (the aggregate) did not run a fourth time.
    assert calls == Counter(researcher=3, analyst=3)
    ledger = read_ledger(state)
    assert (ledger["hops"], ledger["status"]) == (6, "done")
    assert ledger["by_agent"] == {"researcher": 3, "analyst": 3}
    assert [key for key in envelopes_of(state) if key.startswith("researcher")] == [
        "researcher[0]@0",
        "researcher[0]@2",
        "researcher[0]@4",
        "researcher[0]@6",
    ]
    assert envelopes_of(state)["researcher[0]@6"]["status"] == "failed"
    assert outcome_of(state) == {
        "status": "partial",
        "result": "doc 3",
        "confidence": 0.9,
        "reason": PARALLEL_HOP_CAP_6,
        "source": "researcher[0]@4",
    }


def test_parallel_incident_fans_out_again_until_the_hop_cap(
    saver: BaseCheckpointSaver[Any], config: dict[str, Any]
) -> None:
    calls: Counter[str] = Counter()
    researcher, analyst = incident_agents(calls)
    builder = parallel_graph(
        {"researcher": researcher},
        ("analyst", analyst),
        policy=GuardPolicy(hops=6, loops=False),
        on_incomplete="again",
    )
    graph = builder.compile(checkpointer=saver)
    ran = [
        node
        for update in graph.stream({"task": "Why?"}, config, stream_mode="updates")
        for node in update
    ]

    assert ran.count("owner") == 1
    assert_parallel_incident_stopped(graph.get_state(config).values, calls)


async def test_parallel_incident_fans_out_again_until_the_hop_cap_async(
    async_saver: BaseCheckpointSaver[Any], config: dict[str, Any]
) -> None:
    calls: Counter[str] = Counter()
    researcher, analyst = async_incident_agents(calls)
    builder = parallel_graph(
        {"researcher": researcher},
        ("analyst", analyst),
        policy=GuardPolicy(hops=6, loops=False),
        on_incomplete="again",
    )
    state = await builder.compile(checkpointer=async_saver).ainvoke({"task": "Why?"}, config)

    assert_parallel_incident_stopped(state, calls)


def test_again_ends_once_the_aggregate_succeeds(
    saver: BaseCheckpointSaver[Any], config: dict[str, Any]
) -> None:
    rounds: list[list[str]] = []

    def combine(state: dict[str, Any]) -> dict[str, Any]:
        rounds.append(list(branch_envelopes(state)))
        if len(rounds) < 2:
            return {"status": "partial", "result": None, "reason": "one more pass"}
        return success("combined")

    calls: Counter[str] = Counter()
    builder = parallel_graph(
        {"web": worker(calls), "docs": worker(calls)}, combine, on_incomplete="again"
    )
    state = builder.compile(checkpointer=saver).invoke({"tasks": ["EMEA"]}, config)

    assert rounds == [["web[0]@0", "docs[0]@0"], ["web[0]@3", "docs[0]@3"]]
    assert envelopes_of(state)["aggregate"] == success("combined")
    assert read_ledger(state)["hops"] == 6


def test_many_branches_of_one_worker_lose_nothing(
    saver: BaseCheckpointSaver[Any], config: dict[str, Any]
) -> None:
    calls: Counter[str] = Counter()
    seen: list[list[tuple[str, str, Any]]] = []
    tasks = [f"t{i}" for i in range(12)]
    builder = parallel_graph([("solo", worker(calls))], recorder(seen), policy=GuardPolicy(hops=13))
    state = builder.compile(checkpointer=saver).invoke({"tasks": tasks}, config)

    assert seen == [[(f"solo[{i}]@0", "success", f"t{i} found") for i in range(12)]]
    assert sum(1 for key in envelopes_of(state) if key.startswith("solo[")) == 12
    assert read_ledger(state)["hops"] == 13


def test_tasks_per_worker_and_no_tasks(
    saver: BaseCheckpointSaver[Any], config: dict[str, Any]
) -> None:
    calls: Counter[str] = Counter()
    seen: list[list[tuple[str, str, Any]]] = []
    graph = parallel_graph({"web": worker(calls), "docs": worker(calls)}, recorder(seen)).compile(
        checkpointer=saver
    )

    graph.invoke({"tasks": {"docs": ["EMEA", "APAC"]}}, config)
    assert seen[-1] == [
        ("docs[0]@0", "success", "EMEA found"),
        ("docs[1]@0", "success", "APAC found"),
    ]

    # A later round on the same thread: only its branches are shown, none of the first.
    graph.invoke({"task": "everything", "tasks": []}, config)
    assert seen[-1] == [
        ("web[0]@3", "success", "everything found"),
        ("docs[0]@3", "success", "everything found"),
    ]
    state = graph.get_state(config).values
    assert branch_envelopes(state, "docs") == {"docs[0]@3": branch_envelopes(state)["docs[0]@3"]}
    assert len(envelopes_of(state)) == 5  # both rounds' branches and the aggregate
    assert read_ledger(state)["hops"] == 6


@pytest.mark.parametrize(
    ("tasks", "message"),
    [
        (
            {"web": ["a"], "search": ["b"]},
            "state['tasks'] names 'search', not among the workers ('web', 'docs'). Key the "
            "tasks by worker name, or pass a list to give every worker every task.",
        ),
        (
            {"web": []},
            "state['tasks'] gives no task to any worker. Give at least one worker a task, or "
            "leave 'tasks' out to run each worker once on the state as is.",
        ),
        (
            "EMEA",
            "state['tasks'] must be a list of tasks or a dict of worker name -> list of tasks, "
            "got str.",
        ),
    ],
)
def test_bad_tasks_are_reported_at_run_time(
    saver: BaseCheckpointSaver[Any], config: dict[str, Any], tasks: Any, message: str
) -> None:
    calls: Counter[str] = Counter()
    graph = parallel_graph({"web": worker(calls), "docs": worker(calls)}, recorder([])).compile(
        checkpointer=saver
    )
    with pytest.raises(ConfigurationError, match=re.escape(message)):
        graph.invoke({"tasks": tasks}, config)
    assert calls == Counter()


def test_runnable_workers_are_refused_like_functions(saver: BaseCheckpointSaver[Any]) -> None:
    seen: list[list[tuple[str, str, Any]]] = []
    echo = RunnableLambda(lambda state: success(state["task"].upper()))
    graph = parallel_graph({"echo": echo}, recorder(seen), policy=GuardPolicy(hops=1)).compile(
        checkpointer=saver
    )
    state = graph.invoke({"tasks": ["a", "b"]}, {"configurable": {"thread_id": "sync"}})

    assert seen == []
    assert envelopes_of(state)["echo[0]@0"] == success("A")
    assert envelopes_of(state)["echo[1]@0"]["reason"].startswith(
        "not run: The next hop would exceed max_hops=1 (hops=1, agent='echo')."
    )


async def test_runnable_workers_run_async(async_saver: BaseCheckpointSaver[Any]) -> None:
    seen: list[list[tuple[str, str, Any]]] = []
    echo = RunnableLambda(lambda state: success(state["task"].upper()))
    graph = parallel_graph({"echo": echo}, async_recorder(seen)).compile(checkpointer=async_saver)
    await graph.ainvoke({"tasks": ["a", "b"]}, {"configurable": {"thread_id": "async"}})

    assert seen == [[("echo[0]@0", "success", "A"), ("echo[1]@0", "success", "B")]]


def test_branch_envelopes_ignores_other_keys() -> None:
    ledger = new_ledger()
    ledger["envelopes"] = {
        "planner": success("plan"),
        "w[10]@2": success(10),
        "w[2]@2": success(2),
        "v[0]@2": {"status": "failed", "result": None, "confidence": None, "reason": "x"},
        "w[0]@0": success("old round"),
    }
    state = {"guard": ledger}
    found = branch_envelopes(state)
    assert [(key, env.status, env.result) for key, env in found.items()] == [
        ("w[2]@2", "success", 2),
        ("w[10]@2", "success", 10),
        ("v[0]@2", "failed", None),
    ]
    assert list(branch_envelopes(state, "v")) == ["v[0]@2"]
    assert branch_envelopes(state, result_type=int)["w[2]@2"].result == 2
    assert branch_envelopes({}) == {}


# --- add_task_owner -----------------------------------------------------------------------


def test_add_task_owner_draws_edges_to_existing_nodes() -> None:
    builder = StateGraph(SequentialState)
    builder.add_node("analyst", guarded(lambda state: success(1), name="analyst"))
    builder.add_edge(START, "analyst")
    builder.add_conditional_edges("analyst", guard_route(END))

    assert add_task_owner(builder) is builder
    drawing = builder.compile().get_graph().draw_mermaid(with_styles=False)
    assert "owner -.-> analyst;" in drawing
    assert "owner -.-> __end__;" in drawing
    assert add_task_owner_in_module is add_task_owner


def test_add_task_owner_refuses_a_taken_name() -> None:
    builder = StateGraph(SequentialState)
    builder.add_node("owner", lambda state: {})
    with pytest.raises(
        ConfigurationError,
        match=re.escape(
            "Node 'owner' already exists, and the task owner is added under that name "
            "(GuardPolicy.owner_node). Rename your node, or pass GuardPolicy(owner_node=...) "
            "to name the owner differently."
        ),
    ):
        add_task_owner(builder)


def test_custom_owner_node_name(saver: BaseCheckpointSaver[Any], config: dict[str, Any]) -> None:
    calls: Counter[str] = Counter()
    researcher, analyst = incident_agents(calls)
    policy = GuardPolicy(hops=3, owner_node="lead")
    builder = sequential_graph([("researcher", researcher), ("owner", analyst)], policy=policy)

    assert "lead" in builder.nodes
    state = builder.compile(checkpointer=saver).invoke({"task": "t"}, config)
    assert read_ledger(state)["status"] == "done"


# --- configuration errors -----------------------------------------------------------------


def ok(state: Any) -> dict[str, Any]:
    return success(1)


class Plain(TypedDict, total=False):
    topic: str


class Topic(GuardedState, total=False):
    topic: str


SEQUENTIAL_ERRORS: list[tuple[Callable[[], Any], str]] = [
    (
        lambda: sequential_graph([]),
        "sequential_graph() needs at least one stage. Pass e.g. [('researcher', researcher), "
        "('analyst', analyst)].",
    ),
    (
        lambda: sequential_graph([("a", ok), ("a", ok)]),
        "Stage with name 'a' already exists. Stage names must be unique.",
    ),
    (
        lambda: sequential_graph([("owner", ok)]),
        "Stage name 'owner' is the task owner's node name (GuardPolicy.owner_node). Rename "
        "the stage, or pass GuardPolicy(owner_node=...) to name the owner differently.",
    ),
    (
        lambda: sequential_graph([(END, ok)]),
        "Stage name '__end__' is reserved by LangGraph for the graph's entry and exit. "
        "Rename the stage.",
    ),
    (
        lambda: sequential_graph([("web:search", ok)]),
        "Stage name 'web:search' contains ':', which LangGraph reserves for subgraph "
        "namespaces. Rename the stage, e.g. 'web_search'.",
    ),
    (
        lambda: sequential_graph([("a|b", ok)]),
        "Stage name 'a|b' contains '|', which LangGraph reserves for subgraph namespaces. "
        "Rename the stage, e.g. 'a_b'.",
    ),
    (
        lambda: sequential_graph([("a", "ok")]),
        "Stage 'a' must be a callable or a Runnable, got str. Pass a function (state) -> "
        "envelope, or a compiled graph.",
    ),
    (
        lambda: sequential_graph([("", ok)]),
        "Stage names must be non-empty strings, got ''. Name each stage after its role, "
        "e.g. 'researcher'.",
    ),
    (
        lambda: sequential_graph([ok]),  # type: ignore[list-item]
        "sequential_graph() takes each stage as a (name, agent) pair, got function. Pass "
        "e.g. [('researcher', researcher), ('analyst', analyst)].",
    ),
    (
        lambda: sequential_graph(ok),  # type: ignore[arg-type]
        "sequential_graph() takes its stages as a dict of name -> agent or a list of (name, "
        "agent) pairs, got function.",
    ),
    (
        lambda: sequential_graph([("a", ok)], on_incomplete="owner"),  # type: ignore[arg-type]
        "sequential_graph(on_incomplete='owner') is not an option. Pass one of 'previous', "
        "'end', 'next'.",
    ),
    (
        lambda: sequential_graph([("a", ok)], result_type={"b": int, "c": str}),
        "result_type names 'b', 'c', which are not stages. Use the stage names: 'a'.",
    ),
    (
        lambda: sequential_graph([("a", ok)], state_schema=Plain),
        "sequential_graph(state_schema=Plain) lacks GuardedState's 'guard' key. Declare it "
        "as class Plain(GuardedState, total=False): ... (from sanegraph.guards import "
        "GuardedState).",
    ),
    (
        lambda: sequential_graph([("a", ok)], state_schema=42),  # type: ignore[arg-type]
        "sequential_graph(state_schema=...) must be a TypedDict class, got 42",
    ),
]


class Redeclared(GuardedState, total=False):
    guard: dict[str, Any]  # type: ignore[misc]


PARALLEL_ERRORS: list[tuple[Callable[[], Any], str]] = [
    (
        lambda: parallel_graph({}, ok),
        "parallel_graph() needs at least one worker. Pass e.g. {'researcher': researcher, "
        "'writer': writer}.",
    ),
    (
        lambda: parallel_graph([("w", ok), ("w", ok)], ok),
        "Worker with name 'w' already exists. Worker names must be unique.",
    ),
    (
        lambda: parallel_graph({"aggregate": ok}, ok),
        "The aggregate's name 'aggregate' is also a worker's name. Node names must be "
        "unique: rename the worker, or name the aggregate, e.g. parallel_graph(workers, "
        "('combine', combine)).",
    ),
    (
        lambda: parallel_graph({"w": ok}, None),
        "Aggregate 'aggregate' must be a callable or a Runnable, got NoneType.",
    ),
    (
        lambda: parallel_graph({"w": ok}, ("owner", ok)),
        "Aggregate name 'owner' is the task owner's node name (GuardPolicy.owner_node).",
    ),
    (
        lambda: parallel_graph({"w": ok}, ok, tasks_key="jobs"),
        "parallel_graph(tasks_key='jobs') is not a key of ParallelState. Add `jobs: "
        "list[Any]` to ParallelState, or pass the key that holds the tasks.",
    ),
    (
        lambda: parallel_graph({"w": ok}, ok, state_schema=Redeclared),
        "parallel_graph(state_schema=Redeclared) redeclares 'guard' without "
        "GuardedState's reducer (fold_ledger). Remove 'guard' from Redeclared and "
        "inherit it from GuardedState.",
    ),
    (
        lambda: parallel_graph({"w": ok}, ok, state_schema=Topic),
        "parallel_graph(tasks_key='tasks') is not a key of Topic.",
    ),
    (
        lambda: parallel_graph({"w": ok}, ok, on_incomplete="previous"),  # type: ignore[arg-type]
        "parallel_graph(on_incomplete='previous') is not an option. Pass one of 'end', 'again'.",
    ),
    (
        lambda: parallel_graph({"w": ok}, ok, result_type={"combine": int}),
        "result_type names 'combine', which is not a node. Use the node names: 'w', 'aggregate'.",
    ),
]


@pytest.mark.parametrize(("build", "message"), SEQUENTIAL_ERRORS + PARALLEL_ERRORS)
def test_configuration_errors(build: Callable[[], Any], message: str) -> None:
    with pytest.raises(ConfigurationError, match=re.escape(message)):
        build()


# --- structure ----------------------------------------------------------------------------


def test_sequential_mermaid(snapshot: SnapshotAssertion) -> None:
    builder = sequential_graph([("researcher", ok), ("analyst", ok), ("writer", ok)])
    assert builder.compile().get_graph().draw_mermaid(with_styles=False) == snapshot


def test_parallel_mermaid(snapshot: SnapshotAssertion) -> None:
    builder = parallel_graph({"web": ok, "docs": ok}, ok)
    assert builder.compile().get_graph().draw_mermaid(with_styles=False) == snapshot


def test_parallel_again_mermaid(snapshot: SnapshotAssertion) -> None:
    builder = parallel_graph({"researcher": ok}, ("analyst", ok), on_incomplete="again")
    assert builder.compile().get_graph().draw_mermaid(with_styles=False) == snapshot
