"""The journal: one row per model call and per guarded step, in the checkpoints' file.

Each model call is journaled at the moment of spending under the key
``(thread_id, checkpoint_ns, checkpoint_id, task_id, call_index)``. After a crash LangGraph
re-runs the interrupted task with the same ``task_id`` from the same parent
``checkpoint_id`` (FACTS.md), so the re-run's calls land on the same keys: a call journaled
before the crash is not counted again, and one that was not journaled is counted once.
``call_index`` numbers the calls inside one task run (0, 1, 2...), in the order the task
makes them.

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
import random
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import TracebackType
from typing import Any, TypeVar

import sqlite_utils
from langgraph.checkpoint.sqlite import SqliteSaver
from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver
from langgraph.runtime import ExecutionInfo

from sanegraph.guards import ConfigurationError
from sanegraph.guards.budget import Spend

from .saver import _PRAGMAS, DEFAULT_BUSY_TIMEOUT, StrPath, _database, _timeout

__all__ = ("CALLS_TABLE", "STEPS_TABLE", "Journal", "TaskKey")

CALLS_TABLE = "sanegraph_model_calls"
"""The journal's table of model calls (one row per call, idempotent key)."""

STEPS_TABLE = "sanegraph_steps"
"""The journal's table of guarded steps (one row per task run, idempotent key)."""

_TASK_COLUMNS = ("thread_id", "checkpoint_ns", "checkpoint_id", "task_id")
_SPEND_FIELDS = ("usd_micros", "input_tokens", "output_tokens")
_RETRIES = 4
"""How many times a transaction that found the database locked is tried again."""

T = TypeVar("T")


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
        for name in _TASK_COLUMNS:
            value = getattr(self, name)
            if not isinstance(value, str) or (not value and name != "checkpoint_ns"):
                raise ConfigurationError(
                    f"TaskKey.{name} must be a non-empty str, got {value!r}. Build the key "
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


def _whole(value: Any, field: str, remedy: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigurationError(f"{field} must be a whole number >= 0, got {value!r}. {remedy}")
    return value


def _call_index(value: Any) -> int:
    return _whole(value, "call_index", "Number the calls of one task 0, 1, 2... in call order.")


def _spend_row(spend: Spend, what: str) -> dict[str, int]:
    """``{usd_micros, input_tokens, output_tokens}`` of ``spend``, checked."""
    remedy = "Pass e.g. Spend(usd_micros=1_500, input_tokens=1_000, output_tokens=200)."
    row = {}
    for field in _SPEND_FIELDS:
        if not hasattr(spend, field):
            raise ConfigurationError(
                f"{what} must have usd_micros, input_tokens and output_tokens, got "
                f"{type(spend).__name__}. {remedy}"
            )
        row[field] = _whole(getattr(spend, field), f"{what}.{field}", remedy)
    return row


def _name(value: Any, field: str) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigurationError(f"{field} must be a non-empty str, got {value!r}.")
    return value


def _optional_name(value: Any, field: str) -> str | None:
    return None if value is None else _name(value, field)


def _sum_spend(row: tuple[Any, ...] | None) -> Spend:
    usd, inp, out = row or (0, 0, 0)
    return Spend(usd_micros=int(usd or 0), input_tokens=int(inp or 0), output_tokens=int(out or 0))


# -- SQLite plumbing shared with pool.py ------------------------------------------------


def _connect(path: StrPath, timeout: float) -> sqlite3.Connection:
    """A connection on ``path`` set up like the saver's: WAL, synchronous=NORMAL, timeout."""
    conn = sqlite3.connect(_database(path), timeout=_timeout(timeout), check_same_thread=False)
    try:
        for pragma in _PRAGMAS:
            conn.execute(pragma)
    except BaseException:
        conn.close()
        raise
    return conn


def _utils(conn: sqlite3.Connection) -> sqlite_utils.Database:
    # No pragma and no plugin hook: the connection may be the checkpointer's.
    return sqlite_utils.Database(conn, recursive_triggers=False, execute_plugins=False)


def _locked(error: sqlite3.OperationalError) -> bool:
    text = str(error)
    return "database is locked" in text or "database is busy" in text


def _retrying(conn: sqlite3.Connection, work: Callable[[], T], *, write: bool) -> T:
    """Run ``work`` (in one ``BEGIN IMMEDIATE`` transaction when ``write``), retrying locks.

    The busy timeout already waited for the other writer; when it ran out, the whole
    transaction is tried again after a short jittered back-off (``_RETRIES`` times).
    """
    for attempt in range(_RETRIES + 1):
        try:
            if not write:
                return work()
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = work()
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            return result
        except sqlite3.OperationalError as error:
            if not _locked(error) or attempt == _RETRIES:
                raise
            time.sleep(random.uniform(0.01, 0.05) * 2**attempt)
    raise AssertionError("unreachable")  # pragma: no cover


def _changes(conn: sqlite3.Connection, insert: Callable[[], object]) -> bool:
    """Whether ``insert`` (an ``insert(..., ignore=True)``) added a row."""
    before = conn.total_changes
    insert()
    return conn.total_changes > before


# -- the journal ------------------------------------------------------------------------


class Journal:
    """The model-call and step journal, in a SQLite file (sync; ``a*`` methods for async).

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
        self._lock = threading.Lock()  # guards our own connection; a saver brings its lock
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
            conn = self._own = _connect(target, timeout)
        else:
            raise ConfigurationError(
                f"Journal needs a SQLite file path or a SqliteSaver, got "
                f"{type(target).__name__}. Pass e.g. Journal('runs/checkpoints.sqlite')."
            )
        self._conn = conn
        self._db = _utils(conn)
        try:
            self._write(self._create)
        except BaseException:
            self.close()
            raise

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

    def _write(self, work: Callable[[], T]) -> T:
        with self._session():
            return _retrying(self._conn, work, write=True)

    def _read(self, work: Callable[[], T]) -> T:
        with self._session():
            return _retrying(self._conn, work, write=False)

    def _create(self) -> None:
        db = self._db
        key = {name: str for name in _TASK_COLUMNS}
        counts = {name: int for name in _SPEND_FIELDS}
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
            not_null={*_TASK_COLUMNS, "call_index", "agent", *_SPEND_FIELDS, "created_at"},
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
            "agent": _name(agent, "agent"),
            "provider": _optional_name(provider, "provider"),
            "model": _optional_name(model, "model"),
            **_spend_row(spend, "spend"),
            "created_at": time.time(),
        }
        table = self._db.table(CALLS_TABLE)
        return self._write(lambda: _changes(self._conn, lambda: table.insert(row, ignore=True)))

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
            "agent": _name(agent, "agent"),
            "hop": _whole(hop, "hop", "Pass the thread's hop count after the step."),
            "status": _name(status, "status"),
            "latency_us": _whole(latency_us, "latency_us", "Pass whole microseconds."),
            "tripped": _optional_name(tripped, "tripped"),
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
        sql = f"SELECT {_SUMS} FROM {CALLS_TABLE} WHERE thread_id = ?"
        return self._read(lambda: _sum_spend(self._conn.execute(sql, [thread_id]).fetchone()))

    def task_spend(self, task: TaskKey) -> Spend:
        """What the journaled model calls of one task run cost."""
        sql = f"SELECT {_SUMS} FROM {CALLS_TABLE} WHERE {_KEY_WHERE}"
        values = list(task._values())
        return self._read(lambda: _sum_spend(self._conn.execute(sql, values).fetchone()))

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

    def __enter__(self) -> Journal:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


_SUMS = ", ".join(f"coalesce(sum({field}), 0)" for field in _SPEND_FIELDS)
_KEY_WHERE = " AND ".join(f"{name} = ?" for name in _TASK_COLUMNS)
