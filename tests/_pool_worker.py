"""Subprocess side of the SharedBudget multi-process tests.

Run as ``python _pool_worker.py MODE DB POOL ...``; prints one JSON line on stdout.

- ``hammer DB POOL ATTEMPTS SYNC_DIR``: attach to the pool (its limits are stored), write
  ``SYNC_DIR/ready-<pid>``, wait for ``SYNC_DIR/go``, then make ATTEMPTS reservations of
  1 micro-dollar. Every 7th granted reservation is released; the others are committed
  (1 micro-dollar, 1 input token), and every 5th commit is sent twice, as a retry after
  an ambiguous failure would. Prints what it was granted and what was counted.
- ``hold DB POOL MICROS LEASE``: reserve MICROS micro-dollars with a lease of LEASE
  seconds, print the reservation, then sleep until killed.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from sanegraph.checkpoints.pool import SharedBudget
from sanegraph.guards.budget import Spend


def _wait_for(path: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} never appeared")
        time.sleep(0.005)


def hammer(db: str, pool_name: str, attempts: int, sync_dir: str) -> dict[str, object]:
    pool = SharedBudget(pool_name, path=db)
    (Path(sync_dir) / f"ready-{os.getpid()}").touch()
    _wait_for(Path(sync_dir) / "go")
    granted = refused = released = counted = recounted = 0
    for i in range(attempts):
        held = pool.reserve(Spend(usd_micros=1), key=f"{os.getpid()}-{i}")
        if held is None:
            refused += 1
            continue
        granted += 1
        if granted % 7 == 0:
            released += pool.release(held)
            continue
        actual = Spend(usd_micros=1, input_tokens=1)
        counted += pool.commit(held, actual)
        if granted % 5 == 0:
            recounted += pool.commit(held, actual)
    pool.close()
    return {
        "granted": granted,
        "refused": refused,
        "released": released,
        "counted": counted,
        "recounted": recounted,
    }


def hold(db: str, pool_name: str, micros: int, lease: float) -> None:
    pool = SharedBudget(pool_name, path=db, lease_seconds=lease)
    held = pool.reserve(Spend(usd_micros=micros), key=f"held by {os.getpid()}")
    assert held is not None
    print(json.dumps({"id": held.id, "expires_at": held.expires_at}), flush=True)
    time.sleep(120)


def main(argv: list[str]) -> None:
    mode, db, pool_name, *rest = argv
    if mode == "hammer":
        print(json.dumps(hammer(db, pool_name, int(rest[0]), rest[1])), flush=True)
    elif mode == "hold":
        hold(db, pool_name, int(rest[0]), float(rest[1]))
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
