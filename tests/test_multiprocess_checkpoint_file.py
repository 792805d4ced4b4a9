"""The documented layout under load: 4 processes x 8 threads on ONE SQLite file holding
LangGraph's checkpoints, the journal (written through the saver) and a shared pool.

Each step of each thread does what a guarded step does around one model call (pool
reserve, journal reserve, journal settle, pool commit, journal step) while LangGraph
writes its checkpoint and task writes (``durability="sync"``). Before the fix, such runs
raised ``database is locked`` from ``SqliteSaver.put``/``put_writes`` and ran 8-16x
slower; once ``cannot commit - no transaction is active`` from the journal.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Any

from _journal_load_worker import ACTUAL, POOL, State
from _spawn import spawn
from langgraph.checkpoint.sqlite import SqliteSaver
from langgraph.graph import START, StateGraph
from langgraph.runtime import ExecutionInfo

from sanegraph.checkpoints import Journal, SharedBudget, TaskKey, sqlite_saver
from sanegraph.guards.budget import Spend

WORKER = Path(__file__).with_name("_journal_load_worker.py")
PROCESSES, THREADS, STEPS = 4, 8, 20


def test_every_statement_runs_with_its_connections_lock_held(tmp_path: Path) -> None:
    """The cause of the errors: sqlite-utils' db.table() ran a query on the saver's
    connection outside the saver's lock. A thread using a connection while another
    thread of the process busy-waits on it blocks holding the GIL, and the whole process
    stops for the busy timeout (see _sqlite.py). So: no statement outside the lock."""
    path = tmp_path / "checkpoints.sqlite"
    outside: list[tuple[str, str]] = []

    def watch(name: str, conn: sqlite3.Connection, lock: Any) -> None:
        def trace(sql: str) -> None:
            if not lock.locked():
                outside.append((name, sql))

        conn.set_trace_callback(trace)

    with sqlite_saver(path) as saver, SharedBudget(POOL, path=path, usd=1) as pool:
        shared, own = Journal(saver), Journal(path)
        watch("saver", saver.conn, saver.lock)
        watch("journal", own._conn, own._lock)
        watch("pool", pool._conn, pool._lock)
        info = ExecutionInfo(checkpoint_id="c1", checkpoint_ns="", task_id="a", thread_id="t1")
        call = {"index": 0, "agent": "worker", **ACTUAL.to_dict()}
        for journal in (shared, own):
            journal.prior_calls(info)
            journal.reserve_call(info, call)
            journal.log_call(info, call)
            journal.reserve_call(info, {**call, "index": 1})
            journal.release_call(info, 1)
            journal.log_step(info, agent="worker", hop=1, status="success", latency_us=1)
            journal.record_call(TaskKey.of(info), 2, agent="worker", spend=ACTUAL)
            journal.record_step(TaskKey.of(info), agent="worker", hop=1, status="x", latency_us=1)
            journal.thread_paid("t1")
            journal.task_spend(TaskKey.of(info))
            journal.calls("t1")
            journal.steps("t1")
        for _ in range(2):
            held = pool.reserve(ACTUAL, key="call")
            assert held is not None
            pool.commit(held, ACTUAL)
        held = pool.reserve(ACTUAL, key="other")
        assert held is not None
        pool.release(held)
        pool.set_limits(usd=2, tokens=None)
        pool.status()
        own.close()

    assert outside == []


def _wait_for(condition: Any, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def _run(db: Path, sync: Path) -> list[dict[str, Any]]:
    workers: list[subprocess.Popen[str]] = []
    try:
        for worker in range(PROCESSES):
            workers.append(spawn(WORKER, str(db), str(sync), str(worker), str(THREADS), str(STEPS)))
        _wait_for(lambda: len(list(sync.glob("ready-*"))) == PROCESSES, "every worker")
        (sync / "go").touch()
        outs = [w.communicate(timeout=120) for w in workers]
    finally:
        for w in workers:
            w.kill()
    assert [w.returncode for w in workers] == [0] * PROCESSES, [err for _, err in outs]
    return [json.loads(out) for out, _ in outs]


def _step_count(saver: SqliteSaver, thread_id: str) -> int:
    builder = StateGraph(State)
    builder.add_node("step", lambda state: state)
    builder.add_edge(START, "step")
    graph = builder.compile(checkpointer=saver)
    return int(graph.get_state({"configurable": {"thread_id": thread_id}}).values["n"])


def test_four_processes_of_eight_threads_share_one_checkpoint_file(tmp_path: Path) -> None:
    db = tmp_path / "runs" / "checkpoints.sqlite"
    sync = tmp_path / "sync"
    sync.mkdir()

    reports = _run(db, sync)

    errors = [error for report in reports for error in report["errors"]]
    assert errors == []
    threads = [f"w{w}-t{i}" for w in range(PROCESSES) for i in range(THREADS)]
    with sqlite_saver(db) as saver:
        journal = Journal(saver)
        # No lost step: every thread's checkpoints and journal have all its steps.
        assert {t: _step_count(saver, t) for t in threads} == dict.fromkeys(threads, STEPS)
        assert {t: len(journal.steps(t)) for t in threads} == dict.fromkeys(threads, STEPS)
        statuses = {c["status"] for t in threads for c in journal.calls(t)}
        assert statuses == {"settled"}
        paid = [journal.thread_paid(t)[0] for t in threads]
        assert paid == [Spend(**{k: v * STEPS for k, v in ACTUAL.to_dict().items()})] * len(threads)
        total = sum(paid, Spend())
    with SharedBudget(POOL, path=db) as pool:
        status = pool.status()
    assert status["spent"] == total.to_dict()
    assert (status["reserved"]["usd_micros"], status["reservations"]) == (0, 0)
