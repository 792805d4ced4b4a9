"""A journaled call's life: reserved at its projection before it is made, then settled at
its cost or released, each write once per key; what a thread paid and what a task's
earlier attempts used, read back. The rules are the core's, so every store (the SQLite
``Journal`` on a file or through a saver, and ``MemoryJournal``) is held to the same tests.
"""

from __future__ import annotations

import asyncio
import json
import re
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypedDict

import pytest
from langgraph.graph import START, StateGraph
from langgraph.runtime import ExecutionInfo, Runtime
from langgraph.types import RetryPolicy
from test_journal import MemoryJournal

from sanegraph.checkpoints import Journal, TaskKey, async_sqlite_saver, sqlite_saver
from sanegraph.checkpoints._journal_core import JournalBase
from sanegraph.checkpoints.journal import CALLS_TABLE
from sanegraph.guards import ConfigurationError
from sanegraph.guards.budget import Spend

INFO = ExecutionInfo(checkpoint_id="c1", checkpoint_ns="agent:abc", task_id="abc", thread_id="t1")
PROJECTION = Spend(usd_micros=2_000, input_tokens=1_000, output_tokens=256)
COST = Spend(usd_micros=1_500, input_tokens=1_000, output_tokens=200)


def _projection(index: int, spend: Spend = PROJECTION, **changes: Any) -> dict[str, Any]:
    """What a guarded step passes to reserve_call before the call."""
    return {
        "index": index,
        "agent": "analyst",
        "model": "gpt-4o",
        "provider": "openai",
        **spend.to_dict(),
        **changes,
    }


def _settlement(index: int, spend: Spend = COST, **changes: Any) -> dict[str, Any]:
    """A ``BudgetMeter.calls`` record (``FinishedCall.record``) for log_call after it."""
    return {
        "key": f"t1|agent:abc|{index}",
        "index": index,
        "run_id": f"run-{index}",
        "parent_run_id": None,
        "agent": "analyst",
        "provider": "openai",
        "model": "gpt-4o",
        **spend.to_dict(),
        "estimated": False,
        "max_tokens": 256,
        "projected": PROJECTION.to_dict(),
        "thread_id": "t1",
        "checkpoint_ns": "agent:abc",
        "node": "agent",
        "usage_details": {},
        **changes,
    }


@pytest.fixture(params=["memory", "file", "saver"])
def journal(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[JournalBase]:
    """Each store: in memory, a Journal on a file, a Journal through a SqliteSaver."""
    if request.param == "memory":
        yield MemoryJournal()
    elif request.param == "file":
        with Journal(tmp_path / "journal.sqlite") as journal:
            yield journal
    else:
        with sqlite_saver(tmp_path / "checkpoints.sqlite") as saver:
            yield Journal(saver)


def _rows(journal: JournalBase, thread_id: str = "t1") -> list[dict[str, Any]]:
    if isinstance(journal, MemoryJournal):
        return [row for row in journal.calls.values() if row["thread_id"] == thread_id]
    assert isinstance(journal, Journal)
    return journal.calls(thread_id)


def _life(journal: JournalBase) -> list[tuple[Any, ...]]:
    """Each call's index, status, what counts (usd) and its projection (usd)."""
    return [
        (r["call_index"], r["status"], r["usd_micros"], r["projected_usd_micros"])
        for r in _rows(journal)
    ]


# -- reserve, settle, release -------------------------------------------------------------


def test_a_reserved_call_counts_at_its_projection_until_settled_at_its_cost(
    journal: JournalBase,
) -> None:
    assert journal.reserve_call(INFO, _projection(0)) is True
    assert journal.thread_paid("t1") == (PROJECTION, {"analyst": PROJECTION})
    assert journal.prior_calls(INFO) == (1, PROJECTION)
    assert _life(journal) == [(0, "reserved", 2_000, 2_000)]

    assert journal.log_call(INFO, _settlement(0)) is True

    assert journal.thread_paid("t1") == (COST, {"analyst": COST})
    assert journal.prior_calls(INFO) == (1, COST)
    assert _life(journal) == [(0, "settled", 1_500, 2_000)]


def test_a_second_reservation_of_a_key_changes_nothing(journal: JournalBase) -> None:
    assert journal.reserve_call(INFO, _projection(0))
    assert journal.reserve_call(INFO, _projection(0, Spend(usd_micros=9), agent="other")) is False

    assert journal.thread_paid("t1") == (PROJECTION, {"analyst": PROJECTION})
    assert _life(journal) == [(0, "reserved", 2_000, 2_000)]


def test_a_settled_call_is_never_changed_again(journal: JournalBase) -> None:
    journal.reserve_call(INFO, _projection(0))
    journal.log_call(INFO, _settlement(0))

    assert journal.log_call(INFO, _settlement(0, Spend(usd_micros=9))) is False
    assert journal.release_call(INFO, 0) is False
    assert journal.reserve_call(INFO, _projection(0)) is False

    assert journal.thread_paid("t1") == (COST, {"analyst": COST})
    assert _life(journal) == [(0, "settled", 1_500, 2_000)]


def test_a_released_call_counts_nothing_keeps_its_index_and_is_not_resurrected(
    journal: JournalBase,
) -> None:
    journal.reserve_call(INFO, _projection(0))

    assert journal.release_call(INFO, 0) is True

    assert journal.thread_paid("t1") == (Spend(), {})
    assert journal.prior_calls(INFO) == (1, Spend())  # a retry numbers its call 1
    # A late settle (or a second release, or a reservation) leaves it released.
    assert journal.log_call(INFO, _settlement(0)) is False
    assert journal.release_call(INFO, 0) is False
    assert journal.reserve_call(INFO, _projection(0)) is False
    assert journal.thread_spend("t1") == Spend()
    assert _life(journal) == [(0, "released", 0, 2_000)]
    assert [(r["input_tokens"], r["output_tokens"]) for r in _rows(journal)] == [(0, 0)]


def test_a_call_never_reserved_is_settled_by_log_call_and_not_released(
    journal: JournalBase,
) -> None:
    assert journal.release_call(INFO, 0) is False
    assert _rows(journal) == []

    assert journal.log_call(INFO, _settlement(0)) is True

    assert journal.thread_paid("t1") == (COST, {"analyst": COST})
    assert _life(journal) == [(0, "settled", 1_500, 2_000)]  # projected from the record


def test_settling_keeps_the_reservation_and_records_what_the_call_used(
    journal: JournalBase,
) -> None:
    journal.reserve_call(INFO, _projection(0, provider=None))
    record = _settlement(
        0, estimated=True, usage_details={"cache_read_tokens": 900}, projected={"usd_micros": 1}
    )

    journal.log_call(INFO, record)

    (row,) = _rows(journal)
    assert {k: row[k] for k in ("agent", "provider", "model", "status", "estimated")} == {
        "agent": "analyst",
        "provider": "openai",
        "model": "gpt-4o",
        "status": "settled",
        "estimated": 1,
    }
    assert Spend.from_dict({k[10:]: v for k, v in row.items() if k.startswith("projected_")}) == (
        PROJECTION  # the reservation's projection, not the record's
    )
    assert json.loads(row["usage_details"]) == {"cache_read_tokens": 900}
    assert row["updated_at"] >= row["created_at"]


def test_the_next_index_follows_calls_of_every_status(journal: JournalBase) -> None:
    journal.reserve_call(INFO, _projection(0))  # the process died mid-call
    journal.reserve_call(INFO, _projection(1))
    journal.release_call(INFO, 1)  # failed before it was billed
    journal.reserve_call(INFO, _projection(2))
    journal.log_call(INFO, _settlement(2))
    journal.log_call(INFO.patch(task_id="def"), _settlement(7))  # another task

    rerun = INFO.patch(node_attempt=2, run_id="another-run")
    assert journal.prior_calls(rerun) == (3, PROJECTION + COST)
    assert journal.task_spend(TaskKey.of(INFO)) == PROJECTION + COST


def test_thread_paid_sums_by_agent_over_tasks_and_branches_only(journal: JournalBase) -> None:
    writer = Spend(usd_micros=10, output_tokens=5)
    journal.reserve_call(INFO, _projection(0))
    journal.log_call(INFO, _settlement(0))
    journal.reserve_call(INFO, _projection(1))  # never settled
    fork = INFO.patch(checkpoint_id="c2", task_id="def")
    journal.log_call(fork, _settlement(0, writer, agent="writer"))
    journal.reserve_call(fork, _projection(1, agent="writer"))
    journal.release_call(fork, 1)
    journal.log_call(INFO.patch(thread_id="t2"), _settlement(0))

    total, by_agent = journal.thread_paid("t1")

    assert by_agent == {"analyst": COST + PROJECTION, "writer": writer}
    assert total == COST + PROJECTION + writer == journal.thread_spend("t1")
    assert journal.thread_paid("t2") == (COST, {"analyst": COST})
    assert journal.thread_paid("nobody") == (Spend(), {})


def test_a_task_key_works_where_execution_info_does(journal: JournalBase) -> None:
    task = TaskKey.of(INFO)
    journal.reserve_call(task, _projection(0))
    journal.log_call(task, _settlement(0))
    journal.log_step(task, agent="analyst", hop=1, status="success", latency_us=5)

    assert journal.prior_calls(INFO) == (1, COST)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (
            lambda j: j.reserve_call(INFO, {"index": 0, "agent": "analyst"}),
            "reserve_call needs a projection with index, agent, usd_micros, input_tokens, "
            "output_tokens; this one has no usd_micros, input_tokens, output_tokens.",
        ),
        (
            lambda j: j.reserve_call(INFO, _projection(0, usd_micros=-1)),
            "spend.usd_micros must be a whole number >= 0, got -1.",
        ),
        (
            lambda j: j.release_call(INFO, -1),
            "call_index must be a whole number >= 0, got -1. Number the calls of one task "
            "0, 1, 2... in call order.",
        ),
        (
            lambda j: j.release_call(INFO.patch(thread_id=None), 0),
            "The graph runs without a checkpointer",
        ),
    ],
)
def test_bad_reservations_and_releases_say_what_to_pass(
    journal: JournalBase, call: Any, message: str
) -> None:
    with pytest.raises(ConfigurationError, match=re.escape(message)):
        call(journal)
    assert _rows(journal) == []


# -- SQLite: across processes, one indexed query ----------------------------------------


def test_a_reservation_a_dead_process_left_counts_for_the_next_one(tmp_path: Path) -> None:
    path = tmp_path / "checkpoints.sqlite"
    with Journal(path) as first:
        first.reserve_call(INFO, _projection(0))
        first.log_call(INFO, _settlement(0))
        first.reserve_call(INFO, _projection(1))
        # ... the process is killed during call 1: nothing settles or releases it.

    with Journal(path) as second:  # another process meets the thread
        assert second.thread_paid("t1") == (COST + PROJECTION, {"analyst": COST + PROJECTION})
        assert second.prior_calls(INFO) == (2, COST + PROJECTION)


def test_thread_paid_is_one_search_of_the_primary_keys_index(tmp_path: Path) -> None:
    with Journal(tmp_path / "journal.sqlite") as journal:
        journal.reserve_call(INFO, _projection(0))
    with sqlite3.connect(tmp_path / "journal.sqlite") as conn:
        plan = conn.execute(
            f"EXPLAIN QUERY PLAN SELECT agent, sum(usd_micros) FROM {CALLS_TABLE} "
            "WHERE thread_id = ? AND status != 'released' GROUP BY agent",
            ["t1"],
        ).fetchall()
    details = " ".join(row[-1] for row in plan)
    assert f"SEARCH {CALLS_TABLE} USING INDEX sqlite_autoindex_{CALLS_TABLE}_1 (thread_id=?)" in (
        details
    )


# -- async: the same calls, never on the event loop ----------------------------------------


@pytest.mark.parametrize("through", ["file", "saver"])
async def test_the_async_methods_run_off_the_event_loop(tmp_path: Path, through: str) -> None:
    path = tmp_path / "checkpoints.sqlite"
    with sqlite_saver(path) as saver:
        journal = Journal(path if through == "file" else saver)
        threads: set[int] = set()
        journal._conn.set_trace_callback(lambda sql: threads.add(threading.get_ident()))

        assert await journal.aprior_calls(INFO) == (0, Spend())
        assert await journal.areserve_call(INFO, _projection(0))
        assert await journal.alog_call(INFO, _settlement(0))
        assert await journal.areserve_call(INFO, _projection(1))
        assert await journal.arelease_call(INFO, 1)
        assert await journal.alog_step(INFO, agent="analyst", hop=1, status="success", latency_us=5)
        assert await journal.athread_paid("t1") == (COST, {"analyst": COST})
        assert await journal.athread_spend("t1") == COST

        journal._conn.set_trace_callback(None)
        assert threads and threading.get_ident() not in threads
        # Many at once: each in its own worker thread, all journaled.
        await asyncio.gather(
            *(journal.areserve_call(INFO.patch(task_id=f"t{i}"), _projection(0)) for i in range(20))
        )
        assert (await journal.athread_paid("t1"))[0] == COST + Spend(
            **{k: 20 * v for k, v in PROJECTION.to_dict().items()}
        )
        journal.close()


# -- graph tier: a guarded step's calls through retries and a crash ------------------------


class ProviderDown(Exception):
    """The provider refused the call before billing it (LangGraph retries the task)."""


class State(TypedDict, total=False):
    notes: list[str]


def _calling_graph(journal: Journal, *, use_async: bool) -> tuple[StateGraph[Any], list[int]]:
    """One node making one call per attempt, as a guarded step does around a model call:
    attempt 1 fails before billing (released, retried); attempt 2 dies mid-call (its
    reservation is left); the re-run after the crash settles its call."""
    attempts: list[int] = []

    def outcome(index: int) -> dict[str, Any] | None:
        attempts.append(index)
        if len(attempts) == 1:
            raise ProviderDown("503 before billing")
        if len(attempts) == 2:
            raise RuntimeError("the process died mid-call")
        return {"notes": ["done"]}

    def agent(state: State, runtime: Runtime) -> dict[str, Any]:
        info = runtime.execution_info
        index, _ = journal.prior_calls(info)
        journal.reserve_call(info, _projection(index))
        try:
            result = outcome(index)
        except ProviderDown:
            journal.release_call(info, index)
            raise
        journal.log_call(info, _settlement(index))
        return result or {}

    async def aagent(state: State, runtime: Runtime) -> dict[str, Any]:
        info = runtime.execution_info
        index, _ = await journal.aprior_calls(info)
        await journal.areserve_call(info, _projection(index))
        try:
            result = outcome(index)
        except ProviderDown:
            await journal.arelease_call(info, index)
            raise
        await journal.alog_call(info, _settlement(index))
        return result or {}

    builder = StateGraph(State)
    retry = RetryPolicy(retry_on=ProviderDown, initial_interval=0.01, jitter=False)
    builder.add_node("agent", aagent if use_async else agent, retry_policy=retry)
    builder.add_edge(START, "agent")
    return builder, attempts


def _assert_paid_once(journal: Journal, attempts: list[int]) -> None:
    assert attempts == [0, 1, 2]  # each attempt numbered its call after the earlier ones
    assert [(c["call_index"], c["status"]) for c in journal.calls("t1")] == [
        (0, "released"),
        (1, "reserved"),
        (2, "settled"),
    ]
    # The call that died mid-call may have been billed: it counts at its projection.
    assert journal.thread_paid("t1") == (PROJECTION + COST, {"analyst": PROJECTION + COST})


def test_a_step_retried_and_rerun_after_a_crash_pays_each_call_once(tmp_path: Path) -> None:
    config: Any = {"configurable": {"thread_id": "t1"}}
    with sqlite_saver(tmp_path / "checkpoints.sqlite") as saver:
        journal = Journal(saver)
        builder, attempts = _calling_graph(journal, use_async=False)
        graph = builder.compile(checkpointer=saver)

        with pytest.raises(RuntimeError, match="the process died mid-call"):
            graph.invoke({}, config, durability="sync")
        assert graph.invoke(None, config, durability="sync") == {"notes": ["done"]}

        _assert_paid_once(journal, attempts)
    with Journal(tmp_path / "checkpoints.sqlite") as another_process:
        assert another_process.thread_paid("t1")[0] == PROJECTION + COST


async def test_an_async_step_journals_the_same_off_the_loop(tmp_path: Path) -> None:
    path = tmp_path / "checkpoints.sqlite"
    config: Any = {"configurable": {"thread_id": "t1"}}
    with Journal(path) as journal:
        builder, attempts = _calling_graph(journal, use_async=True)
        async with async_sqlite_saver(path) as saver:
            graph = builder.compile(checkpointer=saver)
            with pytest.raises(RuntimeError, match="the process died mid-call"):
                await graph.ainvoke({}, config, durability="sync")
            assert await graph.ainvoke(None, config, durability="sync") == {"notes": ["done"]}

        _assert_paid_once(journal, attempts)
