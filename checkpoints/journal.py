"""The journal: one row per model call and per guarded step, in the checkpoints' file.

Money paid to a provider is a fact: every model call is journaled as a reservation (its
projected cost) before it is made, and settled (its real cost) after; a call that failed
before it was billed is released, and a reservation never settled (the process died
mid-call) keeps counting at its projection. When a process first meets a thread it reads
what the thread paid with :meth:`Journal.thread_paid`.

Each call's key is ``(thread_id, checkpoint_ns, checkpoint_id, task_id, call_index)``.
After a crash LangGraph re-runs the interrupted task with the same ``task_id`` from the
same parent ``checkpoint_id`` (FACTS.md): before its first model call a guarded step asks
:meth:`Journal.prior_calls` what earlier attempts of the task journaled, counts that spend
and numbers its own calls after theirs, so no index is ever reused and nothing is counted
twice. Every write is idempotent for its key.

The tables are sqlite-utils tables prefixed ``sanegraph_`` (LangGraph's ``checkpoints`` and
``writes`` are never touched):

- ``sanegraph_model_calls``: primary key (thread_id, checkpoint_ns, checkpoint_id, task_id,
  call_index); agent, provider, model, ``status`` (``reserved``, ``settled`` or
  ``released``), ``usd_micros``, ``input_tokens``, ``output_tokens`` (what counts: the
  projection while reserved, the cost once settled, 0 once released), ``projected_*``
  (the reservation, for the record), ``estimated``, ``usage_details`` (JSON), created_at,
  updated_at. A file written before ``status`` existed gets the new columns on open, its
  rows ``settled``.
- ``sanegraph_steps``: primary key (thread_id, checkpoint_ns, checkpoint_id, task_id); agent,
  hop, status, latency_us, tripped (the trip kind, or NULL), created_at.

Open the journal on a file (its own connection, for any checkpointer, including
``AsyncSqliteSaver``), or on a sync ``SqliteSaver`` to write through the saver's own
connection and lock, in the same file as the checkpoints. Every write is one short
``BEGIN IMMEDIATE`` transaction of plain SQL; ``database is locked`` after the busy timeout
is retried a few times with a jittered back-off, with no lock held. The ``a``-methods run
the same calls in a worker thread: SQLite never runs on the event loop.

Amounts are :class:`sanegraph.guards.budget.Spend` (integer micro-dollars and tokens).

Keys, rows, the rules of a call's life and the ``SpendJournal`` methods are the I/O-free
core in ``_journal_core.py`` (:class:`~sanegraph.checkpoints._journal_core.JournalBase`);
:class:`Journal` is its SQLite store: the tables, the SQL and the connection.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from functools import partial
from typing import TYPE_CHECKING, Any

import sqlite_utils
from langgraph.checkpoint.sqlite import SqliteSaver
from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver
from langgraph.runtime import ExecutionInfo

from sanegraph.guards import ConfigurationError
from sanegraph.guards._compat import sqlite_connection
from sanegraph.guards.budget import Spend, SpendJournal
from sanegraph.guards.budget.spend import AsyncSpendJournal

from ._journal_core import (
    CALLS_TABLE,
    PROJECTED_COLUMNS,
    SETTLE_COLUMNS,
    STEPS_TABLE,
    TASK_COLUMNS,
    JournalBase,
    TaskKey,
    paid_of_sums,
    prior_of_sums,
    task_values,
)
from ._sqlite import Store, connect, insert
from ._values import SPEND_COLUMNS
from .saver import DEFAULT_BUSY_TIMEOUT, StrPath

__all__ = ("CALLS_TABLE", "STEPS_TABLE", "Journal", "TaskKey")

_KEY_WHERE = " AND ".join(f"{column} = ?" for column in TASK_COLUMNS)
_CALL_WHERE = f"{_KEY_WHERE} AND call_index = ?"
_COUNTED = ", ".join(
    f"coalesce(sum(CASE WHEN status != 'released' THEN {column} END), 0)"
    for column in SPEND_COLUMNS
)
_TASK_CALLS = (
    f"SELECT coalesce(max(call_index) + 1, 0), {_COUNTED} FROM {CALLS_TABLE} WHERE {_KEY_WHERE}"
)
"""A task's next call index (rows of any status) and the sums of its calls not released,
in one statement (the rule of ``sum_prior_calls``)."""
_THREAD_PAID = (
    f"SELECT agent, {', '.join(f'sum({column})' for column in SPEND_COLUMNS)} "
    f"FROM {CALLS_TABLE} WHERE thread_id = ? AND status != 'released' GROUP BY agent"
)
"""A thread's calls not released, summed by agent (``sum_thread_paid``): one search of
the primary key's index, whose first column is ``thread_id``."""
_SETTLE = (
    f"UPDATE {CALLS_TABLE} SET "
    + ", ".join(
        f"{column} = coalesce(?, {column})" if column in ("provider", "model") else f"{column} = ?"
        for column in (*SETTLE_COLUMNS, "updated_at")
    )
    + f" WHERE {_CALL_WHERE} AND status = 'reserved'"
)
"""Settle a reserved row (the rule of ``settled``); a settled or released row is kept."""
_RELEASE = (
    f"UPDATE {CALLS_TABLE} SET status = 'released', "
    + ", ".join(f"{column} = 0" for column in SPEND_COLUMNS)
    + f", updated_at = ? WHERE {_CALL_WHERE} AND status = 'reserved'"
)
"""Release a reserved row (the rule of ``released``)."""
_STEP_VALUES = ("agent", "hop", "status", "latency_us", "tripped", "created_at")
_UPDATE_STEP = (
    f"UPDATE {STEPS_TABLE} SET {', '.join(f'{column} = ?' for column in _STEP_VALUES)} "
    f"WHERE {_KEY_WHERE}"
)

_CALL_COLUMNS: dict[str, type] = {
    **dict.fromkeys(TASK_COLUMNS, str),
    "call_index": int,
    "agent": str,
    "provider": str,
    "model": str,
    "status": str,
    **dict.fromkeys(SPEND_COLUMNS, int),
    **dict.fromkeys(PROJECTED_COLUMNS, int),
    "estimated": int,
    "usage_details": str,
    "created_at": float,
    "updated_at": float,
}
"""The calls table's columns. A file written before ``status`` existed gets the missing
columns added on open (:func:`_create_tables`)."""


def _create_tables(db: sqlite_utils.Database) -> None:
    calls = db.table(CALLS_TABLE)
    calls.create(
        _CALL_COLUMNS,
        pk=(*TASK_COLUMNS, "call_index"),
        not_null={*TASK_COLUMNS, "call_index", "agent", "status", *SPEND_COLUMNS, "created_at"},
        defaults={"status": "settled"},
        if_not_exists=True,
    )
    # A journal written by an earlier version journaled each call once, when it ended:
    # its rows are settled (the new column's default), their projection unknown (NULL).
    present = calls.columns_dict
    for column, kind in _CALL_COLUMNS.items():
        if column not in present:
            default = "settled" if column == "status" else None
            calls.add_column(column, kind, not_null_default=default)
    db.table(STEPS_TABLE).create(
        {
            **dict.fromkeys(TASK_COLUMNS, str),
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

    It is the SQLite :class:`~sanegraph.guards.budget.SpendJournal` (and
    ``AsyncSpendJournal``): a process reads what a thread paid with :meth:`thread_paid`; a
    guarded step asks :meth:`prior_calls` what earlier attempts of its task journaled,
    reserves each call with :meth:`reserve_call` before it is made, settles it with
    :meth:`log_call` or releases it with :meth:`release_call`, and journals the step with
    :meth:`log_step`.

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
            call = {"index": 0, "agent": "analyst", "model": "gpt-4o", "provider": "openai"}
            journal.reserve_call(info, {**call, **projected.to_dict()})
            journal.log_call(info, {**call, **cost.to_dict()})  # or release_call(info, 0)
            total, by_agent = journal.thread_paid(info.thread_id)
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

    def _settle_call(self, row: dict[str, Any]) -> bool:
        update = [row[column] for column in (*SETTLE_COLUMNS, "updated_at")]
        key = [row[column] for column in (*TASK_COLUMNS, "call_index")]

        def settle() -> bool:
            if self._conn.execute(_SETTLE, [*update, *key]).rowcount > 0:
                return True
            return insert(self._conn, CALLS_TABLE, row, ignore=True)

        return self._write(settle)

    def _release_call(self, task: TaskKey, call_index: int, *, now: float) -> bool:
        args = [now, *task_values(task), call_index]
        return self._write(lambda: self._conn.execute(_RELEASE, args).rowcount > 0)

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

    def _thread_paid(self, thread_id: str) -> tuple[Spend, dict[str, Spend]]:
        """The thread's calls not released, by agent (``sum_thread_paid``): one query."""
        return self._read(
            lambda: paid_of_sums(self._conn.execute(_THREAD_PAID, [thread_id]).fetchall())
        )

    # -- reads

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

    # AsyncSpendJournal: what an async guarded step awaits. SQLite never runs on the event
    # loop: each call runs the sync method in a worker thread, on the journal's connection.

    async def athread_paid(self, thread_id: str) -> tuple[Spend, dict[str, Spend]]:
        """Async :meth:`thread_paid` (runs in a worker thread)."""
        return await asyncio.to_thread(self.thread_paid, thread_id)

    async def aprior_calls(self, info: ExecutionInfo | TaskKey) -> tuple[int, Spend]:
        """Async :meth:`prior_calls` (runs in a worker thread)."""
        return await asyncio.to_thread(self.prior_calls, info)

    async def areserve_call(self, info: ExecutionInfo | TaskKey, record: Mapping[str, Any]) -> bool:
        """Async :meth:`reserve_call` (runs in a worker thread)."""
        return await asyncio.to_thread(self.reserve_call, info, record)

    async def alog_call(self, info: ExecutionInfo | TaskKey, record: Mapping[str, Any]) -> bool:
        """Async :meth:`log_call` (runs in a worker thread)."""
        return await asyncio.to_thread(self.log_call, info, record)

    async def arelease_call(self, info: ExecutionInfo | TaskKey, index: int) -> bool:
        """Async :meth:`release_call` (runs in a worker thread)."""
        return await asyncio.to_thread(self.release_call, info, index)

    async def alog_step(
        self,
        info: ExecutionInfo | TaskKey,
        *,
        agent: str,
        hop: int,
        status: str,
        latency_us: int,
        tripped: str | None = None,
    ) -> bool:
        """Async :meth:`log_step` (runs in a worker thread)."""
        return await asyncio.to_thread(
            partial(
                self.log_step,
                info,
                agent=agent,
                hop=hop,
                status=status,
                latency_us=latency_us,
                tripped=tripped,
            )
        )

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
    _async_spend_journal: type[AsyncSpendJournal] = Journal
