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
``BEGIN IMMEDIATE`` transaction of plain SQL; ``database is locked`` after the busy timeout
is retried a few times with a jittered back-off, with no lock held.

Amounts are :class:`sanegraph.guards.budget.Spend` (integer micro-dollars and tokens).

Keys, rows, their checks and the ``SpendJournal`` methods are the I/O-free core in
``_journal_core.py`` (:class:`~sanegraph.checkpoints._journal_core.JournalBase`);
:class:`Journal` is its SQLite store: the tables, the SQL and the connection.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import sqlite_utils
from langgraph.checkpoint.sqlite import SqliteSaver
from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

from sanegraph.guards import ConfigurationError
from sanegraph.guards._compat import sqlite_connection
from sanegraph.guards.budget import Spend, SpendJournal

from ._journal_core import (
    CALLS_TABLE,
    STEPS_TABLE,
    TASK_COLUMNS,
    JournalBase,
    TaskKey,
    prior_of_sums,
    task_values,
)
from ._sqlite import SUM_SPEND, Store, connect, insert
from ._values import SPEND_COLUMNS, spend_of
from .saver import DEFAULT_BUSY_TIMEOUT, StrPath

__all__ = ("CALLS_TABLE", "STEPS_TABLE", "Journal", "TaskKey")

_KEY_WHERE = " AND ".join(f"{column} = ?" for column in TASK_COLUMNS)
_TASK_CALLS = (
    f"SELECT coalesce(max(call_index) + 1, 0), {SUM_SPEND} FROM {CALLS_TABLE} WHERE {_KEY_WHERE}"
)
"""A task's next call index and the sums of its calls' spend, in one statement (the rule
of ``sum_prior_calls``)."""
_STEP_VALUES = ("agent", "hop", "status", "latency_us", "tripped", "created_at")
_UPDATE_STEP = (
    f"UPDATE {STEPS_TABLE} SET {', '.join(f'{column} = ?' for column in _STEP_VALUES)} "
    f"WHERE {_KEY_WHERE}"
)


def _create_tables(db: sqlite_utils.Database) -> None:
    key = dict.fromkeys(TASK_COLUMNS, str)
    counts = dict.fromkeys(SPEND_COLUMNS, int)
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
        pk=(*TASK_COLUMNS, "call_index"),
        not_null={*TASK_COLUMNS, "call_index", "agent", *SPEND_COLUMNS, "created_at"},
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
        pk=TASK_COLUMNS,
        not_null={*TASK_COLUMNS, "agent", "hop", "status", "latency_us", "created_at"},
        if_not_exists=True,
    )


class Journal(JournalBase, Store):
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
            conn = sqlite_connection(target)
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
        self._setup(lambda: _create_tables(self._db))

    @contextmanager
    def _session(self) -> Iterator[None]:
        if self._saver is not None:
            # The saver's own context: its lock, its setup, a commit on the way out.
            with self._saver.cursor():
                yield
        else:
            with self._lock:
                yield

    # -- the store's part of JournalBase: plain SQL (sqlite-utils' table methods re-read
    # the schema on every call, inside the write lock)

    def _insert_call(self, row: dict[str, Any]) -> bool:
        return self._write(lambda: insert(self._conn, CALLS_TABLE, row, ignore=True))

    def _upsert_step(self, row: dict[str, Any]) -> bool:
        update = [*(row[column] for column in _STEP_VALUES), *(row[c] for c in TASK_COLUMNS)]

        def upsert() -> bool:
            if insert(self._conn, STEPS_TABLE, row, ignore=True):
                return True
            self._conn.execute(_UPDATE_STEP, update)
            return False

        return self._write(upsert)

    def _task_calls(self, task: TaskKey) -> tuple[int, Spend]:
        """The task's next call index and spend (``sum_prior_calls``): one query."""
        values = list(task_values(task))
        return self._read(lambda: prior_of_sums(self._conn.execute(_TASK_CALLS, values).fetchone()))

    # -- reads

    def thread_spend(self, thread_id: str) -> Spend:
        """Everything the thread's journaled model calls cost (all tasks, all branches)."""
        sql = f"SELECT {SUM_SPEND} FROM {CALLS_TABLE} WHERE thread_id = ?"
        return self._read(lambda: spend_of(self._conn.execute(sql, [thread_id]).fetchone()))

    def calls(self, thread_id: str) -> list[dict[str, Any]]:
        """The thread's journaled model calls, oldest first, one dict per row."""
        return self._rows(CALLS_TABLE, thread_id)

    def steps(self, thread_id: str) -> list[dict[str, Any]]:
        """The thread's journaled steps, oldest first, one dict per row."""
        return self._rows(STEPS_TABLE, thread_id)

    def _rows(self, name: str, thread_id: str) -> list[dict[str, Any]]:
        # db.table() queries sqlite_master: inside the session, as every use of the
        # connection (see _sqlite.py).
        return self._read(
            lambda: list(
                self._db.table(name).rows_where("thread_id = ?", [thread_id], order_by="rowid")
            )
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
        with self._lock:
            conn, self._own = self._own, None
            if conn is not None:
                conn.close()


if TYPE_CHECKING:
    # mypy checks here that Journal implements the protocol (isinstance only sees names).
    _spend_journal: type[SpendJournal] = Journal
