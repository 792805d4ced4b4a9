"""Crash exactness of budgets (issue 3): a process killed mid-node after spending.

The spend of the killed attempt is in the journal (written at the moment of spending);
the resumed process re-runs the task, counts that spend once, numbers its own calls after
it, and the budget still holds across both processes. Checked against the provider's
bill, which the agent keeps in a plain file outside sanegraph.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

from sanegraph.guards.budget import price_call

sys.path.insert(0, str(Path(__file__).parent))
from _crash_worker import IN, MAX, OUT
from _spawn import spawn

WORKER = Path(__file__).with_name("_crash_worker.py")
CALL = price_call("gpt-4o", {"input_tokens": IN, "output_tokens": OUT}, provider="openai")
PROJECTED = price_call("gpt-4o", {"input_tokens": IN, "output_tokens": MAX}, provider="openai")


def _spawn(*args: str) -> subprocess.Popen[str]:
    return spawn(WORKER, *args)


def test_a_sigkill_after_spending_neither_loses_nor_double_counts(tmp_path: Path) -> None:
    db, bill = tmp_path / "checkpoints.sqlite", tmp_path / "bill.txt"
    run = _spawn("run", str(db), str(bill))
    try:
        deadline = time.monotonic() + 60
        while not bill.with_suffix(".spent").exists():
            assert time.monotonic() < deadline, run.communicate()
            assert run.poll() is None, run.communicate()
            time.sleep(0.01)
        run.send_signal(signal.SIGKILL)
        run.wait(timeout=30)
    finally:
        run.kill()
    assert run.returncode == -signal.SIGKILL
    assert bill.read_text().count("call") == 2  # the provider billed two calls

    resume = _spawn("resume", str(db), str(bill))
    out, err = resume.communicate(timeout=60)
    assert resume.returncode == 0, err
    report = json.loads(out)

    billed = bill.read_text().count("call")
    # $1 fits 4 calls of $0.215 (the 5th projects $0.225 on top of $0.86): 2 before the
    # crash, 2 after. Without the journal the re-run would have made 4 more.
    assert billed == 4
    assert 4 * CALL <= 1_000_000 < 4 * CALL + PROJECTED
    expected = {
        "usd_micros": billed * CALL,
        "input_tokens": billed * IN,
        "output_tokens": billed * OUT,
    }
    assert report["spent"] == expected  # the ledger: nothing lost, nothing twice
    assert report["journal"] == expected  # the journal agrees, call by call
    assert report["calls"] == billed
    assert report["trip"]["kind"] == "budget"
    assert report["status"] == "done"
    assert report["hops"] == 0  # the step never finished: no hop
