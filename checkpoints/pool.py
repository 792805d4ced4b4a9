"""Shared budgets: one spend pool for many threads and processes, kept in SQLite.

A :class:`SharedBudget` is a named pool ("tenant acme, 2026-11-22") with a limit in US
dollars and/or tokens. Before a model call the caller reserves the call's projected cost;
after the call it commits what the call actually cost, or releases the reservation when
the call failed. A reservation is granted only if it fits next to what is already spent
and what others hold reserved, for every limit set:

    granted  iff  spent + reserved + amount <= limit      (tokens: input + output)

so that 2,000 concurrent conversations cannot each spend "only" their own limit.

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
import math
import os
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any, Literal, TypedDict

from sqlite_utils.db import NotFoundError

from sanegraph.guards import ConfigurationError
from sanegraph.guards.budget import Spend

from ._sqlite import (
    SPEND_COLUMNS,
    SUM_SPEND,
    Store,
    connect,
    inserted,
    nonempty_str,
    spend_of,
    spend_row,
)
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

POOLS_TABLE = "sanegraph_pools"
"""One row per pool: limits, spent and reserved counters."""

RESERVATIONS_TABLE = "sanegraph_reservations"
"""Live reservations: amount, expiry and holder."""

COMMITS_TABLE = "sanegraph_pool_commits"
"""One row per committed key of each pool: what was counted, once."""

Dollars = int | float | Decimal
"""An amount in US dollars (converted to whole micro-dollars, rounding half to even)."""

_MICROS = Decimal(1_000_000)


# -- the I/O-free core ------------------------------------------------------------------


def _micros(usd: Any, field: str) -> int:
    remedy = "Pass US dollars as a number >= 0, e.g. usd=20 or usd=Decimal('19.99')."
    if isinstance(usd, bool) or not isinstance(usd, (int, float, Decimal)):
        raise ConfigurationError(f"{field} must be a number of US dollars, got {usd!r}. {remedy}")
    try:
        micros = (Decimal(str(usd)) * _MICROS).to_integral_value()
    except InvalidOperation:
        micros = Decimal("NaN")
    if not micros.is_finite() or micros < 0:
        raise ConfigurationError(f"{field} must be a finite amount >= 0, got {usd!r}. {remedy}")
    return int(micros)


def _dollars(micros: int | None) -> str:
    if micros is None:
        return "None"
    return format((Decimal(micros) / _MICROS).normalize(), "f")


def _tokens(tokens: Any) -> int:
    if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 0:
        raise ConfigurationError(
            f"tokens must be a whole number >= 0, got {tokens!r}. Pass e.g. tokens=2_000_000."
        )
    return tokens


@dataclass(frozen=True, slots=True, kw_only=True)
class PoolLimits:
    """What a pool allows in total; None means no limit on that measure.

    Check (:meth:`exceeded`): an amount is refused when it *would exceed* a limit,
    ``spent + reserved + amount > limit``; exactly reaching the limit is allowed.

    Example:
        ```python
        limits = PoolLimits.of(usd=20, tokens=None)
        limits.usd_micros  # 20_000_000
        limits.exceeded(spent=Spend(usd_micros=19_999_999), reserved=Spend(),
                        amount=Spend(usd_micros=2))  # "usd"
        ```
    """

    usd_micros: int | None = None
    """The money limit in micro-dollars."""
    tokens: int | None = None
    """The token limit (input + output tokens)."""

    @classmethod
    def of(cls, *, usd: Dollars | None, tokens: int | None) -> PoolLimits:
        """Limits from US dollars and tokens, checked.

        Raises:
            ConfigurationError: A limit is negative, not finite, or not a number.
        """
        return cls(
            usd_micros=None if usd is None else _micros(usd, "usd"),
            tokens=None if tokens is None else _tokens(tokens),
        )

    @property
    def is_empty(self) -> bool:
        """Whether no limit is set."""
        return self.usd_micros is None and self.tokens is None

    def exceeded(
        self, *, spent: Spend, reserved: Spend, amount: Spend
    ) -> Literal["usd", "tokens"] | None:
        """Which limit ``amount`` would exceed next to ``spent`` and ``reserved``, if any."""
        if self.usd_micros is not None and (
            spent.usd_micros + reserved.usd_micros + amount.usd_micros > self.usd_micros
        ):
            return "usd"
        if self.tokens is not None and (
            _total(spent) + _total(reserved) + _total(amount) > self.tokens
        ):
            return "tokens"
        return None

    def remaining(self, *, spent: Spend, reserved: Spend) -> dict[str, int | None]:
        """``{"usd_micros", "tokens"}`` still grantable (never below 0; None: no limit)."""
        usd = tokens = None
        if self.usd_micros is not None:
            usd = max(0, self.usd_micros - spent.usd_micros - reserved.usd_micros)
        if self.tokens is not None:
            tokens = max(0, self.tokens - _total(spent) - _total(reserved))
        return {"usd_micros": usd, "tokens": tokens}

    def _describe(self) -> str:
        return f"usd={_dollars(self.usd_micros)}, tokens={self.tokens}"


def _total(spend: Spend) -> int:
    return spend.input_tokens + spend.output_tokens


def _spend(row: dict[str, Any], prefix: str = "") -> Spend:
    return Spend(**{field: int(row[prefix + field]) for field in SPEND_COLUMNS})


def _minus(a: Spend, b: Spend) -> Spend:
    return Spend(**{field: getattr(a, field) - getattr(b, field) for field in SPEND_COLUMNS})


def _counters(prefix: str, spend: Spend) -> dict[str, int]:
    return {prefix + field: getattr(spend, field) for field in SPEND_COLUMNS}


@dataclass(frozen=True, slots=True, kw_only=True)
class Reservation:
    """An amount held in a pool for one model call, until committed, released or expired.

    Example:
        ```python
        held = pool.reserve(Spend(usd_micros=40_000), key=task.call_key(0))
        if held is not None:
            pool.commit(held, Spend(usd_micros=31_250, input_tokens=900, output_tokens=300))
        ```
    """

    id: str
    """The reservation's row id."""
    pool: str
    """The pool's name."""
    key: str
    """The model call the reservation is for (unique per call; see ``SharedBudget.reserve``)."""
    amount: Spend
    """What was reserved."""
    expires_at: float
    """When the reservation stops holding room in the pool (``clock()`` seconds)."""


class PoolStatus(TypedDict):
    """A pool's limits and counters, as :meth:`SharedBudget.status` reports them."""

    name: str
    """The pool's name."""
    limits: dict[str, int | None]
    """``{"usd_micros", "tokens"}``; None where no limit is set."""
    spent: dict[str, int]
    """``{"usd_micros", "input_tokens", "output_tokens"}`` committed so far."""
    reserved: dict[str, int]
    """The same counts held by live reservations."""
    remaining: dict[str, int | None]
    """``{"usd_micros", "tokens"}`` still grantable (never below 0); None: no limit."""
    reservations: int
    """How many reservations are live."""


# -- the SQLite shell -------------------------------------------------------------------


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
        if (
            isinstance(lease_seconds, bool)
            or not isinstance(lease_seconds, (int, float))
            or not math.isfinite(lease_seconds)
            or lease_seconds <= 0
        ):
            raise ConfigurationError(
                f"lease_seconds must be a positive number, got {lease_seconds!r}. Pass e.g. "
                "lease_seconds=60, longer than the slowest model call."
            )
        self.lease_seconds = float(lease_seconds)
        """How long a reservation holds room without a commit or a release."""
        super().__init__(connect(path, timeout))
        self.path: str = os.fspath(path)
        """The SQLite file holding the pool."""
        self._clock = clock
        self._host = socket.gethostname()
        self._setup(lambda: self._open(limits))

    # -- plumbing

    def _open(self, limits: PoolLimits) -> None:
        db = self._db
        counts = {field: int for field in SPEND_COLUMNS}
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
        try:
            stored = _limits(db.table(POOLS_TABLE).get(self.name))
        except NotFoundError:
            if limits.is_empty:
                raise ConfigurationError(
                    f"SharedBudget({self.name!r}) sets no limit and {self.path} has no such "
                    "pool. Pass usd= and/or tokens=, e.g. "
                    f"SharedBudget({self.name!r}, usd=20, path=...)."
                ) from None
            now = self._clock()
            db.table(POOLS_TABLE).insert(
                {
                    "name": self.name,
                    "usd_micros_limit": limits.usd_micros,
                    "tokens_limit": limits.tokens,
                    "created_at": now,
                    "updated_at": now,
                }
            )
            return
        if not limits.is_empty and limits != stored:
            raise ConfigurationError(
                f"Pool {self.name!r} in {self.path} already has limits {stored._describe()}; "
                f"this SharedBudget asks for {limits._describe()}. Pass the same limits, omit "
                "usd= and tokens= to use the stored ones, or change them for every holder "
                "with SharedBudget.set_limits(usd=..., tokens=...)."
            )

    # The statements below run inside the BEGIN IMMEDIATE transaction, while this
    # connection holds the database's write lock that every other holder waits for. They
    # are plain SQL: sqlite-utils' get/update/delete re-read the schema on every call
    # (about six statements each), which tripled the time the lock was held.

    def _pool(self) -> dict[str, Any]:
        cursor = self._conn.execute(f"SELECT * FROM {POOLS_TABLE} WHERE name = ?", [self.name])
        found = cursor.fetchone()
        if found is None:
            raise ConfigurationError(
                f"Pool {self.name!r} no longer exists in {self.path} (its row in "
                f"{POOLS_TABLE} was deleted). Open it again with its limits."
            )
        return {column[0]: value for column, value in zip(cursor.description, found, strict=True)}

    def _reap(self, now: float) -> tuple[dict[str, Any], Spend]:
        """The pool row and its reserved amount after dropping expired reservations."""
        row = self._pool()
        reserved = _spend(row, "reserved_")
        where, args = "pool = ? AND expires_at <= ?", [self.name, now]
        stale, *sums = self._conn.execute(
            f"SELECT count(*), {SUM_SPEND} FROM {RESERVATIONS_TABLE} WHERE {where}", args
        ).fetchone()
        if stale:
            self._conn.execute(f"DELETE FROM {RESERVATIONS_TABLE} WHERE {where}", args)
            reserved = _minus(reserved, spend_of(sums))
            self._set(reserved=reserved, now=now)
        return row, reserved

    def _set(
        self, *, now: float, spent: Spend | None = None, reserved: Spend | None = None
    ) -> None:
        updates: dict[str, Any] = {"updated_at": now}
        if spent is not None:
            updates.update(_counters("spent_", spent))
        if reserved is not None:
            updates.update(_counters("reserved_", reserved))
        assignments = ", ".join(f"{column} = ?" for column in updates)
        self._conn.execute(
            f"UPDATE {POOLS_TABLE} SET {assignments} WHERE name = ?", [*updates.values(), self.name]
        )

    def _take(self, reservation: Reservation) -> Spend | None:
        """Delete the reservation's row; the amount it held, or None if it was gone."""
        if reservation.pool != self.name:
            raise ConfigurationError(
                f"The reservation belongs to pool {reservation.pool!r}, not {self.name!r}. "
                "Commit or release it through the SharedBudget that granted it."
            )
        where = "id = ? AND pool = ?"
        args = [reservation.id, self.name]
        held = self._conn.execute(
            f"SELECT {', '.join(SPEND_COLUMNS)} FROM {RESERVATIONS_TABLE} WHERE {where}", args
        ).fetchone()
        if held is None:
            return None
        self._conn.execute(f"DELETE FROM {RESERVATIONS_TABLE} WHERE {where}", args)
        return spend_of(held)

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
        counts = spend_row(amount, "amount")
        wanted = Spend(**counts)
        key = nonempty_str(key, "key")

        def work() -> Reservation | None:
            now = self._clock()
            row, reserved = self._reap(now)
            if _limits(row).exceeded(spent=_spend(row, "spent_"), reserved=reserved, amount=wanted):
                return None
            held = Reservation(
                id=uuid.uuid4().hex,
                pool=self.name,
                key=key,
                amount=wanted,
                expires_at=now + self.lease_seconds,
            )
            self._db.table(RESERVATIONS_TABLE).insert(
                {
                    "id": held.id,
                    "pool": self.name,
                    "key": key,
                    **counts,
                    "created_at": now,
                    "expires_at": held.expires_at,
                    "pid": os.getpid(),
                    "host": self._host,
                }
            )
            self._set(reserved=reserved + wanted, now=now)
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
        counts = spend_row(actual, "actual")

        def work() -> bool:
            now = self._clock()
            row = self._pool()
            reserved = _spend(row, "reserved_")
            held = self._take(reservation)
            if held is not None:
                reserved = _minus(reserved, held)
            record = {
                "pool": self.name,
                "key": reservation.key,
                **counts,
                "reservation_id": reservation.id,
                "created_at": now,
                "pid": os.getpid(),
                "host": self._host,
            }
            table = self._db.table(COMMITS_TABLE)
            counted = inserted(self._conn, lambda: table.insert(record, ignore=True))
            spent = _spend(row, "spent_") + Spend(**counts) if counted else None
            self._set(spent=spent, reserved=reserved, now=now)
            return counted

        return self._write(work)

    def release(self, reservation: Reservation) -> bool:
        """Drop a reservation without spending (the call failed or was not made).

        Returns:
            True if the reservation was still held; False if it was already committed,
            released or expired (releasing twice is harmless).
        """

        def work() -> bool:
            now = self._clock()
            row = self._pool()
            held = self._take(reservation)
            if held is None:
                return False
            self._set(reserved=_minus(_spend(row, "reserved_"), held), now=now)
            return True

        return self._write(work)

    def status(self) -> PoolStatus:
        """The pool's limits, spent and reserved amounts, and what remains grantable.

        Expired reservations are dropped first, so ``reserved`` counts live ones only.
        """

        def work() -> PoolStatus:
            row, reserved = self._reap(self._clock())
            (live,) = self._conn.execute(
                f"SELECT count(*) FROM {RESERVATIONS_TABLE} WHERE pool = ?", [self.name]
            ).fetchone()
            limits, spent = _limits(row), _spend(row, "spent_")
            return {
                "name": self.name,
                "limits": {"usd_micros": limits.usd_micros, "tokens": limits.tokens},
                "spent": _counters("", spent),
                "reserved": _counters("", reserved),
                "remaining": limits.remaining(spent=spent, reserved=reserved),
                "reservations": live,
            }

        return self._write(work)

    def set_limits(self, *, usd: Dollars | None, tokens: int | None) -> None:
        """Replace the pool's limits for every holder (a top-up, or a cut).

        Live reservations stay; a cut below ``spent + reserved`` refuses new reservations
        until enough is committed or released.

        Raises:
            ConfigurationError: A limit is not usable, or both are None.
        """
        limits = PoolLimits.of(usd=usd, tokens=tokens)
        if limits.is_empty:
            raise ConfigurationError(
                "set_limits() needs usd= or tokens= (a pool without limits grants "
                "everything). Pass e.g. set_limits(usd=25, tokens=None)."
            )

        def work() -> None:
            self._pool()
            self._conn.execute(
                f"UPDATE {POOLS_TABLE} SET usd_micros_limit = ?, tokens_limit = ?, "
                "updated_at = ? WHERE name = ?",
                [limits.usd_micros, limits.tokens, self._clock(), self.name],
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


def _limits(row: dict[str, Any]) -> PoolLimits:
    return PoolLimits(usd_micros=row["usd_micros_limit"], tokens=row["tokens_limit"])
