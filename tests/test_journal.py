"""The journal: idempotent model-call and step rows in the checkpoints' SQLite file,
written through the saver's own connection and lock while LangGraph checkpoints."""

from __future__ import annotations

import inspect
import json
import operator
import re
import sqlite3
from pathlib import Path
from typing import Annotated, Any, TypedDict

import pytest
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, StateGraph
from langgraph.runtime import ExecutionInfo, Runtime
from langgraph.types import Send

from sanegraph.checkpoints import Journal, TaskKey, async_sqlite_saver, sqlite_saver
from sanegraph.checkpoints._journal_core import (
    TASK_COLUMNS,
    JournalBase,
    call_row,
    record_values,
    released,
    settled,
    sum_prior_calls,
    sum_thread_paid,
    task_values,
)
from sanegraph.checkpoints.journal import CALLS_TABLE, STEPS_TABLE
from sanegraph.guards import Budget, ConfigurationError
from sanegraph.guards.budget import BudgetMeter, Spend, SpendJournal, metering
from sanegraph.guards.budget.spend import AsyncSpendJournal
from sanegraph.guards.testing import ScriptedChatModel

TASK = TaskKey(thread_id="t1", checkpoint_ns="agent:abc", checkpoint_id="c1", task_id="abc")
CALL = Spend(usd_micros=1_500, input_tokens=1_000, output_tokens=200)
INFO = ExecutionInfo(checkpoint_id="c1", checkpoint_ns="agent:abc", task_id="abc", thread_id="t1")
"""The ``runtime.execution_info`` of TASK (a plain frozen dataclass in LangGraph)."""


def _record(index: int, spend: Spend = CALL, **changes: Any) -> dict[str, Any]:
    """A call record shaped as ``BudgetMeter.calls`` gives it to ``on_call``."""
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
        "projected": Spend(usd_micros=2_000, input_tokens=1_000, output_tokens=256).to_dict(),
        "thread_id": "t1",
        "checkpoint_ns": "agent:abc",
        "node": "agent",
        **changes,
    }


def _tables(path: Path) -> dict[str, str]:
    with sqlite3.connect(path) as conn:
        rows = conn.execute("SELECT name, sql FROM sqlite_master WHERE type = 'table'")
        return dict(rows.fetchall())


# -- unit tier: keys and values ---------------------------------------------------------


def test_task_key_of_execution_info_and_call_key() -> None:
    info = ExecutionInfo(
        checkpoint_id="c1", checkpoint_ns="agent:abc", task_id="abc", thread_id="t1"
    )

    assert TaskKey.of(info) == TASK
    assert json.loads(TASK.call_key(2)) == ["t1", "agent:abc", "c1", "abc", 2]


def test_task_key_without_a_thread_says_to_add_a_checkpointer() -> None:
    info = ExecutionInfo(checkpoint_id="c1", checkpoint_ns="", task_id="abc")

    with pytest.raises(
        ConfigurationError,
        match=re.escape(
            "The graph runs without a checkpointer, so its tasks have no thread to journal "
            "under. Compile it with checkpointer=... and pass "
            "config={'configurable': {'thread_id': ...}}."
        ),
    ):
        TaskKey.of(info)


def test_task_key_rejects_an_empty_task_id() -> None:
    with pytest.raises(
        ConfigurationError,
        match=re.escape(
            "TaskKey.task_id must be a non-empty str, got ''. Build the key inside a node "
            "with TaskKey.of(runtime.execution_info)."
        ),
    ):
        TaskKey(thread_id="t1", checkpoint_id="c1", task_id="")


def test_the_core_sums_a_tasks_prior_calls_without_a_database() -> None:
    assert sum_prior_calls([]) == (0, Spend())
    rows = [
        call_row(TASK, index, agent="analyst", spend=CALL, provider=None, model=None, now=0.0)
        for index in (0, 2)  # call 1 failed unjournaled: its index stays used
    ]
    assert sum_prior_calls(rows) == (3, CALL + CALL)


def test_a_meter_record_becomes_a_checked_call_row() -> None:
    values = record_values(_record(4))
    row = call_row(TASK, values.pop("call_index"), **values, now=12.5)
    assert row == {
        "thread_id": "t1",
        "checkpoint_ns": "agent:abc",
        "checkpoint_id": "c1",
        "task_id": "abc",
        "call_index": 4,
        "agent": "analyst",
        "provider": "openai",
        "model": "gpt-4o",
        "status": "settled",
        **CALL.to_dict(),
        "projected_usd_micros": 2_000,
        "projected_input_tokens": 1_000,
        "projected_output_tokens": 256,
        "estimated": 0,
        "usage_details": None,
        "created_at": 12.5,
        "updated_at": 12.5,
    }
    with pytest.raises(ConfigurationError, match=re.escape("agent must be a non-empty str")):
        record = record_values(_record(0, agent=""))
        call_row(TASK, record.pop("call_index"), **record, now=0.0)


class MemoryJournal(JournalBase):
    """A journal store in six small methods: what a store for another database implements,
    applying the core's rules (``settled``, ``released``, the sums) to plain dicts."""

    def __init__(self) -> None:
        self.calls: dict[tuple[Any, ...], dict[str, Any]] = {}
        self.steps: dict[tuple[Any, ...], dict[str, Any]] = {}

    def _insert_call(self, row: dict[str, Any]) -> bool:
        key = tuple(row[c] for c in (*TASK_COLUMNS, "call_index"))
        return self.calls.setdefault(key, row) is row

    def _write(self, key: tuple[Any, ...], row: dict[str, Any] | None) -> bool:
        if row is not None:
            self.calls[key] = row
        return row is not None

    def _settle_call(self, row: dict[str, Any]) -> bool:
        key = tuple(row[c] for c in (*TASK_COLUMNS, "call_index"))
        return self._write(key, settled(self.calls.get(key), row))

    def _release_call(self, task: TaskKey, call_index: int, *, now: float) -> bool:
        key = (*task_values(task), call_index)
        return self._write(key, released(self.calls.get(key), now=now))

    def _upsert_step(self, row: dict[str, Any]) -> bool:
        key = tuple(row[c] for c in TASK_COLUMNS)
        new = key not in self.steps
        self.steps[key] = row
        return new

    def _task_calls(self, task: TaskKey) -> tuple[int, Spend]:
        return sum_prior_calls(row for k, row in self.calls.items() if k[:4] == task_values(task))

    def _thread_paid(self, thread_id: str) -> tuple[Spend, dict[str, Spend]]:
        return sum_thread_paid(row for k, row in self.calls.items() if k[0] == thread_id)


def test_a_store_of_six_methods_is_a_spend_journal_with_the_same_rules() -> None:
    journal = MemoryJournal()
    assert isinstance(journal, SpendJournal)
    assert journal.log_call(INFO, _record(0))
    assert not journal.log_call(INFO, _record(0, Spend(usd_micros=9)))
    assert journal.log_call(INFO, _record(2))
    assert journal.prior_calls(INFO.patch(node_attempt=2)) == (3, CALL + CALL)
    assert journal.log_step(INFO, agent="analyst", hop=1, status="success", latency_us=5)
    assert not journal.log_step(INFO, agent="analyst", hop=1, status="failed", latency_us=7)
    assert [row["status"] for row in journal.steps.values()] == ["failed"]
    with pytest.raises(ConfigurationError, match=re.escape("this one has no index.")):
        journal.log_call(INFO, {k: v for k, v in _record(0).items() if k != "index"})


# -- the journal on a file --------------------------------------------------------------


def test_the_same_call_key_twice_is_one_row_and_counted_once(tmp_path: Path) -> None:
    with Journal(tmp_path / "runs" / "journal.sqlite") as journal:
        first = journal.record_call(TASK, 0, agent="analyst", spend=CALL, model="gpt-4o")
        again = journal.record_call(TASK, 0, agent="analyst", spend=Spend(usd_micros=9))

        assert (first, again) == (True, False)
        assert journal.thread_spend("t1") == CALL
        assert journal.task_spend(TASK) == CALL
        assert [(c["call_index"], c["usd_micros"], c["model"]) for c in journal.calls("t1")] == [
            (0, 1_500, "gpt-4o")
        ]


def test_spend_sums_calls_tasks_and_threads_apart(tmp_path: Path) -> None:
    other_task = TaskKey(thread_id="t1", checkpoint_id="c2", task_id="def")
    other_thread = TaskKey(thread_id="t2", checkpoint_id="c1", task_id="abc")
    with Journal(tmp_path / "journal.sqlite") as journal:
        journal.record_call(TASK, 0, agent="analyst", spend=CALL)
        journal.record_call(TASK, 1, agent="analyst", spend=CALL)
        journal.record_call(other_task, 0, agent="writer", spend=Spend(usd_micros=7))
        journal.record_call(other_thread, 0, agent="analyst", spend=CALL)

        assert journal.task_spend(TASK) == CALL + CALL
        assert journal.thread_spend("t1") == CALL + CALL + Spend(usd_micros=7)
        assert journal.thread_spend("t2") == CALL
        assert journal.thread_spend("nobody") == Spend()
        assert [(c["task_id"], c["call_index"], c["agent"]) for c in journal.calls("t1")] == [
            ("abc", 0, "analyst"),
            ("abc", 1, "analyst"),
            ("def", 0, "writer"),
        ]


def test_a_step_rerun_replaces_its_row(tmp_path: Path) -> None:
    with Journal(tmp_path / "journal.sqlite") as journal:
        first = journal.record_step(
            TASK, agent="analyst", hop=3, status="failed", latency_us=1_200, tripped="hop_cap"
        )
        again = journal.record_step(TASK, agent="analyst", hop=3, status="success", latency_us=900)

        assert (first, again) == (True, False)
        assert [
            (s["agent"], s["hop"], s["status"], s["latency_us"], s["tripped"])
            for s in journal.steps("t1")
        ] == [("analyst", 3, "success", 900, None)]


def test_two_journals_on_one_file_see_each_other(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite"
    with Journal(path) as one, Journal(path) as two:
        assert one.record_call(TASK, 0, agent="analyst", spend=CALL)
        assert not two.record_call(TASK, 0, agent="analyst", spend=CALL)
        assert two.thread_spend("t1") == CALL


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"spend": Spend(usd_micros=-1)},
            "spend.usd_micros must be a whole number >= 0, got -1. Pass e.g. "
            "Spend(usd_micros=1_500, input_tokens=1_000, output_tokens=200).",
        ),
        (
            {"spend": {"usd_micros": 1}},
            "spend must have usd_micros, input_tokens and output_tokens, got dict.",
        ),
        ({"agent": ""}, "agent must be a non-empty str, got ''."),
        (
            {"call_index": -1},
            "call_index must be a whole number >= 0, got -1. Number the calls of one task "
            "0, 1, 2... in call order.",
        ),
    ],
)
def test_bad_call_values_say_what_to_pass(
    tmp_path: Path, kwargs: dict[str, Any], message: str
) -> None:
    call: dict[str, Any] = {"call_index": 0, "agent": "analyst", "spend": CALL, **kwargs}
    with Journal(tmp_path / "journal.sqlite") as journal:
        with pytest.raises(ConfigurationError, match=re.escape(message)):
            journal.record_call(TASK, call.pop("call_index"), **call)
        assert journal.calls("t1") == []


def test_a_checkpointer_that_is_not_sqlite_is_refused() -> None:
    with pytest.raises(
        ConfigurationError,
        match=re.escape(
            "Journal needs a SQLite file path or a SqliteSaver, got InMemorySaver. "
            "Pass e.g. Journal('runs/checkpoints.sqlite')."
        ),
    ):
        Journal(InMemorySaver())  # type: ignore[arg-type]


async def test_an_async_saver_is_refused_naming_the_path_form(tmp_path: Path) -> None:
    async with async_sqlite_saver(tmp_path / "checkpoints.sqlite") as saver:
        with pytest.raises(
            ConfigurationError,
            match=re.escape(
                "Journal cannot write through an AsyncSqliteSaver: its connection belongs to "
                "its event loop. Open the journal on the same file instead: "
                "Journal('runs/checkpoints.sqlite'), and use its a* methods."
            ),
        ):
            Journal(saver)  # type: ignore[arg-type]


# -- the SpendJournal methods, keyed by runtime.execution_info ---------------------------


@pytest.mark.parametrize("protocol", [SpendJournal, AsyncSpendJournal])
def test_the_journal_is_a_spend_journal_with_the_protocols_signatures(
    tmp_path: Path, protocol: type
) -> None:
    with Journal(tmp_path / "journal.sqlite") as journal:
        assert isinstance(journal, protocol)
    methods = [name for name in vars(protocol) if not name.startswith("_")]
    assert len(methods) == 6
    for method in methods:
        expected = inspect.signature(getattr(protocol, method)).parameters.values()
        actual = inspect.signature(getattr(Journal, method)).parameters.values()
        assert [(p.name, p.kind) for p in actual] == [(p.name, p.kind) for p in expected], method
        is_async = inspect.iscoroutinefunction(getattr(Journal, method))
        assert is_async == (protocol is AsyncSpendJournal), method


def test_a_first_attempt_has_no_prior_calls(tmp_path: Path) -> None:
    with Journal(tmp_path / "journal.sqlite") as journal:
        assert journal.prior_calls(INFO) == (0, Spend())


def test_a_rerun_continues_at_the_next_index_with_the_prior_spend(tmp_path: Path) -> None:
    second = Spend(usd_micros=700, input_tokens=300, output_tokens=40)
    with Journal(tmp_path / "journal.sqlite") as journal:
        # The first attempt: two calls journaled, then the process dies.
        assert journal.log_call(INFO, _record(0))
        assert journal.log_call(INFO, _record(1, second))
        # Other tasks and threads, and another attempt number, do not change the task's key.
        journal.log_call(INFO.patch(task_id="def"), _record(0, Spend(usd_micros=9)))
        journal.log_call(INFO.patch(thread_id="t2"), _record(5, Spend(usd_micros=9)))
        rerun = INFO.patch(node_attempt=2, run_id="another-run")

        assert journal.prior_calls(rerun) == (2, CALL + second)

        # The re-run's calls are numbered after the first attempt's and add to its spend.
        assert journal.log_call(rerun, _record(2))
        assert journal.prior_calls(INFO) == (3, CALL + second + CALL)
        assert journal.task_spend(TASK) == CALL + second + CALL
        assert [
            (c["task_id"], c["call_index"], c["agent"], c["provider"], c["model"])
            for c in journal.calls("t1")
        ] == [
            ("abc", 0, "analyst", "openai", "gpt-4o"),
            ("abc", 1, "analyst", "openai", "gpt-4o"),
            ("def", 0, "analyst", "openai", "gpt-4o"),
            ("abc", 2, "analyst", "openai", "gpt-4o"),
        ]


def test_the_next_index_follows_the_highest_even_after_a_gap(tmp_path: Path) -> None:
    # Call 1 failed (no record): its index stays used, as the meter numbered it at start.
    with Journal(tmp_path / "journal.sqlite") as journal:
        journal.log_call(INFO, _record(0))
        journal.log_call(INFO, _record(2))

        assert journal.prior_calls(INFO) == (3, CALL + CALL)


def test_the_sqlite_query_sums_prior_calls_as_the_core_does(tmp_path: Path) -> None:
    with Journal(tmp_path / "journal.sqlite") as journal:
        for index in (0, 2):
            journal.log_call(INFO, _record(index))
        journal.log_call(INFO.patch(task_id="def"), _record(7))
        rows = [call for call in journal.calls("t1") if call["task_id"] == "abc"]

        assert journal.prior_calls(INFO) == sum_prior_calls(rows) == (3, CALL + CALL)


def test_logging_a_call_twice_journals_it_once(tmp_path: Path) -> None:
    with Journal(tmp_path / "journal.sqlite") as journal:
        first = journal.log_call(INFO, _record(0))
        again = journal.log_call(INFO, _record(0, Spend(usd_micros=9), model="other"))

        assert (first, again) == (True, False)
        assert journal.prior_calls(INFO) == (1, CALL)
        assert [(c["call_index"], c["usd_micros"], c["model"]) for c in journal.calls("t1")] == [
            (0, 1_500, "gpt-4o")
        ]


def test_a_record_without_provider_or_model_is_journaled_with_nulls(tmp_path: Path) -> None:
    record = _record(0, provider=None)
    del record["model"]
    with Journal(tmp_path / "journal.sqlite") as journal:
        assert journal.log_call(INFO, record)
        assert [(c["provider"], c["model"]) for c in journal.calls("t1")] == [(None, None)]


def test_a_record_missing_a_key_says_what_the_journal_needs(tmp_path: Path) -> None:
    record = _record(0)
    del record["index"], record["usd_micros"]
    with Journal(tmp_path / "journal.sqlite") as journal:
        with pytest.raises(
            ConfigurationError,
            match=re.escape(
                "log_call needs a BudgetMeter.calls record with index, agent, usd_micros, "
                "input_tokens, output_tokens; this one has no index, usd_micros."
            ),
        ):
            journal.log_call(INFO, record)
        assert journal.calls("t1") == []


def test_log_step_journals_the_tasks_latest_attempt(tmp_path: Path) -> None:
    with Journal(tmp_path / "journal.sqlite") as journal:
        first = journal.log_step(
            INFO, agent="analyst", hop=3, status="not_run", latency_us=80, tripped="budget"
        )
        again = journal.log_step(
            INFO.patch(node_attempt=2), agent="analyst", hop=3, status="success", latency_us=900
        )

        assert (first, again) == (True, False)
        assert [
            (s["task_id"], s["agent"], s["hop"], s["status"], s["latency_us"], s["tripped"])
            for s in journal.steps("t1")
        ] == [("abc", "analyst", 3, "success", 900, None)]


def test_the_spend_journal_methods_need_a_checkpointed_thread(tmp_path: Path) -> None:
    unthreaded = INFO.patch(thread_id=None)
    message = re.escape("The graph runs without a checkpointer")
    with Journal(tmp_path / "journal.sqlite") as journal:
        with pytest.raises(ConfigurationError, match=message):
            journal.prior_calls(unthreaded)
        with pytest.raises(ConfigurationError, match=message):
            journal.log_call(unthreaded, _record(0))
        with pytest.raises(ConfigurationError, match=message):
            journal.log_step(unthreaded, agent="analyst", hop=1, status="success", latency_us=1)
        assert (journal.calls("t1"), journal.steps("t1")) == ([], [])


# -- graph tier: the journal inside a checkpointed LangGraph run ------------------------


class State(TypedDict, total=False):
    topic: str
    notes: Annotated[list[str], operator.add]


def _journaling_graph(journal: Journal, *, fail_once: list[bool] | None = None) -> Any:
    """research -> fan-out of three writers, each journaling one model call."""
    returned: list[bool] = []

    def research(state: State, runtime: Runtime) -> dict[str, Any]:
        task = TaskKey.of(runtime.execution_info)
        returned.append(journal.record_call(task, 0, agent="research", spend=CALL))
        returned.append(journal.record_call(task, 1, agent="research", spend=CALL))
        journal.record_step(task, agent="research", hop=1, status="success", latency_us=10)
        if fail_once:
            fail_once.pop()
            raise RuntimeError("the process died after spending")
        return {"notes": ["researched"]}

    def fan_out(state: State) -> list[Send]:
        return [Send("write", {"topic": f"part {i}"}) for i in range(3)]

    def write(state: State, runtime: Runtime) -> dict[str, Any]:
        task = TaskKey.of(runtime.execution_info)
        journal.record_call(task, 0, agent="write", spend=Spend(usd_micros=10, output_tokens=5))
        return {"notes": [state["topic"]]}

    builder = StateGraph(State)
    builder.add_node("research", research)
    builder.add_node("write", write)
    builder.add_edge(START, "research")
    builder.add_conditional_edges("research", fan_out, ["write"])
    builder.add_edge("write", END)
    builder.returned = returned  # type: ignore[attr-defined]
    return builder


def test_the_journal_shares_the_savers_connection_while_the_graph_checkpoints(
    tmp_path: Path,
) -> None:
    path = tmp_path / "runs" / "checkpoints.sqlite"
    config: Any = {"configurable": {"thread_id": "t1"}}
    with sqlite_saver(path) as saver:
        langgraph_tables = _tables(path)
        journal = Journal(saver)
        graph = _journaling_graph(journal).compile(checkpointer=saver)

        result = graph.invoke({"topic": "tides"}, config, durability="sync")

        assert sorted(result["notes"]) == ["part 0", "part 1", "part 2", "researched"]
        assert journal.thread_spend("t1") == CALL + CALL + Spend(usd_micros=30, output_tokens=15)
        parents = {c["checkpoint_id"] for c in journal.calls("t1")}
        history = {
            s.config["configurable"]["checkpoint_id"] for s in graph.get_state_history(config)
        }
        assert parents <= history  # each call names the checkpoint its task ran from
        assert graph.get_state(config).values["topic"] == "tides"
    tables = _tables(path)
    # LangGraph's own tables are exactly as it created them; ours sit next to them.
    assert {name: tables[name] for name in langgraph_tables} == langgraph_tables
    assert set(tables) - set(langgraph_tables) == {CALLS_TABLE, STEPS_TABLE}


def test_a_rerun_task_keeps_its_keys_so_spend_is_counted_once(tmp_path: Path) -> None:
    config: Any = {"configurable": {"thread_id": "t1"}}
    with sqlite_saver(tmp_path / "checkpoints.sqlite") as saver:
        journal = Journal(saver)
        builder = _journaling_graph(journal, fail_once=[True])
        graph = builder.compile(checkpointer=saver)

        with pytest.raises(RuntimeError, match="the process died after spending"):
            graph.invoke({"topic": "tides"}, config, durability="sync")
        graph.invoke(None, config, durability="sync")

        # Same task id and parent checkpoint on the re-run: both calls were already there.
        assert builder.returned == [True, True, False, False]
        research = [c for c in journal.calls("t1") if c["agent"] == "research"]
        assert [c["call_index"] for c in research] == [0, 1]
        assert journal.thread_spend("t1").usd_micros == 2 * 1_500 + 3 * 10
        assert len(journal.steps("t1")) == 1


def test_a_path_journal_reads_what_the_saver_journal_wrote(tmp_path: Path) -> None:
    path = tmp_path / "checkpoints.sqlite"
    config: Any = {"configurable": {"thread_id": "t1"}}
    with sqlite_saver(path) as saver, Journal(path) as reader:
        graph = _journaling_graph(Journal(saver)).compile(checkpointer=saver)
        graph.invoke({"topic": "tides"}, config, durability="sync")

        assert reader.thread_spend("t1") == CALL + CALL + Spend(usd_micros=30, output_tokens=15)


async def test_an_async_graph_journals_next_to_an_async_saver(tmp_path: Path) -> None:
    path = tmp_path / "checkpoints.sqlite"
    config: Any = {"configurable": {"thread_id": "t1"}}
    journal = Journal(path)

    async def agent(state: State, runtime: Runtime) -> dict[str, Any]:
        task = TaskKey.of(runtime.execution_info)
        await journal.arecord_call(task, 0, agent="agent", spend=CALL, provider="openai")
        await journal.arecord_step(task, agent="agent", hop=1, status="success", latency_us=5)
        return {"notes": ["done"]}

    builder = StateGraph(State)
    builder.add_node("agent", agent)
    builder.add_edge(START, "agent")
    async with async_sqlite_saver(path) as saver:
        graph = builder.compile(checkpointer=saver)
        await graph.ainvoke({"topic": "tides"}, config, durability="sync")
        state = await graph.aget_state(config)

    assert state.values["notes"] == ["done"]
    assert await journal.athread_spend("t1") == CALL
    assert [(c["agent"], c["provider"]) for c in journal.calls("t1")] == [("agent", "openai")]
    journal.close()


def test_a_metered_task_rerun_after_a_crash_keeps_its_prior_spend_once(tmp_path: Path) -> None:
    """What a guarded step does: prior_calls first, then BudgetMeter(first_call=...) with
    on_call=log_call. The re-run's calls follow the first attempt's; nothing is lost."""
    config: Any = {"configurable": {"thread_id": "t1"}}
    model = ScriptedChatModel(["first answer", "second answer", "third answer"], max_tokens=64)
    crash = [True]
    prior: list[tuple[int, Spend]] = []
    metered: list[list[dict[str, Any]]] = []

    with sqlite_saver(tmp_path / "checkpoints.sqlite") as saver:
        journal = Journal(saver)

        def agent(state: State, runtime: Runtime) -> dict[str, Any]:
            info = runtime.execution_info
            first, spent = journal.prior_calls(info)
            prior.append((first, spent))
            meter = BudgetMeter(
                Budget(usd=5),
                agent="analyst",
                first_call=first,
                on_call=lambda record: journal.log_call(info, record),
            )
            with metering(meter):
                try:
                    model.invoke("question one")
                    if crash:
                        crash.pop()
                        raise RuntimeError("the process died after spending")
                    model.invoke("question two")
                finally:
                    metered.append(meter.calls)
            return {"notes": ["done"]}

        builder = StateGraph(State)
        builder.add_node("agent", agent)
        builder.add_edge(START, "agent")
        graph = builder.compile(checkpointer=saver)

        with pytest.raises(RuntimeError, match="the process died after spending"):
            graph.invoke({"topic": "tides"}, config, durability="sync")
        graph.invoke(None, config, durability="sync")

        def spend(records: list[dict[str, Any]]) -> Spend:
            fields = ("usd_micros", "input_tokens", "output_tokens")
            return Spend(**{field: sum(r[field] for r in records) for field in fields})

        attempt_one, attempt_two = metered
        assert [r["index"] for r in attempt_one] == [0]
        assert [r["index"] for r in attempt_two] == [1, 2]
        assert prior == [(0, Spend()), (1, spend(attempt_one))]
        assert spend(attempt_one).usd_micros > 0
        assert [(c["call_index"], c["agent"], c["model"]) for c in journal.calls("t1")] == [
            (0, "analyst", "gpt-4o-mini"),
            (1, "analyst", "gpt-4o-mini"),
            (2, "analyst", "gpt-4o-mini"),
        ]
        assert journal.thread_spend("t1") == spend(attempt_one + attempt_two)
        assert graph.get_state(config).values["notes"] == ["done"]
