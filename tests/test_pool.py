"""SharedBudget: one spend pool in SQLite for many threads and processes. Reserve-then-
commit is atomic, boundaries are exact, crashed holders' reservations expire, and every
commit is counted once."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from sanegraph.checkpoints._pool_core import (
    PoolCounters,
    check_open_limits,
    grant,
    is_expired,
    pool_gone,
)
from sanegraph.checkpoints.journal import TaskKey
from sanegraph.checkpoints.pool import (
    COMMITS_TABLE,
    POOLS_TABLE,
    RESERVATIONS_TABLE,
    PoolLimits,
    Reservation,
    SharedBudget,
)
from sanegraph.guards import ConfigurationError
from sanegraph.guards.budget import Spend

sys.path.insert(0, str(Path(__file__).parent))
from _spawn import spawn

WORKER = Path(__file__).with_name("_pool_worker.py")
DOLLAR = 1_000_000


def usd(micros: int) -> Spend:
    return Spend(usd_micros=micros)


class Clock:
    """A settable clock for leases."""

    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "runs" / "budgets.sqlite"


# -- unit tier: limits, no I/O ----------------------------------------------------------


@pytest.mark.parametrize(
    ("dollars", "micros"),
    [(20, 20 * DOLLAR), (0.1, 100_000), (Decimal("0.000001"), 1), (Decimal("19.99"), 19_990_000)],
)
def test_dollars_become_whole_micro_dollars(dollars: Any, micros: int) -> None:
    assert PoolLimits.of(usd=dollars, tokens=None).usd_micros == micros


def test_would_exceed_is_strictly_greater_than_the_limit() -> None:
    limits = PoolLimits(usd_micros=100, tokens=50)
    spent, reserved = Spend(usd_micros=60, input_tokens=10), Spend(usd_micros=30, output_tokens=10)

    assert limits.exceeded(spent=spent, reserved=reserved, amount=usd(10)) is None
    assert limits.exceeded(spent=spent, reserved=reserved, amount=usd(11)) == "usd"
    assert limits.exceeded(spent=spent, reserved=reserved, amount=Spend(input_tokens=30)) is None
    assert (
        limits.exceeded(spent=spent, reserved=reserved, amount=Spend(output_tokens=31)) == "tokens"
    )
    assert limits.remaining(spent=spent, reserved=reserved) == {"usd_micros": 10, "tokens": 30}
    assert limits.remaining(spent=usd(500), reserved=Spend()) == {"usd_micros": 0, "tokens": 50}


def test_the_core_grants_refuses_commits_and_drops_on_plain_values() -> None:
    """The pool's rules without a database: what any store (SQLite, later Postgres)
    writes back after reading the counters under its lock."""
    empty = PoolCounters(limits=PoolLimits(usd_micros=100), spent=Spend(), reserved=Spend())

    granted = grant(empty, usd(60), pool="acme", key="call-1", now=1_000.0, lease_seconds=30)
    assert granted is not None
    held, after = granted
    assert (held.pool, held.key, held.amount, held.expires_at) == (
        "acme",
        "call-1",
        usd(60),
        1_030.0,
    )
    assert (after.spent, after.reserved) == (Spend(), usd(60))
    assert grant(after, usd(41), pool="acme", key="call-2", now=1_000.0, lease_seconds=30) is None
    assert after.reserve(usd(40)) == PoolCounters(
        limits=PoolLimits(usd_micros=100), spent=Spend(), reserved=usd(100)
    )

    # Reality wins: a commit above the reservation counts in full; a key already
    # counted gives its reservation back and counts nothing.
    committed = after.commit(usd(60), usd(75))
    assert (committed.spent, committed.reserved) == (usd(75), Spend())
    again = after.commit(usd(60), None)
    assert (again.spent, again.reserved) == (Spend(), Spend())
    late = empty.commit(None, usd(5))  # the reservation had expired: nothing to give back
    assert (late.spent, late.reserved) == (usd(5), Spend())
    assert after.drop(usd(60)).reserved == Spend()

    assert committed.status("acme", live=0) == {
        "name": "acme",
        "limits": {"usd_micros": 100, "tokens": None},
        "spent": {"usd_micros": 75, "input_tokens": 0, "output_tokens": 0},
        "reserved": {"usd_micros": 0, "input_tokens": 0, "output_tokens": 0},
        "remaining": {"usd_micros": 25, "tokens": None},
        "reservations": 0,
    }


def test_a_lease_ends_at_expires_at_inclusive() -> None:
    assert not is_expired(1_030.0, 1_029.9)
    assert is_expired(1_030.0, 1_030.0)


def test_opening_limits_are_checked_against_the_stored_ones_without_a_file() -> None:
    stored = PoolLimits(usd_micros=20 * DOLLAR)
    check_open_limits(None, stored, name="acme", where="mem")  # creates
    check_open_limits(stored, PoolLimits(), name="acme", where="mem")  # attaches
    check_open_limits(
        stored, PoolLimits.of(usd=Decimal("20.0"), tokens=None), name="acme", where="mem"
    )
    with pytest.raises(ConfigurationError, match=re.escape("asks for usd=21, tokens=None.")):
        check_open_limits(stored, PoolLimits.of(usd=21, tokens=None), name="acme", where="mem")
    with pytest.raises(ConfigurationError, match=re.escape("sets no limit and mem has no")):
        check_open_limits(None, PoolLimits(), name="acme", where="mem")
    assert "Open it again with its limits." in str(pool_gone("acme", "mem"))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"usd": -1},
            "usd must be a finite amount >= 0, got -1. Pass US dollars as a number >= 0, "
            "e.g. usd=20 or usd=Decimal('19.99').",
        ),
        (
            {"usd": float("nan")},
            "usd must be a finite amount >= 0, got nan.",
        ),
        ({"usd": "20"}, "usd must be a number of US dollars, got '20'."),
        (
            {"tokens": 1.5},
            "tokens must be a whole number >= 0, got 1.5. Pass e.g. tokens=2_000_000.",
        ),
        (
            {"usd": 1, "lease_seconds": 0},
            "lease_seconds must be a positive number, got 0. Pass e.g. lease_seconds=60, "
            "longer than the slowest model call.",
        ),
    ],
)
def test_bad_pool_arguments_say_what_to_pass(
    db: Path, kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigurationError, match=re.escape(message)):
        SharedBudget("acme", path=db, **kwargs)


# -- boundaries and arithmetic on a file ------------------------------------------------


def test_exactly_the_limit_is_granted_one_micro_dollar_more_is_refused(db: Path) -> None:
    with SharedBudget("exact", usd=1, path=db) as pool:
        assert pool.reserve(usd(DOLLAR), key="all of it") is not None
    with SharedBudget("over", usd=1, path=db) as pool:
        assert pool.reserve(usd(DOLLAR + 1), key="too much") is None
        assert pool.status()["reservations"] == 0


def test_reserved_amounts_count_against_the_limit_until_committed(db: Path) -> None:
    with SharedBudget("acme", usd=1, path=db) as pool:
        first = pool.reserve(usd(600_000), key="call-1")
        assert first is not None
        assert pool.reserve(usd(400_001), key="call-2") is None
        second = pool.reserve(usd(400_000), key="call-2")
        assert second is not None
        assert pool.reserve(usd(0), key="call-3") is not None  # nothing over: still fits

        assert pool.commit(first, Spend(usd_micros=550_000, input_tokens=900, output_tokens=100))
        status = pool.status()

    assert status == {
        "name": "acme",
        "limits": {"usd_micros": DOLLAR, "tokens": None},
        "spent": {"usd_micros": 550_000, "input_tokens": 900, "output_tokens": 100},
        "reserved": {"usd_micros": 400_000, "input_tokens": 0, "output_tokens": 0},
        "remaining": {"usd_micros": 50_000, "tokens": None},
        "reservations": 2,
    }


def test_the_token_limit_counts_input_and_output_tokens(db: Path) -> None:
    with SharedBudget("tokens", tokens=1_000, path=db) as pool:
        held = pool.reserve(Spend(input_tokens=700, output_tokens=300), key="call-1")
        assert held is not None
        assert pool.reserve(Spend(input_tokens=1), key="call-2") is None
        pool.release(held)
        assert pool.reserve(Spend(input_tokens=1_000), key="call-3") is not None


def test_release_frees_the_room_and_spends_nothing(db: Path) -> None:
    with SharedBudget("acme", usd=1, path=db) as pool:
        held = pool.reserve(usd(DOLLAR), key="call-1")
        assert held is not None

        assert pool.release(held) is True
        assert pool.release(held) is False  # twice is harmless
        assert pool.status()["spent"]["usd_micros"] == 0
        assert pool.reserve(usd(DOLLAR), key="call-2") is not None


def test_a_commit_above_the_reservation_counts_in_full(db: Path) -> None:
    with SharedBudget("acme", usd=1, path=db) as pool:
        held = pool.reserve(usd(900_000), key="call-1")
        assert held is not None

        assert pool.commit(held, usd(1_200_000)) is True  # reality wins
        status = pool.status()
        assert (status["spent"]["usd_micros"], status["remaining"]["usd_micros"]) == (1_200_000, 0)
        assert pool.reserve(usd(0), key="call-2") is None  # over the limit: nothing more


def test_each_key_is_counted_once(db: Path) -> None:
    key = TaskKey(thread_id="t1", checkpoint_id="c1", task_id="abc").call_key(0)
    with SharedBudget("acme", usd=1, path=db) as pool:
        held = pool.reserve(usd(100), key=key)
        assert held is not None
        assert pool.commit(held, usd(90)) is True
        assert pool.commit(held, usd(90)) is False  # a retried commit
        # The crashed task re-runs with the same key: its reservation is dropped, not paid.
        rerun = pool.reserve(usd(100), key=key)
        assert rerun is not None
        assert pool.commit(rerun, usd(90)) is False

        status = pool.status()
    assert (status["spent"]["usd_micros"], status["reservations"]) == (90, 0)
    with sqlite3.connect(db) as conn:
        assert conn.execute(f"SELECT key, usd_micros FROM {COMMITS_TABLE}").fetchall() == [
            (key, 90)
        ]


def test_a_stale_reservation_expires_after_its_lease(db: Path) -> None:
    clock = Clock()
    with SharedBudget("acme", usd=1, path=db, lease_seconds=30, clock=clock) as pool:
        held = pool.reserve(usd(DOLLAR), key="call-1")
        assert held is not None and held.expires_at == 1_030.0
        clock.now = 1_029.9
        assert pool.reserve(usd(1), key="call-2") is None

        clock.now = 1_030.0
        assert pool.status()["reserved"]["usd_micros"] == 0
        again = pool.reserve(usd(DOLLAR), key="call-3")
        assert again is not None
        # The late commit of the expired reservation is still counted.
        assert pool.commit(held, usd(10)) is True
        assert pool.status()["spent"]["usd_micros"] == 10


# -- opening a pool ---------------------------------------------------------------------


def test_later_holders_attach_with_or_without_the_same_limits(db: Path) -> None:
    with SharedBudget("acme", usd=20, tokens=10_000, path=db) as first:
        first.reserve(usd(5 * DOLLAR), key="call-1")
        with (
            SharedBudget("acme", path=db) as second,
            SharedBudget("acme", usd=Decimal("20.000000"), tokens=10_000, path=db) as third,
        ):
            assert second.status()["reserved"]["usd_micros"] == 5 * DOLLAR
            assert third.status()["limits"] == {"usd_micros": 20 * DOLLAR, "tokens": 10_000}


def test_a_pool_that_does_not_exist_needs_a_limit(db: Path) -> None:
    with pytest.raises(
        ConfigurationError,
        match=re.escape(
            f"SharedBudget('acme') sets no limit and {db} has no such pool. Pass usd= and/or "
            "tokens=, e.g. SharedBudget('acme', usd=20, path=...)."
        ),
    ):
        SharedBudget("acme", path=db)


def test_different_limits_for_an_existing_pool_are_refused(db: Path) -> None:
    SharedBudget("acme", usd=20, path=db).close()
    with pytest.raises(
        ConfigurationError,
        match=re.escape(
            f"Pool 'acme' in {db} already has limits usd=20, tokens=None; this SharedBudget "
            "asks for usd=25.5, tokens=None. Pass the same limits, omit usd= and tokens= to "
            "use the stored ones, or change them for every holder with "
            "SharedBudget.set_limits(usd=..., tokens=...)."
        ),
    ):
        SharedBudget("acme", usd=25.5, path=db)


def test_set_limits_tops_up_every_holder(db: Path) -> None:
    with SharedBudget("acme", usd=1, path=db) as one, SharedBudget("acme", path=db) as two:
        held = one.reserve(usd(DOLLAR), key="call-1")
        assert held is not None
        assert two.reserve(usd(DOLLAR), key="call-2") is None

        one.set_limits(usd=2, tokens=None)

        assert two.reserve(usd(DOLLAR), key="call-2") is not None
        with pytest.raises(
            ConfigurationError,
            match=re.escape(
                "set_limits() needs usd= or tokens= (a pool without limits grants everything). "
                "Pass e.g. set_limits(usd=25, tokens=None)."
            ),
        ):
            two.set_limits(usd=None, tokens=None)


def test_another_pools_reservation_is_refused(db: Path) -> None:
    with (
        SharedBudget("acme", usd=1, path=db) as acme,
        SharedBudget("globex", usd=1, path=db) as globex,
    ):
        held = acme.reserve(usd(1), key="call-1")
        assert isinstance(held, Reservation)
        with pytest.raises(
            ConfigurationError,
            match=re.escape(
                "The reservation belongs to pool 'acme', not 'globex'. Commit or release it "
                "through the SharedBudget that granted it."
            ),
        ):
            globex.commit(held, usd(1))


def test_the_pool_tables_sit_next_to_the_checkpoints(tmp_path: Path) -> None:
    from sanegraph.checkpoints import sqlite_saver

    path = tmp_path / "checkpoints.sqlite"
    with sqlite_saver(path) as saver, SharedBudget("acme", usd=1, path=path) as pool:
        assert saver.get_tuple({"configurable": {"thread_id": "t1", "checkpoint_ns": ""}}) is None
        assert pool.reserve(usd(1), key="call-1") is not None
    with sqlite3.connect(path) as conn:
        names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"checkpoints", "writes", POOLS_TABLE, RESERVATIONS_TABLE, COMMITS_TABLE} <= names


# -- concurrency ------------------------------------------------------------------------


@pytest.mark.parametrize("sharing", ["one pool object", "one pool object per thread"])
def test_fifty_threads_get_exactly_the_limit(db: Path, sharing: str) -> None:
    SharedBudget("acme", usd=Decimal("0.0001"), path=db).close()  # 100 micro-dollars
    shared = SharedBudget("acme", path=db)
    start = threading.Barrier(50)
    granted: list[tuple[SharedBudget, Reservation]] = []
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            pool = shared if sharing == "one pool object" else SharedBudget("acme", path=db)
            start.wait()
            for i in range(10):
                held = pool.reserve(usd(1), key=f"{n}-{i}")
                if held is not None:
                    granted.append((pool, held))
        except BaseException as error:  # pragma: no cover - reported below
            errors.append(error)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(50)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    assert len(granted) == 100
    assert shared.status()["reserved"]["usd_micros"] == 100
    for pool, held in granted:
        assert pool.commit(held, usd(1))
    status = shared.status()
    assert (status["spent"]["usd_micros"], status["reservations"]) == (100, 0)


async def test_concurrent_async_reservations_get_exactly_the_limit(db: Path) -> None:
    with SharedBudget("acme", usd=Decimal("0.00001"), path=db) as pool:  # 10 micro-dollars
        results = await asyncio.gather(*(pool.areserve(usd(1), key=f"k{i}") for i in range(30)))
        granted = [r for r in results if r is not None]
        assert len(granted) == 10
        assert all(await asyncio.gather(*(pool.acommit(r, usd(1)) for r in granted)))
        assert await pool.arelease(granted[0]) is False
        assert (await pool.astatus())["spent"]["usd_micros"] == 10


def _spawn(*args: str) -> subprocess.Popen[str]:
    return spawn(WORKER, *args)


def _wait_for(condition: Any, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def test_two_processes_never_overspend_and_count_every_commit_once(
    db: Path, tmp_path: Path
) -> None:
    SharedBudget("weekend", usd=Decimal("0.0002"), path=db).close()  # 200 micro-dollars
    sync = tmp_path / "sync"
    sync.mkdir()
    workers = [_spawn("hammer", str(db), "weekend", "400", str(sync)) for _ in range(2)]
    try:
        _wait_for(lambda: len(list(sync.glob("ready-*"))) == 2, "both workers")
        (sync / "go").touch()
        outs = [w.communicate(timeout=60) for w in workers]
    finally:
        for w in workers:
            w.kill()
    assert [w.returncode for w in workers] == [0, 0], [err for _, err in outs]
    reports = [json.loads(out) for out, _ in outs]

    status = SharedBudget("weekend", path=db).status()
    counted = sum(r["counted"] for r in reports)
    # Every grant was either released or committed: what was granted and kept is spent.
    assert counted == sum(r["granted"] - r["released"] for r in reports)
    assert status["spent"] == {"usd_micros": counted, "input_tokens": counted, "output_tokens": 0}
    assert counted == 200  # demand exceeded the pool: it filled to the limit, not past it
    assert [r["recounted"] for r in reports] == [0, 0]  # retried commits were not counted
    assert (status["reserved"]["usd_micros"], status["reservations"]) == (0, 0)
    assert all(r["refused"] > 0 for r in reports)
    with sqlite3.connect(db) as conn:
        assert conn.execute(f"SELECT count(*) FROM {COMMITS_TABLE}").fetchone() == (200,)


def test_a_killed_holders_reservation_stops_blocking_after_its_lease(db: Path) -> None:
    SharedBudget("acme", usd=Decimal("0.0001"), path=db).close()  # 100 micro-dollars
    holder = _spawn("hold", str(db), "acme", "100", "30")
    try:
        line = holder.stdout.readline() if holder.stdout else ""
        assert line, holder.stderr.read() if holder.stderr else ""
        held = json.loads(line)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    assert holder.returncode == -signal.SIGKILL

    with SharedBudget("acme", path=db) as pool:
        # The holder is dead but its lease runs: its reservation still holds the pool.
        assert pool.reserve(usd(1), key="too early") is None
    after_lease = Clock(held["expires_at"])
    with SharedBudget("acme", path=db, clock=after_lease) as pool:
        mine = pool.reserve(usd(100), key="after the lease")
        assert mine is not None
        status = pool.status()
    assert (status["reserved"]["usd_micros"], status["reservations"]) == (100, 1)
    with sqlite3.connect(db) as conn:
        assert conn.execute(f"SELECT id FROM {RESERVATIONS_TABLE}").fetchall() == [(mine.id,)]
