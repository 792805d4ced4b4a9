"""The weekend scenario (issue 3): 200 concurrent conversations on one shared budget.

Production report: 2,000 conversations over a weekend, each spending "only" a few
dollars, $3,200 in all. Here 200 conversations, in two processes (one a thread pool of
sync runs, the other ``asyncio``), each wanting $1.50, share one ``SharedBudget`` of $20
in a SQLite file. Every model call reserves its projection (input + ``max_tokens``) in the
pool before the call, so the pool is never overdrawn; every conversation ends in a
defined status, and none crashes.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from sanegraph.checkpoints import SharedBudget
from sanegraph.guards.budget import price_call

sys.path.insert(0, str(Path(__file__).parent))
from _spawn import spawn
from _weekend_worker import IN, OUT

WORKER = Path(__file__).with_name("_weekend_worker.py")
CALL = price_call("gpt-4o", {"input_tokens": IN, "output_tokens": OUT}, provider="openai")
"""What one call costs (the worker's scripted usage): ~$0.25."""


def _spawn(*args: str) -> subprocess.Popen[str]:
    return spawn(WORKER, *args)


def test_two_hundred_conversations_share_twenty_dollars(tmp_path: Path) -> None:
    pool_db = tmp_path / "budgets.sqlite"
    SharedBudget("weekend", path=pool_db, usd=20).close()
    sync = tmp_path / "sync"
    sync.mkdir()
    workers = [
        _spawn("threads", str(pool_db), str(tmp_path / "a.sqlite"), "100", str(sync)),
        _spawn("asyncio", str(pool_db), str(tmp_path / "b.sqlite"), "100", str(sync)),
    ]
    try:
        deadline = time.monotonic() + 60
        while len(list(sync.glob("ready-*"))) < 2:
            assert time.monotonic() < deadline, "the workers never got ready"
            assert all(w.poll() is None for w in workers), [w.communicate() for w in workers]
            time.sleep(0.01)
        (sync / "go").touch()
        outs = [w.communicate(timeout=240) for w in workers]
    finally:
        for w in workers:
            w.kill()
    for worker, (_, err) in zip(workers, outs, strict=True):
        assert worker.returncode == 0, err
    runs: list[dict[str, Any]] = [r for out, _ in outs for r in json.loads(out)]

    assert len(runs) == 200
    # None crashed; every conversation finished with the owner's verdict.
    assert Counter(r["status"] for r in runs) == {"done": 200}
    assert {r["outcome"] for r in runs} <= {"partial", "failed"}
    finished = [r for r in runs if r["trip"] == "hop_cap"]  # got its whole $1.50
    stopped = [r for r in runs if r["trip"] == "budget"]  # the pool refused a call
    assert len(finished) + len(stopped) == 200
    assert stopped, "$300 of demand on a $20 pool must be refused somewhere"

    # The pool was never overdrawn: what the ledgers say was spent is what the models
    # billed, call by call, and it fits in $20 (every projection covered its answer).
    calls = sum(r["calls"] for r in runs)
    spent = sum(r["usd_micros"] for r in runs)
    assert spent == calls * CALL
    assert spent <= 20_000_000
    assert calls == 20_000_000 // CALL == 79  # the pool was used to the last call that fit
    with SharedBudget("weekend", path=pool_db) as pool:
        status = pool.status()
    assert status["spent"]["usd_micros"] == spent
    assert status["reserved"]["usd_micros"] == 0
    assert sum(r["calls"] for r in finished) == 6 * len(finished)
