"""What ``sanegraph.checkpoints`` relies on through ``guards/_compat.py``, checked against the
installed LangGraph: each failure names the LangGraph behaviour that changed."""

from __future__ import annotations

import asyncio
import operator
import sqlite3
from pathlib import Path
from typing import Annotated, Any, Literal, TypedDict

import pytest
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, StateGraph
from langgraph.types import Command

from sanegraph.checkpoints import async_sqlite_saver, sqlite_saver
from sanegraph.guards._compat import (
    is_pull_task,
    saver_loop,
    sqlite_connection,
    state_keys,
    static_targets,
    without_checkpoint_map,
)


class State(TypedDict, total=False):
    topic: str
    log: Annotated[list[str], operator.add]


def _chain(ran: list[str]) -> Any:
    def node(name: str) -> Any:
        def run(state: State) -> dict[str, Any]:
            ran.append(name)
            return {"log": [name]}

        return run

    builder = StateGraph(State)
    builder.add_node("a", node("a"))
    builder.add_node("b", node("b"))
    builder.add_edge(START, "a")
    builder.add_edge("a", "b")
    builder.add_edge("b", END)
    return builder.compile(checkpointer=InMemorySaver())


def test_a_checkpoint_map_entry_for_the_root_overrides_checkpoint_id() -> None:
    ran: list[str] = []
    graph = _chain(ran)
    config: Any = {"configurable": {"thread_id": "t1"}}
    graph.invoke({"log": []}, config)
    history = list(graph.get_state_history(config))
    after_a = next(s.config["configurable"] for s in history if s.next == ("b",))
    before_a = next(s.config["configurable"] for s in history if s.next == ("a",))
    at_after_a = {"thread_id": "t1", "checkpoint_ns": "", "checkpoint_id": after_a["checkpoint_id"]}
    stale = {**at_after_a, "checkpoint_map": {"": before_a["checkpoint_id"]}}

    ran.clear()
    graph.invoke(None, {"configurable": stale})
    assert ran == ["a", "b"], (
        "LangGraph no longer resumes from configurable['checkpoint_map'][''] over "
        "checkpoint_id: _compat.without_checkpoint_map may no longer be needed."
    )
    ran.clear()
    graph.invoke(None, {"configurable": without_checkpoint_map(stale)})
    assert ran == ["b"]


async def test_async_savers_keep_the_loop_that_opened_them(tmp_path: Path) -> None:
    async with async_sqlite_saver(tmp_path / "c.sqlite") as saver:
        assert saver_loop(saver) is asyncio.get_running_loop(), (
            "AsyncSqliteSaver no longer keeps its event loop as `loop`: update "
            "_compat.saver_loop (rollback() uses it to refuse a sync call that would block)."
        )
    assert saver_loop(InMemorySaver()) is None


def test_sqlite_saver_keeps_its_connection(tmp_path: Path) -> None:
    with sqlite_saver(tmp_path / "c.sqlite") as saver:
        assert isinstance(sqlite_connection(saver), sqlite3.Connection), (
            "SqliteSaver no longer keeps its sqlite3.Connection as `conn`: update "
            "_compat.sqlite_connection (the journal writes through it)."
        )
    with pytest.raises(TypeError, match="InMemorySaver has no 'conn' attribute"):
        sqlite_connection(InMemorySaver())


def test_state_keys_leave_out_langgraphs_own_channels() -> None:
    graph = _chain([])
    assert set(graph.channels) > {"topic", "log"}
    assert state_keys(graph.channels) == ["log", "topic"]


def test_a_command_goto_is_a_pull_task_that_no_edge_declares() -> None:
    def a(state: State) -> Command[Literal["c"]]:
        return Command(goto="c", update={"log": ["a"]})

    builder = StateGraph(State)
    builder.add_node("a", a, destinations=("c",))
    builder.add_node("b", lambda state: {"log": ["b"]})
    builder.add_node("c", lambda state: {"log": ["c"]})
    builder.add_edge(START, "a")
    builder.add_edge("a", "b")
    graph = builder.compile(checkpointer=InMemorySaver(), interrupt_after=["a"])
    config: Any = {"configurable": {"thread_id": "t1"}}
    graph.invoke({"log": []}, config)

    tasks = graph.get_state(config).tasks
    assert sorted(task.name for task in tasks if is_pull_task(task)) == ["b", "c"], (
        "Tasks started by an edge or Command(goto=...) no longer have '__pregel_pull' "
        "paths: update _compat.PULL / is_pull_task (rollback replays gotos with it)."
    )
    assert static_targets(builder, "a") == {"b"}
