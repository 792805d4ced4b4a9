"""A journal file written by the previous version (calls journaled once, when they ended:
no ``status`` and no ``projected_*`` columns) opens and keeps working: its rows count as
settled, and new calls go through reserve, settle and release next to them."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from langgraph.runtime import ExecutionInfo

from sanegraph.checkpoints import Journal, sqlite_saver
from sanegraph.checkpoints.journal import CALLS_TABLE, STEPS_TABLE
from sanegraph.guards.budget import Spend

# The tables exactly as the previous version's _create_tables made them (sqlite-utils'
# CREATE TABLE text, read back from a file it wrote).
OLD_SCHEMA = """
CREATE TABLE "sanegraph_model_calls" (
   "thread_id" TEXT NOT NULL,
   "checkpoint_ns" TEXT NOT NULL,
   "checkpoint_id" TEXT NOT NULL,
   "task_id" TEXT NOT NULL,
   "call_index" INTEGER NOT NULL,
   "agent" TEXT NOT NULL,
   "provider" TEXT,
   "model" TEXT,
   "usd_micros" INTEGER NOT NULL,
   "input_tokens" INTEGER NOT NULL,
   "output_tokens" INTEGER NOT NULL,
   "created_at" REAL NOT NULL,
   PRIMARY KEY ("thread_id", "checkpoint_ns", "checkpoint_id", "task_id", "call_index")
);
CREATE TABLE "sanegraph_steps" (
   "thread_id" TEXT NOT NULL,
   "checkpoint_ns" TEXT NOT NULL,
   "checkpoint_id" TEXT NOT NULL,
   "task_id" TEXT NOT NULL,
   "agent" TEXT NOT NULL,
   "hop" INTEGER NOT NULL,
   "status" TEXT NOT NULL,
   "latency_us" INTEGER NOT NULL,
   "tripped" TEXT,
   "created_at" REAL NOT NULL,
   PRIMARY KEY ("thread_id", "checkpoint_ns", "checkpoint_id", "task_id")
);
"""
OLD_INSERT = (
    f"INSERT INTO {CALLS_TABLE} (thread_id, checkpoint_ns, checkpoint_id, task_id, "
    "call_index, agent, provider, model, usd_micros, input_tokens, output_tokens, "
    "created_at) VALUES (?, 'agent:abc', 'c1', 'abc', ?, ?, 'openai', 'gpt-4o', ?, ?, ?, 1.0)"
)
"""How the previous version journaled a call (the columns it knew)."""

INFO = ExecutionInfo(checkpoint_id="c1", checkpoint_ns="agent:abc", task_id="abc", thread_id="t1")
OLD = Spend(usd_micros=1_500, input_tokens=1_000, output_tokens=200)
PROJECTION = Spend(usd_micros=2_000, input_tokens=1_000, output_tokens=256)


def _old_file(path: Path) -> None:
    with sqlite3.connect(path) as conn:
        conn.executescript(OLD_SCHEMA)
        for thread, index, agent in [("t1", 0, "analyst"), ("t1", 1, "writer"), ("t2", 0, "x")]:
            conn.execute(OLD_INSERT, [thread, index, agent, *OLD.to_dict().values()])
        conn.execute(
            f"INSERT INTO {STEPS_TABLE} VALUES ('t1', 'agent:abc', 'c1', 'abc', 'analyst', "
            "1, 'success', 900, NULL, 1.0)"
        )
    conn.close()


def _columns(path: Path) -> dict[str, tuple[str, int, Any]]:
    with sqlite3.connect(path) as conn:
        rows = conn.execute(f"PRAGMA table_info({CALLS_TABLE})").fetchall()
    conn.close()
    return {name: (kind, notnull, default) for _, name, kind, notnull, default, _ in rows}


@contextmanager
def _journal(path: Path, through: str) -> Iterator[Journal]:
    if through == "file":
        with Journal(path) as journal:
            yield journal
    else:
        with sqlite_saver(path) as saver:
            yield Journal(saver)


def _projection(index: int) -> dict[str, Any]:
    return {"index": index, "agent": "analyst", "model": "gpt-4o", **PROJECTION.to_dict()}


@pytest.mark.parametrize("through", ["file", "saver"])
def test_an_old_journal_opens_with_its_calls_settled(tmp_path: Path, through: str) -> None:
    path = tmp_path / "checkpoints.sqlite"
    _old_file(path)

    with _journal(path, through) as journal:
        assert journal.thread_paid("t1") == (OLD + OLD, {"analyst": OLD, "writer": OLD})
        assert journal.prior_calls(INFO) == (2, OLD + OLD)
        assert [
            (c["call_index"], c["status"], c["usd_micros"], c["projected_usd_micros"])
            for c in journal.calls("t1")
        ] == [(0, "settled", 1_500, None), (1, "settled", 1_500, None)]
        assert [s["status"] for s in journal.steps("t1")] == ["success"]

        # New calls live next to the old ones, and old rows stay settled.
        assert journal.reserve_call(INFO, _projection(2))
        assert journal.reserve_call(INFO, _projection(3))
        assert journal.release_call(INFO, 3)
        assert journal.log_call(INFO, {**_projection(0), "usd_micros": 1}) is False
        assert journal.release_call(INFO, 1) is False
        assert journal.thread_paid("t1")[0] == OLD + OLD + PROJECTION
        assert journal.prior_calls(INFO) == (4, OLD + OLD + PROJECTION)
        assert journal.thread_paid("t2") == (OLD, {"x": OLD})

    columns = _columns(path)
    assert columns["status"] == ("TEXT", 1, "'settled'")
    assert {name: columns[name][0] for name in columns if name.startswith("projected_")} == {
        "projected_usd_micros": "INTEGER",
        "projected_input_tokens": "INTEGER",
        "projected_output_tokens": "INTEGER",
    }


def test_opening_a_migrated_journal_again_changes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "checkpoints.sqlite"
    _old_file(path)
    with Journal(path):
        pass
    migrated = _columns(path)

    with Journal(path) as journal:
        assert journal.thread_paid("t1")[0] == OLD + OLD

    assert _columns(path) == migrated


def test_a_new_journal_has_the_same_columns_as_a_migrated_one(tmp_path: Path) -> None:
    old, new = tmp_path / "old.sqlite", tmp_path / "new.sqlite"
    _old_file(old)
    Journal(old).close()
    Journal(new).close()

    assert _columns(old).keys() == _columns(new).keys()
    assert _columns(new)["status"] == _columns(old)["status"]


def test_calls_an_old_version_writes_after_the_migration_count_as_settled(
    tmp_path: Path,
) -> None:
    path = tmp_path / "checkpoints.sqlite"
    with Journal(path) as journal:
        journal.reserve_call(INFO, _projection(0))
    # A process still running the previous version journals a call the old way.
    with sqlite3.connect(path) as conn:
        conn.execute(OLD_INSERT, ["t1", 1, "analyst", *OLD.to_dict().values()])
    conn.close()

    with Journal(path) as journal:
        assert [(c["call_index"], c["status"]) for c in journal.calls("t1")] == [
            (0, "reserved"),
            (1, "settled"),
        ]
        assert journal.thread_paid("t1") == (PROJECTION + OLD, {"analyst": PROJECTION + OLD})
