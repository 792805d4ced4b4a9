"""SQLite plumbing shared by the journal (``journal.py``) and the shared budgets (``pool.py``).

Both keep sqlite-utils tables prefixed ``sanegraph_`` in a file that may also hold
LangGraph's checkpoints, and both serve every thread of a process through one connection:

- :func:`connect` opens it the way the saver does (WAL, ``synchronous=NORMAL``, the busy
  timeout); :func:`database` wraps it for sqlite-utils without touching its pragmas.
- :class:`Store` runs each operation as one short transaction behind the connection's
  lock: ``BEGIN IMMEDIATE`` for writes, so a read and the writes that depend on it cannot
  interleave with another connection's; ``database is locked`` after the busy timeout is
  retried a few times with a jittered back-off (:func:`retrying`).

The values written into the tables are checked before, by the I/O-free cores
(``_values.py``, ``_pool_core.py``, ``_journal_core.py``), which a store for another
database shares.
"""

from __future__ import annotations

import random
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import TypeVar

import sqlite_utils

from ._values import SPEND_COLUMNS
from .saver import _PRAGMAS, StrPath, _database, _timeout

__all__ = (
    "SUM_SPEND",
    "Store",
    "connect",
    "database",
    "inserted",
    "locked",
    "retrying",
)

SUM_SPEND = ", ".join(f"coalesce(sum({column}), 0)" for column in SPEND_COLUMNS)
"""SQL selecting the sums of :data:`SPEND_COLUMNS` (0 over no rows)."""

RETRIES = 4
"""How many times a transaction that found the database locked is tried again."""

T = TypeVar("T")
S = TypeVar("S", bound="Store")


# -- connections and transactions -------------------------------------------------------


def connect(path: StrPath, timeout: float) -> sqlite3.Connection:
    """A connection on ``path`` set up like the saver's: WAL, synchronous=NORMAL, timeout."""
    conn = sqlite3.connect(_database(path), timeout=_timeout(timeout), check_same_thread=False)
    try:
        for pragma in _PRAGMAS:
            conn.execute(pragma)
    except BaseException:
        conn.close()
        raise
    return conn


def database(conn: sqlite3.Connection) -> sqlite_utils.Database:
    """sqlite-utils over ``conn``, setting no pragma and running no plugin hook (the
    connection may be the checkpointer's)."""
    return sqlite_utils.Database(conn, recursive_triggers=False, execute_plugins=False)


def locked(error: sqlite3.OperationalError) -> bool:
    """Whether ``error`` says another connection holds the lock."""
    text = str(error)
    return "database is locked" in text or "database is busy" in text


def retrying(conn: sqlite3.Connection, work: Callable[[], T], *, write: bool) -> T:
    """Run ``work`` (in one ``BEGIN IMMEDIATE`` transaction when ``write``), retrying locks.

    The busy timeout already waited for the other writer; when it ran out, the whole
    transaction is tried again after a short jittered back-off (:data:`RETRIES` times).
    """
    for attempt in range(RETRIES + 1):
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
            if not locked(error) or attempt == RETRIES:
                raise
            time.sleep(random.uniform(0.01, 0.05) * 2**attempt)
    raise AssertionError("unreachable")  # pragma: no cover


def inserted(conn: sqlite3.Connection, insert: Callable[[], object]) -> bool:
    """Whether ``insert`` (an ``insert(..., ignore=True)``) added a row."""
    before = conn.total_changes
    insert()
    return conn.total_changes > before


class Store:
    """One connection that an object's methods share across threads, and its lifetime.

    Every operation runs inside :meth:`_session` (this object's lock unless a subclass
    says otherwise) as one transaction, retried by :func:`retrying` when it found the
    database locked. A store is a context manager that calls ``close()`` on exit.

    Args:
        conn: The connection (the store's own, or one it shares).
    """

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        self._db = database(conn)
        self._lock = threading.Lock()

    @contextmanager
    def _session(self) -> Iterator[None]:
        with self._lock:
            yield

    def _write(self, work: Callable[[], T]) -> T:
        with self._session():
            return retrying(self._conn, work, write=True)

    def _read(self, work: Callable[[], T]) -> T:
        with self._session():
            return retrying(self._conn, work, write=False)

    def _setup(self, work: Callable[[], object]) -> None:
        """Write the tables (first use of the file); close the store if that fails."""
        try:
            self._write(work)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self._conn.close()

    def __enter__(self: S) -> S:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
