"""Open a SQLite checkpointer on a file, ready for guarded graphs.

SQLite is sanegraph's embedded default: one file holds every thread's checkpoints (and,
later, the journal). The helpers here open it the same way every time: parent folders
created, WAL journal mode (readers do not block the writer, and a crash never leaves a
half-written checkpoint), ``synchronous=NORMAL`` (in WAL mode this is durable against a
process crash; only a power loss can drop the newest commits), a busy timeout, and the
checkpointer's tables set up.

Pick the flavour that matches the code that runs the graph:

- sync code (``graph.invoke``): ``with sqlite_saver(path) as saver:``, or
  :func:`open_sqlite_saver` in a script;
- async code (``await graph.ainvoke``): ``async with async_sqlite_saver(path) as saver:``.

Using one where the other belongs raises :class:`~sanegraph.guards.ConfigurationError`
naming the right function.

Code that shares a sync saver's connection (``Journal(saver)`` does) uses it only inside
``with saver.cursor():``, which holds the saver's lock: a statement run on the connection
from another thread can stall the whole process for the busy timeout (``_sqlite.py``).
"""

from __future__ import annotations

import os
import sqlite3
from contextlib import AbstractAsyncContextManager, AbstractContextManager
from pathlib import Path
from types import TracebackType
from typing import NoReturn

import aiosqlite
from langgraph.checkpoint.serde.base import SerializerProtocol
from langgraph.checkpoint.sqlite import SqliteSaver
from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

from sanegraph.guards import ConfigurationError
from sanegraph.guards._compat import sqlite_connection

__all__ = ("DEFAULT_BUSY_TIMEOUT", "async_sqlite_saver", "open_sqlite_saver", "sqlite_saver")

DEFAULT_BUSY_TIMEOUT = 5.0
"""Seconds a connection waits for another one's write lock before "database is locked"."""

_PRAGMAS = ("PRAGMA journal_mode=WAL", "PRAGMA synchronous=NORMAL")

StrPath = str | os.PathLike[str]


def _database(path: StrPath) -> str:
    """The database name for ``sqlite3.connect``, creating the file's parent folders."""
    if not isinstance(path, (str, os.PathLike)):
        raise ConfigurationError(
            f"The SQLite path must be a str or a pathlib.Path, got {type(path).__name__}. "
            "Pass e.g. sqlite_saver('runs/checkpoints.sqlite')."
        )
    name = os.fspath(path)
    if not name:
        raise ConfigurationError(
            "The SQLite path is empty. Pass a file path such as 'runs/checkpoints.sqlite', "
            "or ':memory:' for a throwaway database."
        )
    if name != ":memory:" and not name.startswith("file:"):
        Path(name).expanduser().parent.mkdir(parents=True, exist_ok=True)
        name = str(Path(name).expanduser())
    return name


def _timeout(timeout: float) -> float:
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout < 0:
        raise ConfigurationError(
            f"timeout must be a number of seconds >= 0, got {timeout!r}. "
            f"Pass e.g. timeout={DEFAULT_BUSY_TIMEOUT}."
        )
    return float(timeout)


def open_sqlite_saver(
    path: StrPath,
    *,
    timeout: float = DEFAULT_BUSY_TIMEOUT,
    serde: SerializerProtocol | None = None,
) -> SqliteSaver:
    """Open a sync ``SqliteSaver`` on ``path`` and leave it open (for scripts).

    The file and its parent folders are created if missing; the connection runs in WAL
    mode with ``synchronous=NORMAL`` and ``check_same_thread=False`` (the saver guards it
    with its own lock), and the checkpoint tables are set up. Close it with
    ``saver.conn.close()`` when done; prefer :func:`sqlite_saver`, which closes it for you.

    Args:
        path: The database file (``":memory:"`` for a throwaway database).
        timeout: Seconds to wait for another connection's write lock.
        serde: The serializer; LangGraph's default when None.

    Returns:
        The saver, ready to pass to ``compile(checkpointer=...)``.

    Raises:
        ConfigurationError: ``path`` or ``timeout`` is not usable.

    Example:
        ```python
        saver = open_sqlite_saver("runs/checkpoints.sqlite")
        graph = builder.compile(checkpointer=saver)
        ...
        saver.conn.close()
        ```
    """
    conn = sqlite3.connect(_database(path), timeout=_timeout(timeout), check_same_thread=False)
    try:
        for pragma in _PRAGMAS:
            conn.execute(pragma)
        saver = SqliteSaver(conn, serde=serde)
        saver.setup()
    except BaseException:
        conn.close()
        raise
    return saver


class _SqliteSaverContext(AbstractContextManager[SqliteSaver]):
    """What :func:`sqlite_saver` returns: ``with`` opens the saver and closes it after."""

    __slots__ = ("_path", "_saver", "_serde", "_timeout")

    def __init__(self, path: StrPath, timeout: float, serde: SerializerProtocol | None) -> None:
        self._path = path
        self._timeout = timeout
        self._serde = serde
        self._saver: SqliteSaver | None = None

    def __enter__(self) -> SqliteSaver:
        self._saver = open_sqlite_saver(self._path, timeout=self._timeout, serde=self._serde)
        return self._saver

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        saver, self._saver = self._saver, None
        if saver is not None:
            sqlite_connection(saver).close()

    async def __aenter__(self) -> NoReturn:
        raise ConfigurationError(
            "sqlite_saver() opens a sync SqliteSaver for `with`; async code needs "
            "`async with async_sqlite_saver(path) as saver:`."
        )

    async def __aexit__(self, *exc_info: object) -> None:
        return None


class _AsyncSqliteSaverContext(AbstractAsyncContextManager[AsyncSqliteSaver]):
    """What :func:`async_sqlite_saver` returns: ``async with`` opens and closes the saver."""

    __slots__ = ("_conn", "_path", "_serde", "_timeout")

    def __init__(self, path: StrPath, timeout: float, serde: SerializerProtocol | None) -> None:
        self._path = path
        self._timeout = timeout
        self._serde = serde
        self._conn: aiosqlite.Connection | None = None

    async def __aenter__(self) -> AsyncSqliteSaver:
        conn = await aiosqlite.connect(_database(self._path), timeout=_timeout(self._timeout))
        try:
            for pragma in _PRAGMAS:
                await conn.execute(pragma)
            saver = AsyncSqliteSaver(conn, serde=self._serde)
            await saver.setup()
        except BaseException:
            await conn.close()
            raise
        self._conn = conn
        return saver

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.close()

    def __enter__(self) -> NoReturn:
        raise ConfigurationError(
            "async_sqlite_saver() opens an AsyncSqliteSaver for `async with`; sync code "
            "needs `with sqlite_saver(path) as saver:`."
        )

    def __exit__(self, *exc_info: object) -> None:
        return None


def sqlite_saver(
    path: StrPath,
    *,
    timeout: float = DEFAULT_BUSY_TIMEOUT,
    serde: SerializerProtocol | None = None,
) -> AbstractContextManager[SqliteSaver]:
    """Open a sync ``SqliteSaver`` on a file for the duration of a ``with`` block.

    Same setup as :func:`open_sqlite_saver` (parent folders, WAL, ``synchronous=NORMAL``,
    ``check_same_thread=False``, tables); the connection is closed when the block exits.
    For ``graph.invoke`` / ``graph.stream``; in async code use :func:`async_sqlite_saver`
    (``async with sqlite_saver(...)`` raises ``ConfigurationError`` saying so).

    Args:
        path: The database file (``":memory:"`` for a throwaway database).
        timeout: Seconds to wait for another connection's write lock.
        serde: The serializer; LangGraph's default when None.

    Returns:
        A context manager yielding the saver.

    Raises:
        ConfigurationError: ``path`` or ``timeout`` is not usable (on entering the block).

    Example:
        ```python
        with sqlite_saver("runs/checkpoints.sqlite") as saver:
            graph = builder.compile(checkpointer=saver)
            graph.invoke({"topic": "tides"}, {"configurable": {"thread_id": "t1"}})
        ```
    """
    return _SqliteSaverContext(path, timeout, serde)


def async_sqlite_saver(
    path: StrPath,
    *,
    timeout: float = DEFAULT_BUSY_TIMEOUT,
    serde: SerializerProtocol | None = None,
) -> AbstractAsyncContextManager[AsyncSqliteSaver]:
    """Open an ``AsyncSqliteSaver`` on a file for the duration of an ``async with`` block.

    Same setup as :func:`sqlite_saver`, over ``aiosqlite``. For ``await graph.ainvoke`` /
    ``graph.astream``; the saver belongs to the event loop that opened it. In sync code use
    :func:`sqlite_saver` (``with async_sqlite_saver(...)`` raises ``ConfigurationError``
    saying so).

    Args:
        path: The database file (``":memory:"`` for a throwaway database).
        timeout: Seconds to wait for another connection's write lock.
        serde: The serializer; LangGraph's default when None.

    Returns:
        An async context manager yielding the saver.

    Raises:
        ConfigurationError: ``path`` or ``timeout`` is not usable (on entering the block).

    Example:
        ```python
        async with async_sqlite_saver("runs/checkpoints.sqlite") as saver:
            graph = builder.compile(checkpointer=saver)
            await graph.ainvoke({"topic": "tides"}, {"configurable": {"thread_id": "t1"}})
        ```
    """
    return _AsyncSqliteSaverContext(path, timeout, serde)
