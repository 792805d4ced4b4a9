"""Shared budgets: one spend pool for many threads and processes, kept in SQLite.

A :class:`SharedBudget` is a named pool ("tenant acme, 2026-11-22") with a limit in US
dollars and/or tokens. Before a model call the caller reserves the call's projected cost;
after the call it commits what the call actually cost, or releases the reservation when
the call failed. A reservation is granted only if it fits next to what is already spent
and what others hold reserved, for every limit set:

    granted  iff  spent + reserved + amount <= limit      (tokens: input + output)

so that 2,000 concurrent conversations cannot each spend "only" their own limit.

The rules (limits, the refusal, what commit and release do to the counters, leases) are
the I/O-free core in ``_pool_core.py``; :class:`SharedBudget` is its SQLite store: it runs
the SQL and calls the core, as a store for another database would.

Transactions. Every operation is one short ``BEGIN IMMEDIATE`` transaction: it takes the
database's write lock up front (waiting up to the busy timeout for another writer), so
the read of the pool row and the writes that depend on it cannot interleave with another
connection's, in this process or another. ``reserve`` first expires the pool's stale
reservations (``expires_at <= now``), then grants or refuses. ``database is locked`` after
the busy timeout is retried a few times with a jittered back-off. Inside a process one
connection serves every thread, behind a lock.

Tables (sqlite-utils, prefixed ``sanegraph_``):

- ``sanegraph_pools``: name (primary key), the limits (``usd_micros_limit``,
  ``tokens_limit``; NULL when not set), the ``spent_*`` and ``reserved_*`` counters.
- ``sanegraph_reservations``: id, pool, key, the reserved amount, created_at, expires_at
  and the holder (pid, host).
- ``sanegraph_pool_commits``: one row per committed key (pool, key), with the amount: a
  second commit under a key already committed is not counted again, so the re-run of a
  crashed task (same key) never pays twice; it is also the pool's audit trail.

Crashes. A holder that dies keeps its reservation until the lease runs out
(``lease_seconds`` after it was granted); the next ``reserve`` or ``status`` of any holder
then drops it. Choose a lease longer than the longest model call: a reservation that
expires while its call is still running frees room for others, and its commit still counts
(see :meth:`SharedBudget.commit`).
"""

from __future__ import annotations

import asyncio
import os
import socket
import sqlite3
import time
from collections.abc import Callable
from typing import Any

import sqlite_utils
from sqlite_utils.db import NotFoundError

from sanegraph.guards.budget import Spend

from ._pool_core import (
    COMMITS_TABLE,
    POOLS_TABLE,
    RESERVATIONS_TABLE,
    Dollars,
    PoolCounters,
    PoolLimits,
    PoolStatus,
    Reservation,
    check_lease,
    check_open_limits,
    check_owner,
    check_spend,
    commit_row,
    counters_of,
    grant,
    limits_of,
    new_limits,
    pool_gone,
    reservation_row,
)
from ._sqlite import SUM_SPEND, Store, connect, insert
from ._values import SPEND_COLUMNS, nonempty_str, spend_columns, spend_of
from .saver import DEFAULT_BUSY_TIMEOUT, StrPath

__all__ = (
    "COMMITS_TABLE",
    "POOLS_TABLE",
    "RESERVATIONS_TABLE",
    "Dollars",
    "PoolLimits",
    "PoolStatus",
    "Reservation",
    "SharedBudget",
)


# -- the tables -------------------------------------------------------------------------


def _create_tables(db: sqlite_utils.Database) -> None:
    counts = dict.fromkeys(SPEND_COLUMNS, int)
    counters = [f"{kind}_{field}" for kind in ("spent", "reserved") for field in SPEND_COLUMNS]
    db.table(POOLS_TABLE).create(
        {
            "name": str,
            "usd_micros_limit": int,
            "tokens_limit": int,
            **dict.fromkeys(counters, int),
            "created_at": float,
            "updated_at": float,
        },
        pk="name",
        not_null={"name", *counters},
        defaults=dict.fromkeys(counters, 0),
        if_not_exists=True,
    )
    db.table(RESERVATIONS_TABLE).create(
        {
            "id": str,
            "pool": str,
            "key": str,
            **counts,
            "created_at": float,
            "expires_at": float,
            "pid": int,
            "host": str,
        },
        pk="id",
        not_null={"id", "pool", "key", *SPEND_COLUMNS, "expires_at"},
        if_not_exists=True,
    )
    db.table(RESERVATIONS_TABLE).create_index(["pool", "expires_at"], if_not_exists=True)
    db.table(COMMITS_TABLE).create(
        {
            "pool": str,
            "key": str,
            **counts,
            "reservation_id": str,
            "created_at": float,
            "pid": int,
            "host": str,
        },
        pk=("pool", "key"),
        not_null={"pool", "key", *SPEND_COLUMNS},
        if_not_exists=True,
    )


# The statements below run inside the BEGIN IMMEDIATE transaction, while the connection
# holds the database's write lock that every other holder waits for. They are plain SQL:
# sqlite-utils' get/insert/update/delete re-read the schema on every call (about six
# statements each), which tripled the time the lock was held, and each statement is one
# more wait for the GIL, with the lock held, when a process runs many threads.


def _read(conn: sqlite3.Connection, name: str) -> PoolCounters | None:
    """The pool's counters, or None if it has no row."""
    cursor = conn.execute(f"SELECT * FROM {POOLS_TABLE} WHERE name = ?", [name])
    found = cursor.fetchone()
    if found is None:
        return None
    return counters_of(
        {column[0]: value for column, value in zip(cursor.description, found, strict=True)}
    )


def _write(
    conn: sqlite3.Connection, name: str, *, now: float, spent: Spend | None, reserved: Spend
) -> None:
    """Store the counters (``spent`` only when a commit counted something)."""
    updates: dict[str, Any] = {"updated_at": now}
    if spent is not None:
        updates.update(spend_columns(spent, "spent_"))
    updates.update(spend_columns(reserved, "reserved_"))
    assignments = ", ".join(f"{column} = ?" for column in updates)
    conn.execute(
        f"UPDATE {POOLS_TABLE} SET {assignments} WHERE name = ?", [*updates.values(), name]
    )


def _expire(conn: sqlite3.Connection, name: str, *, now: float) -> PoolCounters | None:
    """Drop the pool's expired reservations (``is_expired``: ``expires_at <= now``); the
    counters after, or None if the pool has no row."""
    counters = _read(conn, name)
    if counters is None:
        return None
    where, args = "pool = ? AND expires_at <= ?", [name, now]
    stale, *sums = conn.execute(
        f"SELECT count(*), {SUM_SPEND} FROM {RESERVATIONS_TABLE} WHERE {where}", args
    ).fetchone()
    if stale:
        conn.execute(f"DELETE FROM {RESERVATIONS_TABLE} WHERE {where}", args)
        counters = counters.drop(spend_of(sums))
        _write(conn, name, now=now, spent=None, reserved=counters.reserved)
    return counters


def _take(conn: sqlite3.Connection, reservation: Reservation) -> Spend | None:
    """Delete the reservation's row; the amount it held, or None if it was gone."""
    where, args = "id = ? AND pool = ?", [reservation.id, reservation.pool]
    held = conn.execute(
        f"SELECT {', '.join(SPEND_COLUMNS)} FROM {RESERVATIONS_TABLE} WHERE {where}", args
    ).fetchone()
    if held is None:
        return None
    conn.execute(f"DELETE FROM {RESERVATIONS_TABLE} WHERE {where}", args)
    return spend_of(held)


# -- the store --------------------------------------------------------------------------


class SharedBudget(Store):
    """A spend pool shared by every thread and process that opens it on the same file.

    Args:
        name: The pool, e.g. ``"tenant acme, 2026-11-22"``.
        path: The SQLite file holding the pool (created if missing; may be the
            checkpoints' file).
        usd: The money limit in US dollars, or None.
        tokens: The token limit (input + output), or None.
        lease_seconds: How long a reservation holds room without a commit or a release;
            a crashed holder's reservation stops blocking the pool after that.
        timeout: Seconds to wait for another connection's write lock.
        clock: The time source for leases (``time.time``; tests inject their own).

    The first holder to open a pool creates it with its limits. Later holders may omit
    ``usd`` and ``tokens`` to use the stored limits; limits that differ from the stored
    ones raise :class:`~sanegraph.guards.ConfigurationError` (change them for every holder
    with :meth:`set_limits`).

    Raises:
        ConfigurationError: A limit, the name or the lease is not usable; the pool does not
            exist and no limit was given; or the given limits differ from the stored ones.

    Example:
        ```python
        pool = SharedBudget("tenant acme, 2026-11-22", usd=20, path="runs/budgets.sqlite")
        held = pool.reserve(Spend(usd_micros=40_000, input_tokens=1_000), key="call-1")
        if held is None:
            ...  # the pool is exhausted: do not call the model
        else:
            try:
                actual = ...  # call the model, price its usage
            except Exception:
                pool.release(held)
                raise
            pool.commit(held, actual)
        ```
    """

    def __init__(
        self,
        name: str,
        *,
        path: StrPath,
        usd: Dollars | None = None,
        tokens: int | None = None,
        lease_seconds: float = 60.0,
        timeout: float = DEFAULT_BUSY_TIMEOUT,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.name = nonempty_str(name, "SharedBudget name")
        """The pool's name."""
        limits = PoolLimits.of(usd=usd, tokens=tokens)
        self.lease_seconds = check_lease(lease_seconds)
        """How long a reservation holds room without a commit or a release."""
        super().__init__(connect(path, timeout))
        self.path: str = os.fspath(path)
        """The SQLite file holding the pool."""
        self._clock = clock
        self._host = socket.gethostname()
        self._setup(lambda: self._open(limits))

    def _open(self, limits: PoolLimits) -> None:
        _create_tables(self._db)
        try:
            stored: PoolLimits | None = limits_of(self._db.table(POOLS_TABLE).get(self.name))
        except NotFoundError:
            stored = None
        check_open_limits(stored, limits, name=self.name, where=self.path)
        if stored is None:
            now = self._clock()
            self._db.table(POOLS_TABLE).insert(
                {
                    "name": self.name,
                    "usd_micros_limit": limits.usd_micros,
                    "tokens_limit": limits.tokens,
                    "created_at": now,
                    "updated_at": now,
                }
            )

    def _counters(self, *, expire: bool) -> tuple[float, PoolCounters]:
        """Now, and the pool's counters (after dropping expired reservations if
        ``expire``), inside the transaction."""
        now = self._clock()
        read = _expire(self._conn, self.name, now=now) if expire else _read(self._conn, self.name)
        if read is None:
            raise pool_gone(self.name, self.path)
        return now, read

    # -- the pool

    def reserve(self, amount: Spend, *, key: str) -> Reservation | None:
        """Hold ``amount`` for one model call if it fits under every limit.

        One ``BEGIN IMMEDIATE`` transaction: expire stale reservations, then grant iff
        ``spent + reserved + amount <= limit`` for each limit set.

        Args:
            amount: The call's projected cost (input tokens plus ``max_tokens``, priced).
            key: The model call, unique per call and the same when a crashed task re-runs
                (e.g. :meth:`TaskKey.call_key`): :meth:`commit` counts each key once.

        Returns:
            The reservation, or None when the amount would exceed a limit (nothing held).

        Raises:
            ConfigurationError: ``amount`` or ``key`` is not usable.
        """
        wanted = check_spend(amount, "amount")
        key = nonempty_str(key, "key")

        def work() -> Reservation | None:
            now, counters = self._counters(expire=True)
            granted = grant(
                counters, wanted, pool=self.name, key=key, now=now, lease_seconds=self.lease_seconds
            )
            if granted is None:
                return None
            held, after = granted
            row = reservation_row(held, now=now, pid=os.getpid(), host=self._host)
            insert(self._conn, RESERVATIONS_TABLE, row, ignore=False)
            _write(self._conn, self.name, now=now, spent=None, reserved=after.reserved)
            return held

        return self._write(work)

    def commit(self, reservation: Reservation, actual: Spend) -> bool:
        """Count what the call actually cost and drop its reservation.

        ``actual`` is counted in full even when it exceeds the reservation, or when the
        reservation already expired: the money was spent (reality wins), so ``spent`` may
        end above the limit and later reservations are refused until it is raised.

        Returns:
            True if counted; False if a commit under ``reservation.key`` was already
            counted (nothing is counted twice; the reservation is dropped anyway).

        Raises:
            ConfigurationError: ``actual`` is not usable, or the reservation is another
                pool's.
        """
        cost = check_spend(actual, "actual")

        def work() -> bool:
            now, counters = self._counters(expire=False)
            check_owner(reservation, self.name)
            held = _take(self._conn, reservation)
            row = commit_row(reservation, cost, now=now, pid=os.getpid(), host=self._host)
            counted = insert(self._conn, COMMITS_TABLE, row, ignore=True)
            after = counters.commit(held, cost if counted else None)
            spent = after.spent if counted else None
            _write(self._conn, self.name, now=now, spent=spent, reserved=after.reserved)
            return counted

        return self._write(work)

    def release(self, reservation: Reservation) -> bool:
        """Drop a reservation without spending (the call failed or was not made).

        Returns:
            True if the reservation was still held; False if it was already committed,
            released or expired (releasing twice is harmless).
        """

        def work() -> bool:
            now, counters = self._counters(expire=False)
            check_owner(reservation, self.name)
            held = _take(self._conn, reservation)
            if held is None:
                return False
            reserved = counters.drop(held).reserved
            _write(self._conn, self.name, now=now, spent=None, reserved=reserved)
            return True

        return self._write(work)

    def status(self) -> PoolStatus:
        """The pool's limits, spent and reserved amounts, and what remains grantable.

        Expired reservations are dropped first, so ``reserved`` counts live ones only.
        """

        def work() -> PoolStatus:
            _, counters = self._counters(expire=True)
            (live,) = self._conn.execute(
                f"SELECT count(*) FROM {RESERVATIONS_TABLE} WHERE pool = ?", [self.name]
            ).fetchone()
            return counters.status(self.name, live=live)

        return self._write(work)

    def set_limits(self, *, usd: Dollars | None, tokens: int | None) -> None:
        """Replace the pool's limits for every holder (a top-up, or a cut).

        Live reservations stay; a cut below ``spent + reserved`` refuses new reservations
        until enough is committed or released.

        Raises:
            ConfigurationError: A limit is not usable, or both are None.
        """
        limits = new_limits(usd=usd, tokens=tokens)

        def work() -> None:
            now, _ = self._counters(expire=False)
            self._conn.execute(
                f"UPDATE {POOLS_TABLE} SET usd_micros_limit = ?, tokens_limit = ?, "
                "updated_at = ? WHERE name = ?",
                [limits.usd_micros, limits.tokens, now, self.name],
            )

        self._write(work)

    # -- async shell: the same calls in a worker thread, off the event loop

    async def areserve(self, amount: Spend, *, key: str) -> Reservation | None:
        """Async :meth:`reserve` (runs in a worker thread)."""
        return await asyncio.to_thread(self.reserve, amount, key=key)

    async def acommit(self, reservation: Reservation, actual: Spend) -> bool:
        """Async :meth:`commit` (runs in a worker thread)."""
        return await asyncio.to_thread(self.commit, reservation, actual)

    async def arelease(self, reservation: Reservation) -> bool:
        """Async :meth:`release` (runs in a worker thread)."""
        return await asyncio.to_thread(self.release, reservation)

    async def astatus(self) -> PoolStatus:
        """Async :meth:`status` (runs in a worker thread)."""
        return await asyncio.to_thread(self.status)

    # -- lifetime

    def close(self) -> None:
        """Close the pool's connection (reservations stay in the file until they expire)."""
        super().close()
