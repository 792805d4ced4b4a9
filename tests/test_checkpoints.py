"""SQLite checkpointers for guarded graphs: WAL, both flavours, strict serialization, and
durability on a hard crash."""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from langgraph.checkpoint.sqlite import SqliteSaver
from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver
from langgraph.graph import END, START

from sanegraph import checkpoints
from sanegraph.checkpoints import async_sqlite_saver, open_sqlite_saver, sqlite_saver
from sanegraph.guards import (
    ConfigurationError,
    GuardedState,
    GuardedStateGraph,
    GuardPolicy,
    envelopes_of,
    guard_route,
    guarded,
    read_ledger,
    task_owner,
)

WORKER = Path(__file__).with_name("_restart_worker.py")


def _run_worker(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(WORKER), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


def _pragmas(conn: sqlite3.Connection) -> tuple[str, int]:
    mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
    sync = conn.execute("PRAGMA synchronous").fetchone()[0]
    return mode, sync


class State(GuardedState, total=False):
    topic: str


def _graph(saver: Any) -> Any:
    policy = GuardPolicy(hops=5)
    builder = GuardedStateGraph(State)
    builder.add_node(
        "researcher",
        guarded(lambda state: {"status": "success", "result": state["topic"]}, policy),
    )
    builder.add_node("owner", task_owner(policy), destinations=(END,))
    builder.add_edge(START, "researcher")
    builder.add_conditional_edges("researcher", guard_route(END))
    return builder.compile(checkpointer=saver)


# -- the package ------------------------------------------------------------------------


def test_every_exported_name_is_documented() -> None:
    assert isinstance(checkpoints.__all__, tuple)
    for name in checkpoints.__all__:
        obj = getattr(checkpoints, name)
        if callable(obj):
            assert (obj.__doc__ or "").strip(), name
    assert checkpoints.__doc__


# -- sync -------------------------------------------------------------------------------


def test_sqlite_saver_opens_the_file_in_wal_mode(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "er" / "checkpoints.sqlite"

    with sqlite_saver(path) as saver:
        assert isinstance(saver, SqliteSaver)
        assert _pragmas(saver.conn) == ("wal", 1)  # synchronous=NORMAL
        tables = {r[0] for r in saver.conn.execute("SELECT name FROM sqlite_master")}
        assert {"checkpoints", "writes"} <= tables
        conn = saver.conn

    assert path.exists()
    with pytest.raises(sqlite3.ProgrammingError):
        conn.execute("SELECT 1")
    # WAL is a property of the file: another connection sees it too.
    other = sqlite3.connect(path)
    assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    other.close()


def test_a_guarded_graph_round_trips_through_the_file(tmp_path: Path) -> None:
    path = tmp_path / "checkpoints.sqlite"
    config = {"configurable": {"thread_id": "t1"}}
    with sqlite_saver(path) as saver:
        _graph(saver).invoke({"topic": "tides"}, config)

    with sqlite_saver(path) as saver:
        state = _graph(saver).get_state(config)

    ledger = read_ledger(state.values)
    assert (ledger["hops"], ledger["by_agent"], ledger["status"]) == (
        1,
        {"researcher": 1},
        "running",
    )
    assert envelopes_of(state.values)["researcher"]["result"] == "tides"


def test_open_sqlite_saver_works_from_another_thread(tmp_path: Path) -> None:
    saver = open_sqlite_saver(str(tmp_path / "c.sqlite"))
    try:
        graph = _graph(saver)
        results: list[Any] = []
        worker = threading.Thread(
            target=lambda: results.append(
                graph.invoke({"topic": "tides"}, {"configurable": {"thread_id": "t"}})
            )
        )
        worker.start()
        worker.join()
        assert read_ledger(results[0])["hops"] == 1
        assert _pragmas(saver.conn) == ("wal", 1)
    finally:
        saver.conn.close()


def test_memory_database_is_allowed(tmp_path: Path) -> None:
    with sqlite_saver(":memory:") as saver:
        out = _graph(saver).invoke({"topic": "x"}, {"configurable": {"thread_id": "t"}})
    assert read_ledger(out)["hops"] == 1


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"path": 42},
            "The SQLite path must be a str or a pathlib.Path, got int. Pass e.g. "
            "sqlite_saver('runs/checkpoints.sqlite').",
        ),
        (
            {"path": ""},
            "The SQLite path is empty. Pass a file path such as 'runs/checkpoints.sqlite', "
            "or ':memory:' for a throwaway database.",
        ),
        (
            {"path": ":memory:", "timeout": -1},
            "timeout must be a number of seconds >= 0, got -1. Pass e.g. timeout=5.0.",
        ),
    ],
)
def test_bad_arguments_say_what_to_pass(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError, match=re.escape(message)):
        open_sqlite_saver(**kwargs)
    with pytest.raises(ConfigurationError, match=re.escape(message)), sqlite_saver(**kwargs):
        pass


async def test_sqlite_saver_in_async_code_names_async_sqlite_saver(tmp_path: Path) -> None:
    with pytest.raises(
        ConfigurationError,
        match=re.escape(
            "sqlite_saver() opens a sync SqliteSaver for `with`; async code needs "
            "`async with async_sqlite_saver(path) as saver:`."
        ),
    ):
        async with sqlite_saver(tmp_path / "c.sqlite"):  # type: ignore[attr-defined]
            pass
    assert not (tmp_path / "c.sqlite").exists()


# -- async ------------------------------------------------------------------------------


async def test_async_sqlite_saver_opens_the_file_in_wal_mode(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "checkpoints.sqlite"
    config = {"configurable": {"thread_id": "t1"}}

    async with async_sqlite_saver(path) as saver:
        assert isinstance(saver, AsyncSqliteSaver)
        async with saver.conn.execute("PRAGMA journal_mode") as cursor:
            assert (await cursor.fetchone()) == ("wal",)
        async with saver.conn.execute("PRAGMA synchronous") as cursor:
            assert (await cursor.fetchone()) == (1,)
        out = await _graph(saver).ainvoke({"topic": "tides"}, config)
        assert read_ledger(out)["hops"] == 1

    with sqlite_saver(path) as saver:
        assert read_ledger(_graph(saver).get_state(config).values)["hops"] == 1


def test_async_sqlite_saver_in_sync_code_names_sqlite_saver(tmp_path: Path) -> None:
    with (
        pytest.raises(
            ConfigurationError,
            match=re.escape(
                "async_sqlite_saver() opens an AsyncSqliteSaver for `async with`; sync code "
                "needs `with sqlite_saver(path) as saver:`."
            ),
        ),
        async_sqlite_saver(tmp_path / "c.sqlite"),  # type: ignore[attr-defined]
    ):
        pass


async def test_a_sync_saver_in_ainvoke_is_refused_by_langgraph(tmp_path: Path) -> None:
    # LangGraph's own message already names AsyncSqliteSaver; sanegraph adds nothing.
    with (
        sqlite_saver(tmp_path / "c.sqlite") as saver,
        pytest.raises(NotImplementedError, match="Consider using AsyncSqliteSaver"),
    ):
        await _graph(saver).ainvoke({"topic": "x"}, {"configurable": {"thread_id": "t"}})


# -- strict serialization, in a fresh process -------------------------------------------


def test_guarded_state_round_trips_strict_msgpack_without_warnings(tmp_path: Path) -> None:
    # LANGGRAPH_STRICT_MSGPACK is read when langgraph is imported: a fresh process.
    proc = _run_worker(
        "strict", str(tmp_path / "strict.sqlite"), env={"LANGGRAPH_STRICT_MSGPACK": "true"}
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)

    assert out["strict_env"] == "true"
    assert out["records"] == []  # no warning logged, none raised (warnings are errors)
    assert out["first_status"] == "done"
    assert out["first_envelopes"]["analyst"]["status"] == "failed"
    ledger = out["resumed_ledger"]
    assert (ledger["status"], ledger["rollbacks"], ledger["hops"]) == ("running", 1, 2)
    assert out["resumed_envelopes"]["analyst"]["result"] == "analysis of spring tides"
    # The capture works: a type no schema names is blocked, and LangGraph says so.
    assert out["control_type"] == "dict"
    assert [r.split(" - ")[0] for r in out["control_records"]] == [
        "langgraph.checkpoint.serde.jsonplus: Blocked deserialization of __main__.Marker"
    ]


# -- durability on a hard crash ---------------------------------------------------------


def _latest_n(path: Path) -> Any:
    with sqlite_saver(path) as saver:
        found = saver.get_tuple({"configurable": {"thread_id": "crash", "checkpoint_ns": ""}})
    if found is None:
        return None
    values = found.checkpoint["channel_values"]
    return values.get("n"), read_ledger(values)["hops"]


def test_a_guarded_graph_keeps_every_step_before_a_hard_crash(tmp_path: Path) -> None:
    path = tmp_path / "guarded.sqlite"

    proc = _run_worker("crash-guarded", str(path))

    assert proc.returncode == 1, proc.stderr
    assert "finished" not in proc.stdout
    # The node exited the process at step 6 of 10: steps 1-5 are all in the checkpoint,
    # without passing durability= anywhere (GuardedStateGraph defaults to "sync").
    assert _latest_n(path) == (5, 5)


def test_a_plain_graph_loses_steps_on_a_hard_crash(tmp_path: Path) -> None:
    path = tmp_path / "plain.sqlite"

    proc = _run_worker("crash-plain", str(path))

    assert proc.returncode == 1, proc.stderr
    # LangGraph's default durability ("async") writes checkpoints in the background: at
    # the crash the newest steps have not reached the file (50 of 50 runs lost >= 2).
    latest = _latest_n(path)
    assert latest is None or latest[0] is None or latest[0] < 5
