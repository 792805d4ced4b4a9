"""The bench scripts run, and each prints its figures as one JSON object on its last line.

Small runs (a few steps or calls): the figures themselves are not judged here (speed is
measured by the benches, never by timed tests). The ``--instructions`` mode needs
valgrind and minutes; its child runs (what callgrind counts) are run here directly.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

BENCH = Path(__file__).parent.parent / "bench"


def _run(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, str(BENCH / script), *args],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _last_json(out: str) -> dict[str, Any]:
    figures = json.loads(out.strip().splitlines()[-1])
    assert isinstance(figures, dict)
    return figures


def test_overhead_bench_prints_its_figures() -> None:
    figures = _last_json(_run("overhead.py", "--steps", "30", "--rounds", "1", "--json").stdout)
    for saver in ("none", "sqlite"):
        assert set(figures[saver]) == {"plain_us_per_step", "guarded_us_per_step", "ratio"}
        assert figures[saver]["ratio"] > 0


@pytest.mark.parametrize("scenario", [[], ["--loop", "--tool-calls", "2"]], ids=["call", "loop"])
def test_budget_bench_prints_its_figures(scenario: list[str]) -> None:
    args = ["--calls", "6", "--rounds", "1", *scenario, "--json"]
    figures = _last_json(_run("budget.py", *args).stdout)
    assert figures["scenario"] == ("loop" if scenario else "call")
    # Too few calls to judge the ratio (it is None when noise makes theirs look free).
    assert "ratio" in figures and figures["target"] == 0.2
    for kind in ("plain", "theirs", "ours", "handler"):
        assert figures[f"{kind}_us_per_call"] > 0


def test_loops_bench_prints_its_figures() -> None:
    args = ["--steps", "5", "--repeat", "1", "--windows", "16", "--histories", "20", "--json"]
    figures = _last_json(_run("loops.py", *args).stdout)
    rows = {(r["workload"], r["window"], r["history"]) for r in figures["results"]}
    assert rows == {("mixed", 16, 20), ("one_agent", 16, 20), ("tiny", 16, 20)}
    assert set(figures["history_ratio"]) == {"mixed", "one_agent", "tiny"}


@pytest.mark.parametrize(
    ("script", "child"),
    [
        ("overhead.py", ["guarded", "sqlite"]),
        ("budget.py", ["ours", "2", "loop", "none"]),
    ],
    ids=["overhead", "budget"],
)
def test_instruction_counting_child_runs(script: str, child: list[str]) -> None:
    # What --instructions runs under callgrind, twice per variant: warm-up, then N units.
    # Each child checks its work was done (every step run, every model call metered) and
    # fails otherwise, so a count can never come from a run that stopped early.
    proc = _run(script, "--child", *child, "--units", "3")
    assert proc.stdout == ""
