"""Count a workload's CPU instructions with valgrind's callgrind.

Time on a shared machine swings by several percent from run to run; instructions do not
(with a fixed ``PYTHONHASHSEED``, two runs agree within 0.01 %). A bench's ``--instructions``
mode runs its own script again as a child under callgrind, doing ``--units`` units of
work after the same warm-up, for two unit counts: the difference divided by the
difference in units is the instructions per unit, with start-up, imports and warm-up
cancelled out. Instructions are not time (a cache miss costs many): they show where
code does less or more work, exactly; time is what a user waits for.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

__all__ = ("add_flag", "child_units", "per_unit", "require_valgrind")

_COLLECTED = re.compile(r"Collected : (\d+)")


def add_flag(parser: argparse.ArgumentParser, per: str) -> None:
    """Add a bench's ``--instructions`` option (counts per ``per``, e.g. "step")."""
    parser.add_argument(
        "--instructions",
        action="store_true",
        help=f"count CPU instructions per {per} with valgrind instead of timing",
    )


def require_valgrind() -> None:
    """Exit with a clear message when valgrind is not installed."""
    if shutil.which("valgrind") is None:
        raise SystemExit(
            "--instructions needs valgrind (callgrind): install it (Debian: apt install "
            "valgrind), or leave --instructions out to measure CPU time."
        )


def _run(script: Path, child: list[str], units: int) -> int:
    command = [
        "valgrind",
        "--tool=callgrind",
        "--callgrind-out-file=/dev/null",
        sys.executable,
        str(script),
        "--child",
        *child,
        "--units",
        str(units),
    ]
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    proc = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    found = _COLLECTED.search(proc.stderr)
    if proc.returncode != 0 or found is None:
        raise RuntimeError(f"{' '.join(command)} failed:\n{proc.stderr[-3000:]}")
    return int(found.group(1))


def per_unit(script: Path, child: list[str], small: int, large: int) -> float:
    """Instructions per unit of work of ``script --child <child...> --units N``, from two
    runs (``small`` and ``large`` units) side by side."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        low, high = pool.map(lambda n: _run(script, child, n), (small, large))
    return (high - low) / (large - small)


def child_units(argv: list[str]) -> tuple[list[str], int] | None:
    """``(child arguments, units)`` when this process is a ``--child`` run, else None."""
    if "--child" not in argv:
        return None
    rest = argv[argv.index("--child") + 1 :]
    units = int(rest[rest.index("--units") + 1])
    return rest[: rest.index("--units")], units
