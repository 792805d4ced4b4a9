"""Every script in examples/ runs offline, cleanly, and does what it says.

Each example runs in a subprocess, as a user would run it, with a SQLite file under
``tmp_path`` and ``LANGGRAPH_STRICT_MSGPACK=true`` (so a type the checkpointer would
refuse to load shows up on stderr). New examples are picked up by the glob; add an entry
to ``EXPECTED`` to assert what an example prints.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "examples").glob("*.py"))
QUICKSTART = ROOT / "examples" / "quickstart.py"
BEGIN, END = "# --- quickstart ---", "# --- end ---"
MAX_QUICKSTART_LINES = 20
"""Lines of code in the README quickstart, imports, comments and blank lines excluded."""


def _quickstart_outcome(out: str) -> None:
    assert "Escalation: The cycle researcher -> analyst repeated 2 times" in out
    outcome = next(line for line in out.splitlines() if line.startswith("Outcome:"))
    assert "'status': 'partial'" in outcome
    assert "'result': '40 churn interviews'" in outcome


def _sequential_finished(out: str) -> None:
    assert "1. looped: status=done, hops=6" in out
    assert "(loop_repeat)" in out
    assert "2. after rollback: finished, hops=7, rollbacks=1" in out


def _parallel_failed_branch(out: str) -> None:
    assert '"status": "partial"' in out
    assert '"crm[0]@0": "CRM export timed out"' in out
    assert '"reason": "2 of 6 branches failed"' in out


def _budget_stopped(out: str) -> None:
    assert "1. paused after 4 calls: The next model call would exceed Budget.usd=1" in out
    assert "2. topped up by $0.50, paused again after 6 calls" in out
    assert "3. done: kept 'document 6'" in out
    assert "spent $1.2900 (ledger) = $1.2900 (journal)" in out
    assert "pool: $1.2900 of $20 spent today" in out


EXPECTED: dict[str, Callable[[str], None]] = {
    "budget": _budget_stopped,
    "quickstart": _quickstart_outcome,
    "sequential": _sequential_finished,
    "parallel": _parallel_failed_branch,
}
"""Example name -> assertion on its stdout."""


def _run(script: Path, db: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "LANGGRAPH_STRICT_MSGPACK": "true"}
    env.pop("LANGSMITH_TRACING", None)
    return subprocess.run(
        [sys.executable, str(script), str(db)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=db.parent,
    )


def _check_clean(proc: subprocess.CompletedProcess[str]) -> None:
    assert proc.returncode == 0, proc.stderr
    for bad in ("Traceback", "unregistered type", "Blocked deserialization"):
        assert bad not in proc.stderr, proc.stderr
    assert proc.stdout.strip(), "the example printed nothing"


def test_examples_exist() -> None:
    names = {path.stem for path in EXAMPLES}
    assert set(EXPECTED) <= names, f"EXPECTED names missing examples: {set(EXPECTED) - names}"


@pytest.mark.parametrize("script", EXAMPLES, ids=lambda p: p.stem)
def test_example_runs(script: Path, tmp_path: Path) -> None:
    db = tmp_path / f"{script.stem}.sqlite"
    proc = _run(script, db)
    _check_clean(proc)
    assert db.exists(), f"{script.name} did not use the SQLite path given as argv[1]"
    check = EXPECTED.get(script.stem)
    if check is not None:
        check(proc.stdout)


def _quickstart_block() -> str:
    text = QUICKSTART.read_text()
    assert text.count(BEGIN) == 1 and text.count(END) == 1, f"{BEGIN!r}/{END!r} markers"
    return text.split(BEGIN, 1)[1].split(END, 1)[0]


def test_quickstart_block_is_short() -> None:
    block = _quickstart_block()
    lines: set[int] = set()
    for node in ast.parse(block).body:
        if not isinstance(node, (ast.Import, ast.ImportFrom)):
            lines.update(range(node.lineno, (node.end_lineno or node.lineno) + 1))
    source = block.splitlines()
    code = [
        n
        for n in sorted(lines)
        if source[n - 1].strip() and not source[n - 1].lstrip().startswith("#")
    ]
    assert len(code) <= MAX_QUICKSTART_LINES, "\n".join(source[n - 1] for n in code)


def test_quickstart_block_runs_alone(tmp_path: Path) -> None:
    """The README embeds the block verbatim: it must run without the rest of the file."""
    script = tmp_path / "readme_quickstart.py"
    script.write_text(_quickstart_block())
    proc = _run(script, tmp_path / "readme.sqlite")
    _check_clean(proc)
    _quickstart_outcome(proc.stdout)


def test_the_readme_quickstart_is_the_example() -> None:
    """README.md shows the quickstart example's code (imports aside), line for line."""
    root = Path(__file__).resolve().parents[1]
    readme = (root / "README.md").read_text()
    block = readme.split("## Quickstart", 1)[1].split("```python", 1)[1].split("```", 1)[0]
    example = (root / "examples" / "quickstart.py").read_text()
    section = example.split("# --- quickstart ---", 1)[1].split("# --- end ---", 1)[0]
    shown = [line for line in block.strip().splitlines() if line.strip()]
    assert shown, "the README has no quickstart code block"
    assert "\n".join(shown) in "\n".join(line for line in section.splitlines() if line.strip())
