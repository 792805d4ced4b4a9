"""Subprocess side of the restart, crash and strict-serialization tests.

Run as ``python _restart_worker.py MODE DB [THREAD]``; prints one JSON line on stdout.

- ``start``: a looping guarded agent (HopCap(max_hops=8)) on a SQLite file; the agent asks a
  human (``interrupt``) at its 4th hop; the process prints what it saw and hard-exits.
- ``resume``: a new process resumes that thread with ``Command(resume=...)`` and prints the
  ledger after the run stops.
- ``crash-guarded`` / ``crash-plain``: ten steps on a SQLite file; the node calls
  ``os._exit(1)`` at step 6. Guarded: ``GuardedStateGraph`` compiled without ``durability``;
  plain: ``StateGraph`` (LangGraph's default, ``"async"``).
- ``strict``: a guarded run, a rollback and a resume with every warning an error and every
  log record at WARNING captured (run it with ``LANGGRAPH_STRICT_MSGPACK=true``); then a
  control run storing an unregistered type, which LangGraph does warn about.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import warnings
from dataclasses import dataclass
from typing import Any, Literal

from langgraph.graph import END, START, StateGraph
from langgraph.types import Command, interrupt

from sanegraph.checkpoints import open_sqlite_saver, rollback
from sanegraph.guards import (
    GuardedState,
    GuardedStateGraph,
    GuardPolicy,
    HopCap,
    envelopes_of,
    guard_route,
    guarded,
    read_ledger,
    task_owner,
)

ASK_AT_HOP = 4
MAX_HOPS = 8


class LoopState(GuardedState, total=False):
    notes: list[str]


def _agent(state: LoopState) -> dict[str, Any]:
    hop = read_ledger(state)["hops"] + 1
    notes = list(state.get("notes") or [])
    if hop == ASK_AT_HOP:
        notes.append(str(interrupt({"question": "Which source next?", "hop": hop})))
    notes.append(f"note {hop}")
    return {"envelope": {"status": "success", "result": f"step {hop}"}, "notes": notes}


def _loop_graph(db: str) -> Any:
    policy = GuardPolicy(hops=HopCap(max_hops=MAX_HOPS), owner="partial")
    builder = GuardedStateGraph(LoopState)
    builder.add_node("agent", guarded(_agent, policy))
    builder.add_node("owner", task_owner(policy), destinations=(END,))
    builder.add_edge(START, "agent")
    builder.add_conditional_edges("agent", guard_route("agent"))
    return builder.compile(checkpointer=open_sqlite_saver(db))


def _summary(graph: Any, config: Any) -> dict[str, Any]:
    snapshot = graph.get_state(config)
    ledger = read_ledger(snapshot.values)
    return {
        "next": list(snapshot.next),
        "hops": ledger["hops"],
        "by_agent": ledger["by_agent"],
        "status": ledger["status"],
        "trips": [(t["kind"], t["limit"], t["observed"]) for t in ledger["trips"]],
        "interrupts": [i.value for i in snapshot.interrupts],
        "notes": snapshot.values.get("notes", []),
    }


def start(db: str, thread: str) -> None:
    graph = _loop_graph(db)
    config = {"configurable": {"thread_id": thread}}
    graph.invoke({"notes": []}, config)
    print(json.dumps(_summary(graph, config)), flush=True)
    os._exit(0)  # no clean shutdown: the next process must not depend on one


def resume(db: str, thread: str) -> None:
    graph = _loop_graph(db)
    config = {"configurable": {"thread_id": thread}}
    before = _summary(graph, config)
    graph.invoke(Command(resume="the tide tables"), config)
    print(json.dumps({"before": before, "after": _summary(graph, config)}), flush=True)


class CountState(GuardedState, total=False):
    n: int


CRASH_AT = 6
STEPS = 10


def _next(state: CountState) -> Literal["step", "__end__"]:
    return "step" if state["n"] < STEPS else END


def crash(db: str, kind: str) -> None:
    def step(state: CountState) -> dict[str, Any]:
        n = state.get("n", 0) + 1
        if n == CRASH_AT:
            os._exit(1)
        return {"envelope": {"status": "success", "result": n}, "n": n}

    def plain_step(state: CountState) -> dict[str, Any]:
        n = state.get("n", 0) + 1
        if n == CRASH_AT:
            os._exit(1)
        return {"n": n}

    saver = open_sqlite_saver(db)
    if kind == "guarded":
        policy = GuardPolicy(hops=100)
        guarded_builder = GuardedStateGraph(CountState)
        guarded_builder.add_node("step", guarded(step, policy))
        guarded_builder.add_node("owner", task_owner(policy), destinations=(END,))
        guarded_builder.add_edge(START, "step")
        guarded_builder.add_conditional_edges("step", guard_route(_next))
        graph = guarded_builder.compile(checkpointer=saver)
    else:
        plain_builder = StateGraph(CountState)
        plain_builder.add_node("step", plain_step)
        plain_builder.add_edge(START, "step")
        plain_builder.add_conditional_edges("step", _next)
        graph = plain_builder.compile(checkpointer=saver)
    graph.invoke({"n": 0}, {"configurable": {"thread_id": "crash"}})
    print(json.dumps({"finished": True}), flush=True)


class TopicState(GuardedState, total=False):
    topic: str


@dataclass
class Marker:
    """A type no state schema names: LangGraph warns when it reads one back."""

    label: str


class AnyState(GuardedState, total=False):
    extra: Any


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.seen: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.seen.append(f"{record.name}: {record.getMessage()}")


def strict(db: str) -> None:
    records = _Records()
    logging.getLogger().addHandler(records)
    warnings.simplefilter("error")
    calls = {"analyst": 0}
    policy = GuardPolicy(hops=10)

    def researcher(state: TopicState) -> dict[str, Any]:
        return {"status": "success", "result": {"sources": [state["topic"]]}, "confidence": 0.9}

    def analyst(state: TopicState) -> Any:
        calls["analyst"] += 1
        if calls["analyst"] == 1:
            return "plain text, not an envelope"
        return {"status": "success", "result": f"analysis of {state['topic']}"}

    builder = GuardedStateGraph(TopicState)
    builder.add_node("researcher", guarded(researcher, policy))
    builder.add_node("analyst", guarded(analyst, policy))
    builder.add_node("owner", task_owner(policy), destinations=(END,))
    builder.add_edge(START, "researcher")
    builder.add_conditional_edges("researcher", guard_route("analyst"))
    builder.add_conditional_edges("analyst", guard_route(END))
    saver = open_sqlite_saver(db)
    graph = builder.compile(checkpointer=saver)
    config = {"configurable": {"thread_id": "strict"}}
    graph.invoke({"topic": "tides"}, config)
    first = graph.get_state(config).values
    resumed = graph.invoke(None, rollback(graph, config, patch={"topic": "spring tides"}))
    history = len(list(graph.get_state_history(config)))
    guarded_records = list(records.seen)

    control = GuardedStateGraph(AnyState)
    control.add_node("keep", lambda state: {"extra": Marker("x")})
    control.add_edge(START, "keep")
    control_graph = control.compile(checkpointer=saver)
    control_config = {"configurable": {"thread_id": "control"}}
    control_graph.invoke({"extra": None}, control_config)
    extra = control_graph.get_state(control_config).values["extra"]
    print(
        json.dumps(
            {
                "strict_env": os.environ.get("LANGGRAPH_STRICT_MSGPACK"),
                "first_status": first["guard"]["status"],
                "first_envelopes": envelopes_of(first),
                "resumed_ledger": resumed["guard"],
                "resumed_envelopes": envelopes_of(resumed),
                "history": history,
                "records": guarded_records,
                "control_records": records.seen[len(guarded_records) :],
                "control_type": type(extra).__name__,
            }
        ),
        flush=True,
    )


def main(argv: list[str]) -> None:
    mode, db = argv[1], argv[2]
    if mode == "start":
        start(db, argv[3])
    elif mode == "resume":
        resume(db, argv[3])
    elif mode.startswith("crash-"):
        crash(db, mode.removeprefix("crash-"))
    elif mode == "strict":
        strict(db)
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main(sys.argv)
