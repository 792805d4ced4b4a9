"""SQLite plumbing shared by the journal (``journal.py``) and the shared budgets (``pool.py``).

Both keep sqlite-utils tables prefixed ``sanegraph_`` in a file that may also hold
LangGraph's checkpoints, and both serve every thread of a process through one connection:

- :func:`connect` opens it the way the saver does (WAL, ``synchronous=NORMAL``, the busy
  timeout); :func:`database` wraps it for sqlite-utils without touching its pragmas.
- :class:`Store` runs each operation as one short transaction behind the connection's
  lock: ``BEGIN IMMEDIATE`` for writes, so a read and the writes that depend on it cannot
  interleave with another connection's; ``database is locked`` after the busy timeout is
  retried a few times with a jittered back-off, taken with no lock held
  (:func:`retrying`).

One rule keeps many threads and processes on one file working: a connection is used only
by the thread holding its lock, for every statement (sqlite-utils' ``db.table(name)``
included: it queries ``sqlite_master``). A thread that uses a connection while another
thread of the process busy-waits on it for the file's write lock blocks on the
connection's mutex while holding the GIL: the whole process stops for up to the busy
timeout, including a thread that holds the write lock through another connection and only
needs the GIL to commit, so the waiter times out with ``database is locked``.

The values written into the tables are checked before, by the I/O-free cores
(``_values.py``, ``_pool_core.py``, ``_journal_core.py``), which a store for another
database shares.
"""

from __future__ import annotations

import random
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from types import TracebackType
from typing import Any, TypeVar

import sqlite_utils

from ._values import SPEND_COLUMNS
from .saver import _PRAGMAS, StrPath, _database, _timeout

__all__ = (
    "SUM_SPEND",
    "Store",
    "connect",
    "database",
    "insert",
    "locked",
    "retrying",
    "transaction",
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


def transaction(conn: sqlite3.Connection, work: Callable[[], T], *, write: bool) -> T:
    """Run ``work`` once: in one ``BEGIN IMMEDIATE`` transaction when ``write`` (the write
    lock is taken up front, so what ``work`` reads cannot change before it writes)."""
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


def retrying(attempt: Callable[[], T]) -> T:
    """Run ``attempt``; while it finds the database locked, again after a back-off.

    The busy timeout already waited for the other writer; when it ran out, the whole
    attempt (lock, transaction) runs again after a short jittered sleep (:data:`RETRIES`
    times). ``attempt`` takes and releases its locks itself: none is held while sleeping,
    so a journal sharing the checkpointer's connection never stalls the checkpoints.
    """
    for tries in range(RETRIES + 1):
        try:
            return attempt()
        except sqlite3.OperationalError as error:
            if not locked(error) or tries == RETRIES:
                raise
        time.sleep(random.uniform(0.01, 0.05) * 2**tries)
    raise AssertionError("unreachable")  # pragma: no cover


def insert(conn: sqlite3.Connection, table: str, row: Mapping[str, Any], *, ignore: bool) -> bool:
    """Insert ``row`` into ``table`` in one plain statement (``INSERT OR IGNORE`` when
    ``ignore``: an existing key is kept); whether a row was added.

    sqlite-utils' ``table.insert`` reads the schema first (several statements), inside
    the write lock when called in a transaction.
    """
    verb = "INSERT OR IGNORE" if ignore else "INSERT"
    columns, marks = ", ".join(row), ", ".join("?" * len(row))
    sql = f"{verb} INTO {table} ({columns}) VALUES ({marks})"
    return conn.execute(sql, list(row.values())).rowcount > 0


class Store:
    """One connection that an object's methods share across threads, and its lifetime.

    Every operation runs inside :meth:`_session` (this object's lock unless a subclass
    says otherwise) as one transaction, retried by :func:`retrying` when it found the
    database locked; every use of the connection, sqlite-utils' included, happens inside
    ``work`` (see the module docstring). A store is a context manager that calls
    ``close()`` on exit.

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
        return retrying(lambda: self._once(work, write=True))

    def _read(self, work: Callable[[], T]) -> T:
        return retrying(lambda: self._once(work, write=False))

    def _once(self, work: Callable[[], T], *, write: bool) -> T:
        with self._session():
            return transaction(self._conn, work, write=write)

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
