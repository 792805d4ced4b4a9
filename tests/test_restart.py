"""HopCap counts live in the checkpointed ledger: they survive interrupt/resume, re-invoke
and a process restart, and they are global across subgraphs that share the ledger."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Literal

import pytest
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.graph import END, START
from langgraph.types import Command, Send, interrupt

from sanegraph.guards import (
    GuardedState,
    GuardedStateGraph,
    GuardPolicy,
    HopCap,
    guard_route,
    guard_sends,
    guarded,
    read_ledger,
    task_owner,
)

WORKER = Path(__file__).with_name("_restart_worker.py")
CONFIG: RunnableConfig = {"configurable": {"thread_id": "t1"}}


def _worker(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(WORKER), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ),
    )


# -- a process restart ------------------------------------------------------------------


def test_the_hop_cap_holds_across_a_process_restart(tmp_path: Path) -> None:
    db = str(tmp_path / "runs" / "checkpoints.sqlite")

    first = _worker("start", db, "t1")

    assert first.returncode == 0, first.stderr
    paused = json.loads(first.stdout)
    # The agent asked a human at its 4th hop; the process then died without cleanup.
    assert (paused["next"], paused["hops"], paused["status"]) == (["agent"], 3, "running")
    assert paused["interrupts"] == [{"question": "Which source next?", "hop": 4}]

    second = _worker("resume", db, "t1")

    assert second.returncode == 0, second.stderr
    out = json.loads(second.stdout)
    assert out["before"]["hops"] == 3  # the new process read the count from the file
    after = out["after"]
    # 3 hops in the first process + 5 in the second = max_hops=8; the 9th tripped.
    assert (after["hops"], after["by_agent"], after["status"]) == (8, {"agent": 8}, "done")
    assert after["trips"] == [["hop_cap", 8, 9]]
    assert after["notes"] == [
        "note 1",
        "note 2",
        "note 3",
        "the tide tables",
        *(f"note {n}" for n in range(4, 9)),
    ]


# -- interrupt / resume and re-invoke in one process ------------------------------------


class Loop(GuardedState, total=False):
    todo: int
    done: int
    ask_at: int
    answers: list[str]


CALLS: list[int] = []


def _agent(state: Loop) -> dict[str, Any]:
    hop = read_ledger(state)["hops"] + 1
    answers = list(state.get("answers") or [])
    if hop == state.get("ask_at"):
        answers.append(str(interrupt({"hop": hop})))
    CALLS.append(hop)
    return {
        "envelope": {"status": "success", "result": hop},
        "done": state.get("done", 0) + 1,
        "answers": answers,
    }


async def _aagent(state: Loop) -> dict[str, Any]:
    return _agent(state)


def _more(state: Loop) -> Literal["agent", "__end__"]:
    return "agent" if state.get("done", 0) < state.get("todo", 0) else END


def _loop_graph(checkpointer: BaseCheckpointSaver[Any], *, is_async: bool = False) -> Any:
    CALLS.clear()
    policy = GuardPolicy(hops=HopCap(max_hops=8), owner="partial")
    builder = GuardedStateGraph(Loop)
    builder.add_node("agent", guarded(_aagent if is_async else _agent, policy, name="agent"))
    builder.add_node("owner", task_owner(policy), destinations=(END,))
    builder.add_edge(START, "agent")
    builder.add_conditional_edges("agent", guard_route(_more))
    return builder.compile(checkpointer=checkpointer)


def _assert_capped(state: dict[str, Any]) -> None:
    ledger = read_ledger(state)
    assert (ledger["hops"], ledger["status"]) == (8, "done")
    assert [(t["kind"], t["limit"], t["observed"]) for t in ledger["trips"]] == [("hop_cap", 8, 9)]
    assert list(range(1, 9)) == CALLS  # the 9th step never ran


def test_counts_survive_interrupt_and_resume(saver: BaseCheckpointSaver[Any]) -> None:
    graph = _loop_graph(saver)

    paused = graph.invoke({"todo": 20, "ask_at": 4}, CONFIG)
    assert read_ledger(paused)["hops"] == 3
    done = graph.invoke(Command(resume="yes"), CONFIG)

    _assert_capped(done)
    assert done["answers"] == ["yes"]


async def test_counts_survive_interrupt_and_resume_async(
    async_saver: BaseCheckpointSaver[Any],
) -> None:
    graph = _loop_graph(async_saver, is_async=True)

    paused = await graph.ainvoke({"todo": 20, "ask_at": 4}, CONFIG)
    assert read_ledger(paused)["hops"] == 3
    done = await graph.ainvoke(Command(resume="yes"), CONFIG)

    _assert_capped(done)


def test_re_invoking_a_finished_thread_keeps_counting(saver: BaseCheckpointSaver[Any]) -> None:
    graph = _loop_graph(saver)

    first = graph.invoke({"todo": 5, "done": 0}, CONFIG)
    assert (read_ledger(first)["hops"], read_ledger(first)["status"]) == (5, "running")
    assert graph.get_state(CONFIG).next == ()
    second = graph.invoke({"todo": 5, "done": 0}, CONFIG)

    _assert_capped(second)
    assert second["done"] == 3


async def test_re_invoking_a_finished_thread_keeps_counting_async(
    async_saver: BaseCheckpointSaver[Any],
) -> None:
    graph = _loop_graph(async_saver, is_async=True)

    await graph.ainvoke({"todo": 5, "done": 0}, CONFIG)
    second = await graph.ainvoke({"todo": 5, "done": 0}, CONFIG)

    _assert_capped(second)


# -- subgraphs share the ledger ---------------------------------------------------------


class Outer(GuardedState, total=False):
    topic: str
    rounds: int


class Inner(GuardedState, total=False):
    task: str


RAN: list[str] = []


def _inner(name: str) -> Any:
    def agent(state: Inner) -> dict[str, Any]:
        RAN.append(name)
        return {"status": "success", "result": f"{name}:{state.get('task', '')}"}

    agent.__name__ = name
    return agent


def _lead(state: Outer) -> dict[str, Any]:
    RAN.append("lead")
    return {
        "envelope": {"status": "success", "result": "plan"},
        "rounds": state.get("rounds", 0) + 1,
    }


def _again(state: Outer) -> Literal["lead", "__end__"]:
    return "lead" if state.get("rounds", 0) < 3 else END


def _subgraph(policy: GuardPolicy) -> Any:
    # Trips inside go to the subgraph's END; the parent's guard_route sends them to its owner.
    builder = GuardedStateGraph(Inner)
    for name in ("a", "b", "c"):
        builder.add_node(name, guarded(_inner(name), policy))
    builder.add_edge(START, "a")
    builder.add_conditional_edges("a", guard_route("b", owner=END))
    builder.add_conditional_edges("b", guard_route("c", owner=END))
    builder.add_conditional_edges("c", guard_route(END, owner=END))
    return builder.compile()


def test_the_hop_cap_is_global_across_a_subgraph(saver: BaseCheckpointSaver[Any]) -> None:
    RAN.clear()
    policy = GuardPolicy(hops=5, owner="partial")
    builder = GuardedStateGraph(Outer)
    builder.add_node("lead", guarded(_lead, policy))
    builder.add_node("sub", _subgraph(policy))
    builder.add_node("owner", task_owner(policy), destinations=(END,))
    builder.add_edge(START, "lead")
    builder.add_conditional_edges("lead", guard_route("sub"))
    builder.add_conditional_edges("sub", guard_route(_again))
    graph = builder.compile(checkpointer=saver)

    out = graph.invoke({"topic": "tides"}, CONFIG)

    ledger = read_ledger(out)
    # lead, a, b, c, lead = 5 hops; the second call of the subgraph trips at "a".
    assert RAN == ["lead", "a", "b", "c", "lead"]
    assert (ledger["hops"], ledger["status"]) == (5, "done")
    assert ledger["by_agent"] == {"lead": 2, "a": 1, "b": 1, "c": 1}
    assert [(t["kind"], t["agent"], t["observed"]) for t in ledger["trips"]] == [
        ("hop_cap", "a", 6)
    ]
    assert ledger["trip_count"] == 1
    assert [r["agent"] for r in ledger["recent"]] == ["lead", "a", "b", "c", "lead"]


def test_parallel_subgraph_branches_add_their_hops(saver: BaseCheckpointSaver[Any]) -> None:
    RAN.clear()
    policy = GuardPolicy(hops=20, owner="partial")

    def fan_out(state: Outer) -> list[Send]:
        return guard_sends(state, [Send("sub", {"task": t}) for t in ("tides", "moon")])

    builder = GuardedStateGraph(Outer)
    builder.add_node("lead", guarded(_lead, policy))
    builder.add_node("sub", _subgraph(policy))
    builder.add_node("join", guarded(_inner("join"), policy))
    builder.add_node("owner", task_owner(policy), destinations=(END,))
    builder.add_edge(START, "lead")
    builder.add_conditional_edges("lead", fan_out, ["sub"])
    builder.add_edge("sub", "join")
    builder.add_conditional_edges("join", guard_route(END))
    graph = builder.compile(checkpointer=saver)

    out = graph.invoke({"topic": "tides"}, CONFIG)

    ledger = read_ledger(out)
    assert sorted(RAN) == sorted(["lead", "a", "b", "c", "a", "b", "c", "join"])
    assert (ledger["hops"], ledger["status"]) == (1 + 3 + 3 + 1, "running")
    assert ledger["by_agent"] == {"lead": 1, "a": 2, "b": 2, "c": 2, "join": 1}
    assert len(ledger["recent"]) == 8


class Looping(GuardedState, total=False):
    task: str
    turns: int


def _looping_subgraph(policy: GuardPolicy, turns: int) -> Any:
    """A subgraph whose one agent works ``turns`` steps (each with a new result)."""

    def work(state: Looping) -> dict[str, Any]:
        n = state.get("turns", 0) + 1
        RAN.append(f"{state.get('task')}:{n}")
        return {"envelope": {"status": "success", "result": f"{state.get('task')} {n}"}, "turns": n}

    def more(state: Looping) -> Literal["work", "__end__"]:
        return "work" if state.get("turns", 0) < turns else END

    builder = GuardedStateGraph(Looping)
    builder.add_node("work", guarded(work, policy))
    builder.add_edge(START, "work")
    builder.add_conditional_edges("work", guard_route(more, owner=END))
    return builder.compile()


def _fan_out_graph(
    policy: GuardPolicy, saver: BaseCheckpointSaver[Any], tasks: tuple[str, ...]
) -> Any:
    def fan_out(state: Outer) -> list[Send]:
        return guard_sends(state, [Send("sub", {"task": t}) for t in tasks])

    builder = GuardedStateGraph(Outer)
    builder.add_node("lead", guarded(_lead, policy))
    builder.add_node("sub", _looping_subgraph(policy, turns=5))
    builder.add_node("owner", task_owner(policy), destinations=(END,))
    builder.add_edge(START, "lead")
    builder.add_conditional_edges("lead", fan_out, ["sub"])
    builder.add_conditional_edges("sub", guard_route(END))
    return builder.compile(checkpointer=saver)


@pytest.mark.parametrize("max_hops", [6, 9, 12])
def test_the_hop_cap_is_global_across_parallel_subgraph_branches(
    saver: BaseCheckpointSaver[Any], max_hops: int
) -> None:
    """Three branches that each want 5 steps run alongside each other: each sees its
    siblings' steps as they happen, not only at the join, so all of them together stop at
    the cap (each alone would have gone to max_hops)."""
    RAN.clear()
    policy = GuardPolicy(hops=max_hops, owner="partial", loops=False)
    graph = _fan_out_graph(policy, saver, ("tides", "moon", "sun"))

    out = graph.invoke({"topic": "tides"}, CONFIG)

    ledger = read_ledger(out)
    branch_steps = [r for r in RAN if ":" in r]
    assert ledger["hops"] == 1 + len(branch_steps) <= max_hops
    # guard_sends keeps each branch's first hop for it: a branch that never got to use it
    # (its siblings took the rest first) leaves that hop unspent.
    assert len(branch_steps) >= max_hops - 1 - 2
    assert ledger["status"] == "done"
    assert {t["kind"] for t in ledger["trips"]} == {"hop_cap"}


def test_parallel_subgraph_branches_under_the_cap_all_run(saver: BaseCheckpointSaver[Any]) -> None:
    RAN.clear()
    policy = GuardPolicy(hops=1 + 15, owner="partial", loops=False)
    graph = _fan_out_graph(policy, saver, ("tides", "moon", "sun"))

    out = graph.invoke({"topic": "tides"}, CONFIG)

    ledger = read_ledger(out)
    assert (ledger["hops"], ledger["status"], ledger["trip_count"]) == (16, "running", 0)
    steps = [f"{t}:{n}" for t in ("tides", "moon", "sun") for n in range(1, 6)]
    assert sorted(RAN) == sorted(["lead", *steps])


async def test_the_hop_cap_is_global_across_parallel_subgraph_branches_async(
    async_saver: BaseCheckpointSaver[Any],
) -> None:
    RAN.clear()
    policy = GuardPolicy(hops=9, owner="partial", loops=False)
    graph = _fan_out_graph(policy, async_saver, ("tides", "moon", "sun"))

    out = await graph.ainvoke({"topic": "tides"}, CONFIG)

    ledger = read_ledger(out)
    branch_steps = [r for r in RAN if ":" in r]
    assert ledger["hops"] == 1 + len(branch_steps) <= 9
    assert ledger["status"] == "done"


def test_the_hop_cap_is_global_across_subgraphs_on_parallel_edges(
    saver: BaseCheckpointSaver[Any],
) -> None:
    """No guard_sends: two subgraph nodes that an edge starts side by side."""
    RAN.clear()
    policy = GuardPolicy(hops=7, owner="partial", loops=False)
    builder = GuardedStateGraph(Outer)
    builder.add_node("lead", guarded(_lead, policy))
    builder.add_node("left", _looping_subgraph(policy, turns=5))
    builder.add_node("right", _looping_subgraph(policy, turns=5))
    builder.add_node("owner", task_owner(policy), destinations=(END,))
    builder.add_edge(START, "lead")
    builder.add_edge("lead", "left")
    builder.add_edge("lead", "right")
    builder.add_conditional_edges("left", guard_route(END))
    builder.add_conditional_edges("right", guard_route(END))
    graph = builder.compile(checkpointer=saver)

    out = graph.invoke({"topic": "tides"}, CONFIG)

    ledger = read_ledger(out)
    # Nothing is kept for a branch here: the two take the 6 hops left between them.
    assert ledger["hops"] == 1 + len([r for r in RAN if ":" in r]) == 7
    assert ledger["status"] == "done"


def test_a_per_agent_cap_holds_across_parallel_subgraph_branches(
    saver: BaseCheckpointSaver[Any],
) -> None:
    RAN.clear()
    policy = GuardPolicy(
        hops=HopCap(max_hops=50, per_agent={"work": 7}), owner="partial", loops=False
    )
    graph = _fan_out_graph(policy, saver, ("tides", "moon", "sun"))

    out = graph.invoke({"topic": "tides"}, CONFIG)

    ledger = read_ledger(out)
    assert ledger["by_agent"]["work"] == len([r for r in RAN if ":" in r]) == 7
    assert ledger["status"] == "done"
    assert {(t["kind"], t["scope"]) for t in ledger["trips"]} == {("hop_cap", "agent")}
