"""Rollback to the last sane checkpoint: the pointer, the fork, the resume, the errors."""

from __future__ import annotations

import asyncio
import operator
import re
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Literal, TypedDict

import pytest
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import BaseCheckpointSaver, CheckpointTuple
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.checkpoint.sqlite import SqliteSaver
from langgraph.graph import END, START, StateGraph
from langgraph.types import Command, PregelTask, Send, StateSnapshot, StateUpdate, interrupt

from sanegraph.checkpoints import (
    NoSaneCheckpoint,
    RollbackError,
    UnknownThread,
    alast_sane_checkpoint,
    arollback,
    async_sqlite_saver,
    last_sane_checkpoint,
    rollback,
    sqlite_saver,
)
from sanegraph.checkpoints._rollback_core import (
    WALK,
    Grants,
    check_grants,
    fork_ledger,
    fork_writes,
    producer_step,
    resume_config,
    sane_id,
)
from sanegraph.guards import (
    ConfigurationError,
    GuardedState,
    GuardedStateGraph,
    GuardPolicy,
    envelopes_of,
    guard_route,
    guard_sends,
    guarded,
    is_tripped,
    read_ledger,
    task_owner,
)
from sanegraph.guards._compat import PULL
from sanegraph.guards.ledger import new_ledger
from sanegraph.guards.testing import (
    ScriptedChatModel,
    async_scripted_agent,
    envelope_message,
    scripted_agent,
)


class State(GuardedState, total=False):
    topic: str


class Team:
    """A researcher -> analyst -> writer graph whose analyst first answers plain text."""

    def __init__(self, *, owner: str = "partial", is_async: bool = False) -> None:
        self.researcher = ScriptedChatModel(
            [envelope_message("success", {"sources": ["tide tables"]}, confidence=0.9)]
        )
        self.analyst = ScriptedChatModel(
            [
                "Here is my analysis, in prose.",
                envelope_message("success", "spring tides peak twice a month", confidence=0.8),
            ]
        )
        self.writer = ScriptedChatModel([envelope_message("success", "report", confidence=0.9)])
        policy = GuardPolicy(hops=10, owner=owner)
        make = async_scripted_agent if is_async else scripted_agent
        builder = GuardedStateGraph(State)
        builder.add_node("researcher", guarded(make(self.researcher, name="researcher"), policy))
        builder.add_node("analyst", guarded(make(self.analyst, name="analyst"), policy))
        builder.add_node("writer", guarded(make(self.writer, name="writer"), policy))
        builder.add_node("owner", task_owner(policy), destinations=(END,))
        builder.add_edge(START, "researcher")
        builder.add_conditional_edges("researcher", guard_route("analyst"))
        builder.add_conditional_edges("analyst", guard_route("writer"))
        builder.add_conditional_edges("writer", guard_route(END))
        self.builder = builder

    def asked(self, model: ScriptedChatModel) -> list[str]:
        """The human message of each call: the topic the agent was given."""
        return [str(call[-1].content) for call in model.calls]


CONFIG: RunnableConfig = {"configurable": {"thread_id": "t1"}}


def _id(config: RunnableConfig) -> str:
    return str(config["configurable"]["checkpoint_id"])


# -- unit tier: the core's decisions on hand-built snapshots ----------------------------


def _snapshot(
    checkpoint_id: str,
    *,
    ledger: dict[str, Any] | None = None,
    next: tuple[str, ...] = (),
    source: str = "loop",
    tasks: tuple[PregelTask, ...] = (),
) -> StateSnapshot:
    values = {"guard": {**new_ledger(), **(ledger or {})}}
    config: RunnableConfig = {"configurable": {"thread_id": "t1", "checkpoint_id": checkpoint_id}}
    parent: RunnableConfig = {"configurable": {"thread_id": "t1", "checkpoint_id": "parent"}}
    return StateSnapshot(values, next, config, {"source": source}, None, parent, tasks, ())  # type: ignore[arg-type]


def _pulled(name: str) -> PregelTask:
    return PregelTask(id=name, name=name, path=(PULL, name))


def test_the_sane_checkpoint_is_the_newest_one_while_a_sane_run_waits() -> None:
    paused = _snapshot("c5", ledger={"hops": 2, "last_sane": "c3"}, next=("analyst",))
    tripped = paused._replace(values={"guard": {**paused.values["guard"], "status": "tripped"}})
    finished = paused._replace(next=())

    assert sane_id(paused, "t1") == "c5"
    assert sane_id(tripped, "t1") == sane_id(finished, "t1") == "c3"
    with pytest.raises(NoSaneCheckpoint, match=re.escape("(hops=0, status='tripped')")):
        sane_id(_snapshot("c1", ledger={"status": "tripped"}), "t1")


def test_the_producers_are_read_from_the_parents_tasks() -> None:
    parent = _snapshot("c1", tasks=(_pulled("P1"), _pulled("P2"), _pulled("P1")))
    fork = _snapshot("c3", source="update", ledger={"rollbacks": 1})

    assert producer_step(_snapshot("c2"), parent) == ("P1", "P2")
    assert producer_step(fork, parent) is WALK  # a rollback fork: ask its parent
    assert producer_step(_snapshot("c2", source="input"), parent) is None


def test_the_fork_writes_replay_a_command_goto_and_every_parallel_producer() -> None:
    builder = StateGraph(Flow)
    for name in ("A", "B", "C", "J"):
        builder.add_node(name, lambda state: {})
    builder.add_edge("A", "B")
    builder.add_edge("B", "J")
    builder.add_edge("C", "J")
    after_a = _snapshot("c2", next=("B", "C"), tasks=(_pulled("B"), _pulled("C")))
    after_bc = _snapshot("c3", next=("J",), tasks=(_pulled("J"),))
    values = {"topic": "y"}

    # A reached B by its edge and C by Command(goto="C"): only the goto is replayed.
    (write,) = fork_writes(after_a, ("A",), values=values, builder=builder)
    assert write.as_node == "A" and write.values == Command(update=values, goto=["C"])
    assert fork_writes(after_bc, ("B", "C"), values=values, builder=builder) == [
        StateUpdate(values, "B"),
        StateUpdate(None, "C"),
    ]
    assert fork_writes(after_a, None, values=values, builder=builder) == [StateUpdate(values, None)]


def test_the_fork_ledger_resets_the_window_and_adds_the_grants() -> None:
    target = _snapshot("c2", ledger={"window": [["a", "x"]], "status": "tripped", "hops": 4})
    latest = _snapshot("c9", ledger={"rollbacks": 2})

    ledger = fork_ledger(target, latest, grants=Grants(hops=3))

    assert (ledger["window"], ledger["status"], ledger["hops"]) == ([], "running", 4)
    assert (ledger["rollbacks"], ledger["grants"]) == (3, {"hops": 3})


def test_the_fork_keeps_what_the_thread_paid_and_adds_money_grants() -> None:
    # Money paid is a fact: the fork carries the newest spend, not the sane checkpoint's.
    target = _snapshot(
        "c2", ledger={"spent": {"usd_micros": 100}, "spent_by_agent": {"a": {"usd_micros": 100}}}
    )
    latest = _snapshot(
        "c9",
        ledger={
            "spent": {"usd_micros": 900, "input_tokens": 50},
            "spent_by_agent": {"a": {"usd_micros": 400}, "b": {"usd_micros": 500}},
            "warned": ["usd"],
        },
    )

    ledger = fork_ledger(target, latest, grants=Grants(usd=2.5, tokens=1000))

    assert ledger["spent"] == {"usd_micros": 900, "input_tokens": 50}
    assert ledger["spent_by_agent"] == {"a": {"usd_micros": 400}, "b": {"usd_micros": 500}}
    assert ledger["warned"] == ["usd"]
    assert ledger["grants"] == {"usd": 2.5, "tokens": 1000}


@pytest.mark.parametrize(
    ("grant", "message"),
    [
        ({"extra_usd": -1}, "rollback(extra_usd=...) must be a number >= 0, got -1."),
        ({"extra_tokens": 1.5}, "rollback(extra_tokens=...) must be a whole number >= 0, got 1.5."),
    ],
)
def test_bad_money_grants_say_what_to_pass(grant: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError, match=re.escape(message)):
        check_grants(
            Grants(**{k.removeprefix("extra_"): v for k, v in grant.items()}), fn="rollback"
        )


def test_the_resume_config_points_at_the_fork_and_drops_the_checkpoint_map() -> None:
    caller: RunnableConfig = {
        "recursion_limit": 50,
        "configurable": {"thread_id": "t1", "checkpoint_map": {"": "old"}, "user": "u"},
    }
    written: RunnableConfig = {"configurable": {"checkpoint_id": "fork"}}

    assert resume_config(caller, written, thread_id="t1") == {
        "recursion_limit": 50,
        "configurable": {
            "thread_id": "t1",
            "user": "u",
            "checkpoint_ns": "",
            "checkpoint_id": "fork",
        },
    }


# -- the scenario, on every checkpointer, sync and async --------------------------------


def test_rollback_reruns_the_analyst_from_the_last_sane_checkpoint(
    saver: BaseCheckpointSaver[Any],
) -> None:
    team = Team()
    graph = team.builder.compile(checkpointer=saver)

    failed = graph.invoke({"topic": "tides"}, CONFIG)
    assert read_ledger(failed)["status"] == "done"
    assert [t["kind"] for t in read_ledger(failed)["trips"]] == ["invalid_envelope"]
    sane = graph.get_state(
        {"configurable": {"thread_id": "t1", "checkpoint_id": last_sane_checkpoint(graph, CONFIG)}}
    )
    assert sane.next == ("analyst",)
    assert read_ledger(sane.values)["by_agent"] == {"researcher": 1}

    resume = rollback(graph, CONFIG, patch={"topic": "spring tides"})

    fork = graph.get_state(resume)
    assert fork.next == ("analyst",)
    assert fork.metadata is not None and fork.metadata["source"] == "update"
    assert fork.parent_config is not None and _id(fork.parent_config) == _id(sane.config)
    ledger = read_ledger(fork.values)
    assert (ledger["window"], ledger["rollbacks"], ledger["status"], ledger["outcome"]) == (
        [],
        1,
        "running",
        None,
    )
    assert read_ledger(sane.values)["window"] != []
    assert fork.values["topic"] == "spring tides"

    done = graph.invoke(None, resume)

    ledger = read_ledger(done)
    assert (ledger["status"], ledger["hops"], ledger["rollbacks"]) == ("running", 3, 1)
    assert ledger["by_agent"] == {"researcher": 1, "analyst": 1, "writer": 1}
    assert ledger["trips"] == []
    assert envelopes_of(done)["analyst"]["result"] == "spring tides peak twice a month"
    assert envelopes_of(done)["writer"]["status"] == "success"
    # The researcher did not run again; the analyst did, on the patched topic.
    assert team.asked(team.researcher) == ["tides"]
    assert team.asked(team.analyst) == ["tides", "spring tides"]
    assert team.writer.call_count == 1
    # The abandoned branch is still in the history.
    history = list(graph.get_state_history(CONFIG))
    assert [s.next for s in history if read_ledger(s.values)["status"] == "done"] == [()]
    assert sum(1 for s in history if s.next == ("owner",)) == 1
    assert [s.metadata["source"] for s in history if s.metadata].count("update") == 1


async def test_arollback_reruns_the_analyst_from_the_last_sane_checkpoint(
    async_saver: BaseCheckpointSaver[Any],
) -> None:
    team = Team(is_async=True)
    graph = team.builder.compile(checkpointer=async_saver)

    failed = await graph.ainvoke({"topic": "tides"}, CONFIG)
    assert read_ledger(failed)["status"] == "done"
    sane_id = await alast_sane_checkpoint(graph, CONFIG)

    resume = await arollback(graph, CONFIG, patch={"topic": "spring tides"})

    fork = await graph.aget_state(resume)
    assert fork.next == ("analyst",)
    assert fork.parent_config is not None and _id(fork.parent_config) == sane_id
    assert read_ledger(fork.values)["window"] == []
    done = await graph.ainvoke(None, resume)
    ledger = read_ledger(done)
    assert (ledger["status"], ledger["hops"], ledger["rollbacks"]) == ("running", 3, 1)
    assert ledger["by_agent"] == {"researcher": 1, "analyst": 1, "writer": 1}
    assert team.asked(team.analyst) == ["tides", "spring tides"]
    assert team.researcher.call_count == 1
    history = [s async for s in graph.aget_state_history(CONFIG)]
    assert sum(1 for s in history if read_ledger(s.values)["status"] == "done") == 1


def test_rollback_while_an_escalation_waits_for_a_human(saver: BaseCheckpointSaver[Any]) -> None:
    team = Team(owner="escalate")
    graph = team.builder.compile(checkpointer=saver)
    paused = graph.invoke({"topic": "tides"}, CONFIG)
    assert paused["__interrupt__"][0].value["kind"] == "invalid_envelope"

    done = graph.invoke(None, rollback(graph, CONFIG, patch={"topic": "neap tides"}))

    assert read_ledger(done)["status"] == "running"
    assert "__interrupt__" not in done
    assert team.asked(team.analyst) == ["tides", "neap tides"]
    assert graph.get_state(CONFIG).next == ()


def test_rollback_without_patch_keeps_the_state(saver: BaseCheckpointSaver[Any]) -> None:
    graph = Team().builder.compile(checkpointer=saver)
    graph.invoke({"topic": "tides"}, CONFIG)

    fork = graph.get_state(rollback(graph, CONFIG))

    assert fork.values["topic"] == "tides"
    assert envelopes_of(fork.values).keys() == {"researcher"}


# -- which checkpoint is the last sane one ----------------------------------------------


class Loop(GuardedState, total=False):
    n: int
    stop: int
    ask_at: int


def _step(state: Loop) -> dict[str, Any]:
    n = state.get("n", 0) + 1
    if n == state.get("ask_at"):
        interrupt("go on?")
    return {"envelope": {"status": "success", "result": n}, "n": n}


def _again(state: Loop) -> Literal["step", "__end__"]:
    return "step" if state["n"] < state["stop"] else END


def _loop(n: int, *, checkpointer: BaseCheckpointSaver[Any]) -> Any:
    policy = GuardPolicy(hops=n + 5)
    builder = GuardedStateGraph(Loop)
    builder.add_node("step", guarded(_step, policy))
    builder.add_node("owner", task_owner(policy), destinations=(END,))
    builder.add_edge(START, "step")
    builder.add_conditional_edges("step", guard_route(_again))
    return builder.compile(checkpointer=checkpointer)


def test_a_finished_run_rolls_back_to_before_its_last_guarded_step() -> None:
    graph = _loop(3, checkpointer=InMemorySaver())
    graph.invoke({"n": 0, "stop": 3}, CONFIG)

    sane = graph.get_state(
        {"configurable": {"thread_id": "t1", "checkpoint_id": last_sane_checkpoint(graph, CONFIG)}}
    )

    assert (sane.next, sane.values["n"]) == (("step",), 2)
    done = graph.invoke(None, rollback(graph, CONFIG, patch={"stop": 4}))
    assert (done["n"], read_ledger(done)["hops"]) == (4, 4)


def test_a_run_paused_in_a_sane_state_rolls_back_to_where_it_stands() -> None:
    graph = _loop(5, checkpointer=InMemorySaver())
    graph.invoke({"n": 0, "stop": 5, "ask_at": 3}, CONFIG)
    latest = graph.get_state(CONFIG)
    assert (latest.next, latest.values["n"]) == (("step",), 2)

    assert last_sane_checkpoint(graph, CONFIG) == _id(latest.config)
    resume = rollback(graph, CONFIG, patch={"ask_at": 0})
    done = graph.invoke(None, resume)

    assert (done["n"], read_ledger(done)["hops"], read_ledger(done)["rollbacks"]) == (5, 5, 1)


def test_rolling_back_twice_stacks_the_forks() -> None:
    graph = Team().builder.compile(checkpointer=InMemorySaver())
    graph.invoke({"topic": "tides"}, CONFIG)

    first = rollback(graph, CONFIG, patch={"topic": "neap tides"})
    second = rollback(graph, CONFIG, patch={"topic": "spring tides"})

    fork = graph.get_state(second)
    assert fork.parent_config is not None and _id(fork.parent_config) == _id(first)
    assert (fork.next, fork.values["topic"]) == (("analyst",), "spring tides")
    assert read_ledger(fork.values)["rollbacks"] == 2


def test_rolling_back_a_rolled_back_run_again() -> None:
    team = Team()
    team.analyst = ScriptedChatModel(["prose", "more prose", envelope_message("success", "ok")])
    builder = GuardedStateGraph(State)
    policy = GuardPolicy(hops=10)
    for name, model in (("researcher", team.researcher), ("analyst", team.analyst)):
        builder.add_node(name, guarded(scripted_agent(model, name=name), policy))
    builder.add_node("owner", task_owner(policy), destinations=(END,))
    builder.add_edge(START, "researcher")
    builder.add_conditional_edges("researcher", guard_route("analyst"))
    builder.add_conditional_edges("analyst", guard_route(END))
    graph = builder.compile(checkpointer=InMemorySaver())
    graph.invoke({"topic": "tides"}, CONFIG)

    again = graph.invoke(None, rollback(graph, CONFIG, patch={"topic": "neap tides"}))
    assert read_ledger(again)["status"] == "done"
    done = graph.invoke(None, rollback(graph, CONFIG, patch={"topic": "spring tides"}))

    assert read_ledger(done)["status"] == "running"
    assert read_ledger(done)["rollbacks"] == 2
    assert team.asked(team.analyst) == ["tides", "neap tides", "spring tides"]
    assert team.researcher.call_count == 1


# -- the fork keeps the sane checkpoint's next nodes ------------------------------------


class Flow(GuardedState, total=False):
    topic: str
    task: str
    log: Annotated[list[str], operator.add]


def _worker(name: str, fail: set[str]) -> Any:
    def agent(state: Flow) -> dict[str, Any]:
        if name in fail:
            fail.discard(name)
            return {"log": [f"{name}!"]}
        label = f"{name}:{state.get('task') or state.get('topic')}"
        return {"envelope": {"status": "success", "result": label}, "log": [label]}

    agent.__name__ = name
    return agent


def _flow(builder: StateGraph[Any, Any, Any, Any]) -> Any:
    builder.add_node("owner", task_owner(GuardPolicy()), destinations=(END,))
    return builder.compile(checkpointer=InMemorySaver())


def test_a_command_handoff_is_replayed_in_the_fork() -> None:
    fail = {"B"}

    def a(state: Flow) -> Command[Literal["B"]]:
        return Command(goto="B", update={"envelope": {"status": "success"}, "log": ["A"]})

    builder = GuardedStateGraph(Flow)
    builder.add_node("A", guarded(a), destinations=("B",))
    builder.add_node("B", guarded(_worker("B", fail)))
    builder.add_edge(START, "A")
    builder.add_conditional_edges("B", guard_route(END))
    graph = _flow(builder)
    graph.invoke({"topic": "x"}, CONFIG)

    resume = rollback(graph, CONFIG, patch={"topic": "y"})

    assert graph.get_state(resume).next == ("B",)
    assert graph.invoke(None, resume)["log"] == ["A", "B:y"]


def test_parallel_producers_are_all_replayed() -> None:
    fail = {"J"}
    builder = GuardedStateGraph(Flow)
    for name in ("P1", "P2", "J"):
        builder.add_node(name, guarded(_worker(name, fail)))
    builder.add_edge(START, "P1")
    builder.add_edge(START, "P2")
    builder.add_edge(["P1", "P2"], "J")
    builder.add_conditional_edges("J", guard_route(END))
    graph = _flow(builder)
    graph.invoke({"topic": "x"}, CONFIG)

    resume = rollback(graph, CONFIG, patch={"topic": "y"})

    assert graph.get_state(resume).next == ("J",)
    done = graph.invoke(None, resume)
    assert done["log"] == ["P1:x", "P2:x", "J:y"]
    assert read_ledger(done)["hops"] == 3


def fan_out(state: Flow) -> Any:
    """Two worker branches on the topic (or the owner, once tripped)."""
    if is_tripped(state):
        return "owner"
    return guard_sends(state, [Send("worker", {"task": f"{state['topic']}{i}"}) for i in (1, 2)])


def test_after_a_send_fan_in_the_fork_goes_to_the_aggregator() -> None:
    fail = {"agg"}

    builder = GuardedStateGraph(Flow)
    builder.add_node("plan", guarded(_worker("plan", fail)))
    builder.add_node("worker", guarded(_worker("worker", fail)))
    builder.add_node("agg", guarded(_worker("agg", fail)))
    builder.add_edge(START, "plan")
    builder.add_conditional_edges("plan", fan_out, ["worker", "owner"])
    builder.add_edge("worker", "agg")
    builder.add_conditional_edges("agg", guard_route(END))
    graph = _flow(builder)
    graph.invoke({"topic": "x"}, CONFIG)

    resume = rollback(graph, CONFIG, patch={"topic": "y"})

    assert graph.get_state(resume).next == ("agg",)
    assert graph.invoke(None, resume)["log"] == ["plan:x", "worker:x1", "worker:x2", "agg:y"]


def test_rolling_back_to_a_fan_out_sends_again_from_the_patched_state() -> None:
    fail = {"worker"}

    builder = GuardedStateGraph(Flow)
    builder.add_node("plan", guarded(_worker("plan", fail)))
    builder.add_node("worker", guarded(_worker("worker", fail)))
    builder.add_edge(START, "plan")
    builder.add_conditional_edges("plan", fan_out, ["worker", "owner"])
    builder.add_conditional_edges("worker", guard_route(END))
    graph = _flow(builder)
    graph.invoke({"topic": "x"}, CONFIG)

    resume = rollback(graph, CONFIG, patch={"topic": "y"})

    assert graph.get_state(resume).next == ("worker", "worker")
    done = graph.invoke(None, resume)
    assert done["log"] == ["plan:x", "worker:y1", "worker:y2"]
    assert read_ledger(done)["hops"] == 3


def test_a_re_invoked_thread_rolls_back_within_its_newest_run() -> None:
    fail: set[str] = set()
    builder = GuardedStateGraph(Flow)
    builder.add_node("R", guarded(_worker("R", fail)))
    builder.add_edge(START, "R")
    builder.add_conditional_edges("R", guard_route(END))
    graph = _flow(builder)
    graph.invoke({"topic": "x"}, CONFIG)
    fail.add("R")
    graph.invoke({"topic": "x2"}, CONFIG)

    resume = rollback(graph, CONFIG, patch={"topic": "y"})

    assert graph.get_state(resume).next == ("R",)
    done = graph.invoke(None, resume)
    assert done["log"] == ["R:x", "R:y"]
    assert read_ledger(done)["hops"] == 2


def test_a_config_taken_inside_a_node_resumes_from_the_fork() -> None:
    # A node's config carries LangGraph's checkpoint_map, which would resume the run from
    # the checkpoint it names instead of the fork.
    team = Team()
    graph = team.builder.compile(checkpointer=InMemorySaver())
    graph.invoke({"topic": "tides"}, CONFIG)
    first = next(s for s in graph.get_state_history(CONFIG) if s.next == ("researcher",))
    from_node: RunnableConfig = {
        "configurable": {"thread_id": "t1", "checkpoint_map": {"": _id(first.config)}}
    }

    graph.invoke(None, rollback(graph, from_node, patch={"topic": "spring tides"}))

    assert team.asked(team.researcher) == ["tides"]
    assert team.asked(team.analyst) == ["tides", "spring tides"]


# -- O(1) in history length -------------------------------------------------------------


class CountingSaver(SqliteSaver):
    """The real SqliteSaver, counting the reads rollback makes."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        super().__init__(conn)
        self.reads: dict[str, int] = {"get_tuple": 0, "list": 0}

    def get_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        self.reads["get_tuple"] += 1
        return super().get_tuple(config)

    def list(self, *args: Any, **kwargs: Any) -> Iterator[CheckpointTuple]:
        self.reads["list"] += 1
        return super().list(*args, **kwargs)


def test_rollback_reads_a_constant_number_of_checkpoints() -> None:
    reads = {}
    for steps in (10, 200):
        saver = CountingSaver(sqlite3.connect(":memory:", check_same_thread=False))
        graph = _loop(steps, checkpointer=saver)
        graph.invoke({"n": 0, "stop": steps}, CONFIG)
        saver.reads = {"get_tuple": 0, "list": 0}
        last_sane_checkpoint(graph, CONFIG)
        assert saver.reads == {"get_tuple": 1, "list": 0}

        resume = rollback(graph, CONFIG, patch={"stop": steps + 1})

        reads[steps] = dict(saver.reads)
        assert graph.invoke(None, resume)["n"] == steps + 1
    assert reads[10] == reads[200]
    assert reads[200]["list"] == 0
    assert reads[200]["get_tuple"] <= 8


# -- errors -----------------------------------------------------------------------------


def test_a_graph_without_checkpointer_cannot_roll_back() -> None:
    graph = Team().builder.compile()

    with pytest.raises(
        ConfigurationError,
        match=re.escape(
            "rollback() needs a graph compiled with a checkpointer, got checkpointer=None. "
            "Compile it with builder.compile(checkpointer=saver), e.g. a saver from "
            "sanegraph.checkpoints.sqlite_saver(path)."
        ),
    ):
        rollback(graph, CONFIG)


def test_a_graph_without_ledger_cannot_roll_back() -> None:
    class Unguarded(TypedDict, total=False):
        topic: str

    builder = StateGraph(Unguarded)
    builder.add_node("echo", lambda state: {"topic": state["topic"]})
    builder.add_edge(START, "echo")
    graph = builder.compile(checkpointer=InMemorySaver())

    with pytest.raises(
        ConfigurationError,
        match=re.escape(
            "last_sane_checkpoint() needs a guarded graph: its state has no 'guard' channel. "
            "Add GuardedState to the state schema and wrap agents with guarded(...)."
        ),
    ):
        last_sane_checkpoint(graph, CONFIG)


def test_an_unknown_thread_cannot_roll_back(saver: BaseCheckpointSaver[Any]) -> None:
    graph = Team().builder.compile(checkpointer=saver)

    with pytest.raises(
        UnknownThread,
        match=re.escape(
            "Thread 'nope' has no checkpoint in the graph's checkpointer. Check the "
            "thread_id, and that the graph was compiled with the checkpointer (and database "
            "file) the run used."
        ),
    ) as caught:
        rollback(graph, {"configurable": {"thread_id": "nope"}})
    assert caught.value.thread_id == "nope"
    assert isinstance(caught.value, LookupError)


def test_a_thread_whose_first_step_failed_has_no_sane_checkpoint(
    saver: BaseCheckpointSaver[Any],
) -> None:
    team = Team()
    team.researcher = ScriptedChatModel(["no envelope here"])
    graph = GuardedStateGraph(State)
    policy = GuardPolicy()
    graph.add_node("researcher", guarded(scripted_agent(team.researcher), policy))
    graph.add_node("owner", task_owner(policy), destinations=(END,))
    graph.add_edge(START, "researcher")
    graph.add_conditional_edges("researcher", guard_route(END))
    compiled = graph.compile(checkpointer=saver)
    compiled.invoke({"topic": "tides"}, CONFIG)

    with pytest.raises(
        NoSaneCheckpoint,
        match=re.escape(
            "Thread 't1' has no sane checkpoint: no guarded step has passed every guard "
            "yet (hops=1, status='done'). Start the thread again with new input, or a new "
            "thread."
        ),
    ):
        rollback(compiled, CONFIG, patch={"topic": "x"})
    assert issubclass(NoSaneCheckpoint, RollbackError)
    # Nothing was written.
    assert len(list(compiled.get_state_history(CONFIG))) == 4


def test_config_must_name_a_thread() -> None:
    graph = Team().builder.compile(checkpointer=InMemorySaver())

    with pytest.raises(
        ConfigurationError,
        match=re.escape(
            "rollback() needs the thread to roll back: pass "
            "config={'configurable': {'thread_id': ...}}."
        ),
    ):
        rollback(graph, {})


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        (
            {"guard": {}},
            "rollback(patch=...) must not contain 'guard': rollback() writes the ledger "
            "itself (the sane checkpoint's, with the loop window reset).",
        ),
        (
            {"topik": "x"},
            "rollback(patch=...) has keys that are not in the graph's state: 'topik'. "
            "State keys: guard, topic.",
        ),
        (
            [("topic", "x")],
            "rollback(patch=...) takes a mapping of state keys to new values, got list. "
            "Pass e.g. patch={'topic': 'narrower'}.",
        ),
    ],
)
def test_a_bad_patch_is_refused_before_anything_is_written(patch: Any, message: str) -> None:
    graph = Team().builder.compile(checkpointer=InMemorySaver())
    graph.invoke({"topic": "tides"}, CONFIG)
    before = len(list(graph.get_state_history(CONFIG)))

    with pytest.raises(ConfigurationError, match=re.escape(message)):
        rollback(graph, CONFIG, patch=patch)
    assert len(list(graph.get_state_history(CONFIG))) == before


async def test_arollback_with_a_sync_sqlite_saver_names_rollback(tmp_path: Path) -> None:
    with sqlite_saver(tmp_path / "c.sqlite") as saver:
        graph = Team().builder.compile(checkpointer=saver)
        graph.invoke({"topic": "tides"}, CONFIG)

        with pytest.raises(
            ConfigurationError,
            match=re.escape(
                "arollback() needs a checkpointer with async methods, and SqliteSaver has "
                "none: call rollback(graph, config), or open the file with "
                "async_sqlite_saver(path)."
            ),
        ):
            await arollback(graph, CONFIG)


async def test_rollback_in_the_event_loop_with_an_async_saver_names_arollback(
    tmp_path: Path,
) -> None:
    async with async_sqlite_saver(tmp_path / "c.sqlite") as saver:
        graph = Team(is_async=True).builder.compile(checkpointer=saver)
        await graph.ainvoke({"topic": "tides"}, CONFIG)

        with pytest.raises(
            ConfigurationError,
            match=re.escape(
                "rollback() is sync, but the graph's checkpointer (AsyncSqliteSaver) is "
                "async: use `await arollback(graph, config)` in the event loop that opened it."
            ),
        ):
            rollback(graph, CONFIG)
        # From another thread, while the loop runs, the sync call is fine.
        resume = await asyncio.to_thread(rollback, graph, CONFIG)
        assert (await graph.aget_state(resume)).next == ("analyst",)
