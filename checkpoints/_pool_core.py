"""The I/O-free core of the shared budgets: limits, counters, and the rules every store keeps.

A store keeps, per pool, its limits and two counters, ``spent`` and ``reserved`` (a
:class:`PoolCounters`), one row per live reservation and one row per committed key. Each
operation runs in one transaction that holds the pool's row against every other writer
(SQLite: ``BEGIN IMMEDIATE``; PostgreSQL: ``SELECT ... FOR UPDATE``), reads the counters,
applies one rule from here and writes the result back:

- reserve: expire what :func:`is_expired`, then :func:`grant`, which refuses iff
  ``spent + reserved + amount > limit`` for a limit set (:meth:`PoolLimits.exceeded`);
- commit: :meth:`PoolCounters.commit`, counting ``actual`` only when the key is new;
- release and expiry: :meth:`PoolCounters.drop`;
- status: :meth:`PoolCounters.status`.

The table and column names, and the rows written (:func:`reservation_row`,
:func:`commit_row`), are the schema every SQL store shares. Nothing here does I/O, so each
rule is tested on plain values.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, replace
from decimal import Decimal, InvalidOperation
from typing import Any, Literal, TypedDict

from sanegraph.guards import ConfigurationError
from sanegraph.guards.budget import Spend

from ._values import spend_columns, spend_in, spend_row

__all__ = (
    "COMMITS_TABLE",
    "POOLS_TABLE",
    "RESERVATIONS_TABLE",
    "Dollars",
    "PoolCounters",
    "PoolLimits",
    "PoolStatus",
    "Reservation",
    "check_lease",
    "check_open_limits",
    "check_owner",
    "check_spend",
    "commit_row",
    "counters_of",
    "grant",
    "is_expired",
    "limits_of",
    "new_limits",
    "pool_gone",
    "reservation_row",
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


# -- limits -----------------------------------------------------------------------------


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


def _total(spend: Spend) -> int:
    return spend.input_tokens + spend.output_tokens


def _minus(a: Spend, b: Spend) -> Spend:
    return Spend(
        usd_micros=a.usd_micros - b.usd_micros,
        input_tokens=a.input_tokens - b.input_tokens,
        output_tokens=a.output_tokens - b.output_tokens,
    )


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


def new_limits(*, usd: Dollars | None, tokens: int | None) -> PoolLimits:
    """The limits ``SharedBudget.set_limits`` writes, checked: at least one must be set.

    Raises:
        ConfigurationError: A limit is not usable, or both are None.
    """
    limits = PoolLimits.of(usd=usd, tokens=tokens)
    if limits.is_empty:
        raise ConfigurationError(
            "set_limits() needs usd= or tokens= (a pool without limits grants "
            "everything). Pass e.g. set_limits(usd=25, tokens=None)."
        )
    return limits


def check_open_limits(
    stored: PoolLimits | None, wanted: PoolLimits, *, name: str, where: str
) -> None:
    """Check the limits a holder opens a pool with against the stored ones.

    The first holder creates the pool with ``wanted``; a later one may omit the limits
    (``wanted.is_empty``) to use the stored ones, or pass the same.

    Args:
        stored: The pool's limits, or None if the pool does not exist yet.
        wanted: The limits the holder passed.
        name: The pool's name, for the messages.
        where: Where the pool is kept (a file path), for the messages.

    Raises:
        ConfigurationError: The pool does not exist and ``wanted`` sets no limit, or
            ``wanted`` differs from ``stored``.
    """
    if stored is None:
        if wanted.is_empty:
            raise ConfigurationError(
                f"SharedBudget({name!r}) sets no limit and {where} has no such pool. Pass "
                f"usd= and/or tokens=, e.g. SharedBudget({name!r}, usd=20, path=...)."
            )
        return
    if not wanted.is_empty and wanted != stored:
        raise ConfigurationError(
            f"Pool {name!r} in {where} already has limits {stored._describe()}; this "
            f"SharedBudget asks for {wanted._describe()}. Pass the same limits, omit usd= "
            "and tokens= to use the stored ones, or change them for every holder with "
            "SharedBudget.set_limits(usd=..., tokens=...)."
        )


# -- reservations -----------------------------------------------------------------------


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


def check_lease(lease_seconds: Any) -> float:
    """``lease_seconds`` as a float if it is a positive finite number; else an error."""
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
    return float(lease_seconds)


def check_spend(amount: Spend, what: str) -> Spend:
    """``amount`` as a ``Spend`` of whole numbers >= 0 (``what`` names it in the message)."""
    return Spend(**spend_row(amount, what))


def is_expired(expires_at: float, now: float) -> bool:
    """Whether a reservation stopped holding room: ``expires_at <= now``.

    The SQL stores select expired reservations with the same comparison.
    """
    return expires_at <= now


def check_owner(reservation: Reservation, pool: str) -> None:
    """Refuse to commit or release through ``pool`` a reservation another pool granted."""
    if reservation.pool != pool:
        raise ConfigurationError(
            f"The reservation belongs to pool {reservation.pool!r}, not {pool!r}. "
            "Commit or release it through the SharedBudget that granted it."
        )


def pool_gone(name: str, where: str) -> ConfigurationError:
    """The error for a pool whose row was deleted while a holder had it open."""
    return ConfigurationError(
        f"Pool {name!r} no longer exists in {where} (its row in {POOLS_TABLE} was "
        "deleted). Open it again with its limits."
    )


# -- counters ---------------------------------------------------------------------------


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


@dataclass(frozen=True, slots=True, kw_only=True)
class PoolCounters:
    """A pool's limits and counters as one transaction read them; each rule returns the
    counters to write back.

    Example:
        ```python
        now = PoolCounters(limits=PoolLimits(usd_micros=100), spent=Spend(), reserved=Spend())
        held = now.reserve(Spend(usd_micros=60))  # reserved 60
        held.reserve(Spend(usd_micros=41))  # None: 0 + 60 + 41 > 100
        held.commit(Spend(usd_micros=60), Spend(usd_micros=45))  # spent 45, reserved 0
        ```
    """

    limits: PoolLimits
    """What the pool allows."""
    spent: Spend
    """What commits counted so far."""
    reserved: Spend
    """What the live reservations hold."""

    def reserve(self, amount: Spend) -> PoolCounters | None:
        """The counters with ``amount`` held, or None when it would exceed a limit."""
        if self.limits.exceeded(spent=self.spent, reserved=self.reserved, amount=amount):
            return None
        return replace(self, reserved=self.reserved + amount)

    def commit(self, held: Spend | None, counted: Spend | None) -> PoolCounters:
        """The counters after a commit.

        Args:
            held: What the committed reservation still held (None if it had expired or
                was already gone: nothing to give back).
            counted: What the call cost, or None when its key was already counted. It is
                counted in full, even above the reservation or after it expired: the money
                was spent, so ``spent`` may end above the limit.
        """
        spent = self.spent if counted is None else self.spent + counted
        reserved = self.reserved if held is None else _minus(self.reserved, held)
        return replace(self, spent=spent, reserved=reserved)

    def drop(self, held: Spend) -> PoolCounters:
        """The counters without ``held``: reservations released, or expired."""
        return replace(self, reserved=_minus(self.reserved, held))

    def status(self, name: str, *, live: int) -> PoolStatus:
        """What ``SharedBudget.status`` reports, with ``live`` reservations left."""
        limits = self.limits
        return {
            "name": name,
            "limits": {"usd_micros": limits.usd_micros, "tokens": limits.tokens},
            "spent": spend_columns(self.spent),
            "reserved": spend_columns(self.reserved),
            "remaining": limits.remaining(spent=self.spent, reserved=self.reserved),
            "reservations": live,
        }


def grant(
    counters: PoolCounters,
    amount: Spend,
    *,
    pool: str,
    key: str,
    now: float,
    lease_seconds: float,
) -> tuple[Reservation, PoolCounters] | None:
    """Grant ``amount`` under ``key`` if it fits: the reservation and the new counters.

    Returns:
        None when ``amount`` would exceed a limit (:meth:`PoolCounters.reserve`); else a
        new reservation, expiring ``lease_seconds`` after ``now``, and the counters with
        the amount held.
    """
    after = counters.reserve(amount)
    if after is None:
        return None
    held = Reservation(
        id=uuid.uuid4().hex, pool=pool, key=key, amount=amount, expires_at=now + lease_seconds
    )
    return held, after


# -- rows: the schema every SQL store shares ---------------------------------------------


def limits_of(row: Mapping[str, Any]) -> PoolLimits:
    """The limits in a row of :data:`POOLS_TABLE`."""
    return PoolLimits(usd_micros=row["usd_micros_limit"], tokens=row["tokens_limit"])


def counters_of(row: Mapping[str, Any]) -> PoolCounters:
    """The counters in a row of :data:`POOLS_TABLE` (``spent_*``, ``reserved_*``)."""
    return PoolCounters(
        limits=limits_of(row), spent=spend_in(row, "spent_"), reserved=spend_in(row, "reserved_")
    )


def reservation_row(held: Reservation, *, now: float, pid: int, host: str) -> dict[str, Any]:
    """The row of :data:`RESERVATIONS_TABLE` for a granted reservation and its holder."""
    return {
        "id": held.id,
        "pool": held.pool,
        "key": held.key,
        **spend_columns(held.amount),
        "created_at": now,
        "expires_at": held.expires_at,
        "pid": pid,
        "host": host,
    }


def commit_row(
    held: Reservation, actual: Spend, *, now: float, pid: int, host: str
) -> dict[str, Any]:
    """The row of :data:`COMMITS_TABLE` counting ``actual`` under the reservation's key."""
    return {
        "pool": held.pool,
        "key": held.key,
        **spend_columns(actual),
        "reservation_id": held.id,
        "created_at": now,
        "pid": pid,
        "host": host,
    }
