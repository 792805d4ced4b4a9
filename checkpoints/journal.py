"""The journal: one row per model call and per guarded step, in the checkpoints' file.

Each model call is journaled at the moment of spending under the key
``(thread_id, checkpoint_ns, checkpoint_id, task_id, call_index)``. After a crash LangGraph
re-runs the interrupted task with the same ``task_id`` from the same parent
``checkpoint_id`` (FACTS.md), so the re-run's calls land on the same keys: a call journaled
before the crash is not counted again, and one that was not journaled is counted once.
``call_index`` numbers the calls inside one task run (0, 1, 2...), in the order the task
makes them.

A guarded step uses the journal as its :class:`~sanegraph.guards.budget.SpendJournal`,
keyed by ``runtime.execution_info``: before its first model call it asks
:meth:`Journal.prior_calls` what earlier attempts of the task journaled, counts that spend
against its budget and numbers its own calls after theirs (:meth:`Journal.log_call`), so
a re-run's calls, which are paid again, are journaled next to the earlier ones.

The tables are sqlite-utils tables prefixed ``sanegraph_`` (LangGraph's ``checkpoints`` and
``writes`` are never touched):

- ``sanegraph_model_calls``: primary key (thread_id, checkpoint_ns, checkpoint_id, task_id,
  call_index); agent, provider, model, input_tokens, output_tokens, usd_micros, created_at.
- ``sanegraph_steps``: primary key (thread_id, checkpoint_ns, checkpoint_id, task_id); agent,
  hop, status, latency_us, tripped (the trip kind, or NULL), created_at.

Open the journal on a file (its own connection, for any checkpointer, including
``AsyncSqliteSaver``), or on a sync ``SqliteSaver`` to write through the saver's own
connection and lock, in the same file as the checkpoints. Every write is one short
``BEGIN IMMEDIATE`` transaction; ``database is locked`` after the busy timeout is retried a
few times with a jittered back-off.

Amounts are :class:`sanegraph.guards.budget.Spend` (integer micro-dollars and tokens).
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from langgraph.checkpoint.sqlite import SqliteSaver
from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver
from langgraph.runtime import ExecutionInfo

from sanegraph.guards import ConfigurationError
from sanegraph.guards.budget import Spend, SpendJournal

from ._sqlite import SUM_SPEND, Store, connect, inserted
from ._values import SPEND_COLUMNS, nonempty_str, optional_str, spend_of, spend_row, whole_number
from .saver import DEFAULT_BUSY_TIMEOUT, StrPath

__all__ = ("CALLS_TABLE", "STEPS_TABLE", "Journal", "TaskKey")

CALLS_TABLE = "sanegraph_model_calls"
"""The journal's table of model calls (one row per call, idempotent key)."""

STEPS_TABLE = "sanegraph_steps"
"""The journal's table of guarded steps (one row per task run, idempotent key)."""

_TASK_COLUMNS = ("thread_id", "checkpoint_ns", "checkpoint_id", "task_id")
_KEY_WHERE = " AND ".join(f"{column} = ?" for column in _TASK_COLUMNS)
_TASK_CALLS = (
    f"SELECT coalesce(max(call_index) + 1, 0), {SUM_SPEND} FROM {CALLS_TABLE} WHERE {_KEY_WHERE}"
)
"""A task's next call index and the sums of its calls' spend, in one statement."""
_RECORD_KEYS = ("index", "agent", *SPEND_COLUMNS)
"""What :meth:`Journal.log_call` needs from a ``BudgetMeter.calls`` record."""


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskKey:
    """Which task run a step or a model call belongs to: the journal's idempotency key.

    Inside a node, build it from ``runtime.execution_info`` with :meth:`of`. A task that
    LangGraph re-runs after a crash keeps its key.

    Example:
        ```python
        def node(state: State, runtime: Runtime) -> dict:
            task = TaskKey.of(runtime.execution_info)
            journal.record_call(task, 0, agent="analyst", spend=spend)
        ```
    """

    thread_id: str
    """The thread (``config["configurable"]["thread_id"]``)."""
    checkpoint_ns: str = ""
    """The task's checkpoint namespace, as ``execution_info.checkpoint_ns`` gives it."""
    checkpoint_id: str
    """The parent checkpoint the task runs from."""
    task_id: str
    """LangGraph's task id."""

    def __post_init__(self) -> None:
        for column in _TASK_COLUMNS:
            value = getattr(self, column)
            if not isinstance(value, str) or (not value and column != "checkpoint_ns"):
                raise ConfigurationError(
                    f"TaskKey.{column} must be a non-empty str, got {value!r}. Build the key "
                    "inside a node with TaskKey.of(runtime.execution_info)."
                )

    @classmethod
    def of(cls, info: ExecutionInfo) -> TaskKey:
        """The key of the running task, from ``runtime.execution_info``.

        Raises:
            ConfigurationError: The graph runs without a checkpointer (no thread id).
        """
        if info.thread_id is None:
            raise ConfigurationError(
                "The graph runs without a checkpointer, so its tasks have no thread to "
                "journal under. Compile it with checkpointer=... and pass "
                "config={'configurable': {'thread_id': ...}}."
            )
        return cls(
            thread_id=info.thread_id,
            checkpoint_ns=info.checkpoint_ns,
            checkpoint_id=info.checkpoint_id,
            task_id=info.task_id,
        )

    def call_key(self, call_index: int) -> str:
        """A string naming one model call of this task (e.g. a ``SharedBudget`` key).

        A JSON array ``[thread_id, checkpoint_ns, checkpoint_id, task_id, call_index]``:
        unambiguous whatever the ids contain, and the same for the re-run of the task.
        """
        return json.dumps([*self._values(), _call_index(call_index)], separators=(",", ":"))

    def _values(self) -> tuple[str, str, str, str]:
        return (self.thread_id, self.checkpoint_ns, self.checkpoint_id, self.task_id)

    def _row(self) -> dict[str, Any]:
        return dict(zip(_TASK_COLUMNS, self._values(), strict=True))


# -- the I/O-free core ------------------------------------------------------------------


def _call_index(value: Any) -> int:
    return whole_number(
        value, "call_index", remedy="Number the calls of one task 0, 1, 2... in call order."
    )


# -- the journal ------------------------------------------------------------------------


class Journal(Store):
    """The model-call and step journal, in a SQLite file (sync; ``a*`` methods for async).

    It is the SQLite :class:`~sanegraph.guards.budget.SpendJournal`: a guarded step asks
    :meth:`prior_calls` what earlier attempts of its task spent, journals each metered call
    with :meth:`log_call` and the step with :meth:`log_step`.

    Args:
        target: A database file path, or a sync ``SqliteSaver`` whose connection and lock
            the journal shares (the journal then lives in the checkpoints' file and its
            writes never race the saver's).
        timeout: Seconds to wait for another connection's write lock (path only; the
            saver's connection keeps its own).

    Raises:
        ConfigurationError: ``target`` is neither a path nor a ``SqliteSaver``.

    Example:
        ```python
        with sqlite_saver("runs/checkpoints.sqlite") as saver:
            journal = Journal(saver)
            journal.record_call(task, 0, agent="analyst", spend=spend, model="gpt-4o")
            journal.thread_spend(task.thread_id).usd_micros
        ```
    """

    def __init__(
        self, target: StrPath | SqliteSaver, *, timeout: float = DEFAULT_BUSY_TIMEOUT
    ) -> None:
        self._saver: SqliteSaver | None = None
        self._own: sqlite3.Connection | None = None
        if isinstance(target, SqliteSaver):
            self._saver = target
            conn = target.conn
        elif isinstance(target, AsyncSqliteSaver):
            raise ConfigurationError(
                "Journal cannot write through an AsyncSqliteSaver: its connection belongs "
                "to its event loop. Open the journal on the same file instead: "
                "Journal('runs/checkpoints.sqlite'), and use its a* methods."
            )
        elif isinstance(target, (str, bytes)) or hasattr(target, "__fspath__"):
            conn = self._own = connect(target, timeout)
        else:
            raise ConfigurationError(
                f"Journal needs a SQLite file path or a SqliteSaver, got "
                f"{type(target).__name__}. Pass e.g. Journal('runs/checkpoints.sqlite')."
            )
        super().__init__(conn)  # its lock guards our own connection; a saver brings its own
        self._setup(self._create)

    # -- plumbing

    @contextmanager
    def _session(self) -> Iterator[None]:
        if self._saver is not None:
            # The saver's own context: its lock, its setup, a commit on the way out.
            with self._saver.cursor():
                yield
        else:
            with self._lock:
                yield

    def _create(self) -> None:
        db = self._db
        key = {column: str for column in _TASK_COLUMNS}
        counts = {column: int for column in SPEND_COLUMNS}
        db.table(CALLS_TABLE).create(
            {
                **key,
                "call_index": int,
                "agent": str,
                "provider": str,
                "model": str,
                **counts,
                "created_at": float,
            },
            pk=(*_TASK_COLUMNS, "call_index"),
            not_null={*_TASK_COLUMNS, "call_index", "agent", *SPEND_COLUMNS, "created_at"},
            if_not_exists=True,
        )
        db.table(STEPS_TABLE).create(
            {
                **key,
                "agent": str,
                "hop": int,
                "status": str,
                "latency_us": int,
                "tripped": str,
                "created_at": float,
            },
            pk=_TASK_COLUMNS,
            not_null={*_TASK_COLUMNS, "agent", "hop", "status", "latency_us", "created_at"},
            if_not_exists=True,
        )

    # -- writes

    def record_call(
        self,
        task: TaskKey,
        call_index: int,
        *,
        agent: str,
        spend: Spend,
        provider: str | None = None,
        model: str | None = None,
    ) -> bool:
        """Journal one model call of ``task``, once.

        Args:
            task: The task run making the call (:meth:`TaskKey.of`).
            call_index: The call's number within the task run: 0, 1, 2... in call order.
            agent: The guarded agent the call is attributed to.
            spend: What the call cost (tokens and micro-dollars).
            provider: The model provider (e.g. ``"openai"``), if known.
            model: The model name, if known.

        Returns:
            True if the call was journaled now; False if that key was already journaled
            (a re-run after a crash): the first record stands and nothing is counted twice.

        Raises:
            ConfigurationError: A value is not usable (negative counts, empty agent...).
        """
        row = {
            **task._row(),
            "call_index": _call_index(call_index),
            "agent": nonempty_str(agent, "agent"),
            "provider": optional_str(provider, "provider"),
            "model": optional_str(model, "model"),
            **spend_row(spend, "spend"),
            "created_at": time.time(),
        }
        table = self._db.table(CALLS_TABLE)
        return self._write(lambda: inserted(self._conn, lambda: table.insert(row, ignore=True)))

    def record_step(
        self,
        task: TaskKey,
        *,
        agent: str,
        hop: int,
        status: str,
        latency_us: int,
        tripped: str | None = None,
    ) -> bool:
        """Journal one guarded step (one task run).

        A re-run of the same task (a retry, a crash recovery) replaces the row: the journal
        shows the step's latest attempt.

        Args:
            task: The task run (:meth:`TaskKey.of`).
            agent: The guarded agent.
            hop: The thread's hop count after this step.
            status: How the step ended (e.g. the envelope status, or ``"tripped"``).
            latency_us: Wall-clock microseconds the step took.
            tripped: The trip kind (``"hop_cap"``, ``"budget"``...) or None.

        Returns:
            True if the step was not journaled before.

        Raises:
            ConfigurationError: A value is not usable.
        """
        row = {
            **task._row(),
            "agent": nonempty_str(agent, "agent"),
            "hop": whole_number(hop, "hop", remedy="Pass the thread's hop count after the step."),
            "status": nonempty_str(status, "status"),
            "latency_us": whole_number(latency_us, "latency_us", remedy="Pass whole microseconds."),
            "tripped": optional_str(tripped, "tripped"),
            "created_at": time.time(),
        }
        table = self._db.table(STEPS_TABLE)

        def upsert() -> bool:
            new = table.count_where(_KEY_WHERE, list(task._values())) == 0
            table.upsert(row, pk=_TASK_COLUMNS)
            return new

        return self._write(upsert)

    # -- reads

    def thread_spend(self, thread_id: str) -> Spend:
        """Everything the thread's journaled model calls cost (all tasks, all branches)."""
        sql = f"SELECT {SUM_SPEND} FROM {CALLS_TABLE} WHERE thread_id = ?"
        return self._read(lambda: spend_of(self._conn.execute(sql, [thread_id]).fetchone()))

    def task_spend(self, task: TaskKey) -> Spend:
        """What the journaled model calls of one task run cost."""
        return self._task_calls(task)[1]

    def _task_calls(self, task: TaskKey) -> tuple[int, Spend]:
        """The task's next call index (highest journaled + 1, or 0) and spend: one query."""
        values = list(task._values())

        def work() -> tuple[int, Spend]:
            next_index, *sums = self._conn.execute(_TASK_CALLS, values).fetchone()
            return int(next_index), spend_of(sums)

        return self._read(work)

    def calls(self, thread_id: str) -> list[dict[str, Any]]:
        """The thread's journaled model calls, oldest first, one dict per row."""
        table = self._db.table(CALLS_TABLE)
        return self._read(
            lambda: list(table.rows_where("thread_id = ?", [thread_id], order_by="rowid"))
        )

    def steps(self, thread_id: str) -> list[dict[str, Any]]:
        """The thread's journaled steps, oldest first, one dict per row."""
        table = self._db.table(STEPS_TABLE)
        return self._read(
            lambda: list(table.rows_where("thread_id = ?", [thread_id], order_by="rowid"))
        )

    # -- SpendJournal: what a guarded step calls, keyed by runtime.execution_info

    def prior_calls(self, info: ExecutionInfo) -> tuple[int, Spend]:
        """What earlier attempts of the running task journaled: ``(next call index, spend)``.

        The task is ``TaskKey.of(info)``. The next index is the highest journaled
        ``call_index`` + 1 (0 when the task journaled nothing, so ``(0, Spend())`` on a
        first attempt; an index a failed call left unjournaled is not reused), and
        ``spend`` is what those calls cost (:meth:`task_spend`). A re-run of the task
        numbers its calls from that index, so they add to the earlier attempts' spend.

        Args:
            info: The running task's ``runtime.execution_info``.

        Raises:
            ConfigurationError: The graph runs without a checkpointer.
        """
        return self._task_calls(TaskKey.of(info))

    def log_call(self, info: ExecutionInfo, record: Mapping[str, Any]) -> bool:
        """Journal one metered call of the running task, once (see :meth:`record_call`).

        Args:
            info: The running task's ``runtime.execution_info``.
            record: A ``BudgetMeter.calls`` record. Its ``index`` is the call index; its
                ``agent``, ``usd_micros``, ``input_tokens``, ``output_tokens`` and (when
                set) ``provider`` and ``model`` are journaled; other keys are not.

        Returns:
            True if the call was journaled now; False if ``(task, index)`` already was.

        Raises:
            ConfigurationError: The graph runs without a checkpointer, or the record lacks
                a key or holds an unusable value.
        """
        missing = [key for key in _RECORD_KEYS if key not in record]
        if missing:
            raise ConfigurationError(
                f"log_call needs a BudgetMeter.calls record with {', '.join(_RECORD_KEYS)}; "
                f"this one has no {', '.join(missing)}."
            )
        return self.record_call(
            TaskKey.of(info),
            record["index"],
            agent=record["agent"],
            spend=Spend(**{column: record[column] for column in SPEND_COLUMNS}),
            provider=record.get("provider"),
            model=record.get("model"),
        )

    def log_step(
        self,
        info: ExecutionInfo,
        *,
        agent: str,
        hop: int,
        status: str,
        latency_us: int,
        tripped: str | None = None,
    ) -> bool:
        """Journal the running task's guarded step: :meth:`record_step` under
        ``TaskKey.of(info)`` (a re-run replaces the row).

        Returns:
            True if the step was not journaled before.

        Raises:
            ConfigurationError: The graph runs without a checkpointer, or a value is not
                usable.
        """
        return self.record_step(
            TaskKey.of(info),
            agent=agent,
            hop=hop,
            status=status,
            latency_us=latency_us,
            tripped=tripped,
        )

    # -- async shell: the same calls in a worker thread, off the event loop

    async def arecord_call(
        self,
        task: TaskKey,
        call_index: int,
        *,
        agent: str,
        spend: Spend,
        provider: str | None = None,
        model: str | None = None,
    ) -> bool:
        """Async :meth:`record_call` (runs in a worker thread)."""
        return await asyncio.to_thread(
            self.record_call,
            task,
            call_index,
            agent=agent,
            spend=spend,
            provider=provider,
            model=model,
        )

    async def arecord_step(
        self,
        task: TaskKey,
        *,
        agent: str,
        hop: int,
        status: str,
        latency_us: int,
        tripped: str | None = None,
    ) -> bool:
        """Async :meth:`record_step` (runs in a worker thread)."""
        return await asyncio.to_thread(
            self.record_step,
            task,
            agent=agent,
            hop=hop,
            status=status,
            latency_us=latency_us,
            tripped=tripped,
        )

    async def athread_spend(self, thread_id: str) -> Spend:
        """Async :meth:`thread_spend` (runs in a worker thread)."""
        return await asyncio.to_thread(self.thread_spend, thread_id)

    # -- lifetime

    def close(self) -> None:
        """Close the journal's own connection (a saver's connection stays open)."""
        conn, self._own = self._own, None
        if conn is not None:
            conn.close()


if TYPE_CHECKING:
    # mypy checks here that Journal implements the protocol (isinstance only sees names).
    _spend_journal: type[SpendJournal] = Journal
