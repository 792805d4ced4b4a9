"""The ``sanegraph`` command: ``demo`` (table and ``--json``), ``runs``, ``show``.

Commands run in-process through ``main([...])`` on SQLite files under ``tmp_path``; one
test runs the installed console script.
"""

from __future__ import annotations

import contextlib
import io
import json
import random
import re
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from sanegraph.cli import main

RUNS = ("unguarded", "guarded", "hop cap only", "escalated", "rolled back")
"""The demo's rows, in order."""


def _table(out: str) -> dict[str, dict[str, str]]:
    """The demo's table as {run: {column: cell}} (columns are 2+ spaces apart)."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("run "))
    head = re.split(r"\s{2,}", lines[start].strip())
    assert set(lines[start + 1].replace(" ", "")) == {"-"}, lines[start + 1]
    rows: dict[str, dict[str, str]] = {}
    for line in lines[start + 2 :]:
        if not line.strip():
            break
        cells = re.split(r"\s{2,}", line.strip())
        assert len(cells) == len(head), line
        rows[cells[0]] = dict(zip(head, cells, strict=True))
    return rows


def _check_facts(runs: dict[str, dict[str, Any]], *, max_hops: int = 12) -> None:
    """What the demo must show, from the table or from --json (hops may be str or int)."""
    assert list(runs) == list(RUNS)
    unguarded, guarded, capped, escalated, rolled = (runs[name] for name in RUNS)
    assert str(unguarded["stopped by"]).startswith("recursion_limit=")
    assert int(unguarded["hops"]) > int(capped["hops"])
    # Loop detection stops the analyst at its 3rd identical request: hop 6.
    assert (guarded["stopped by"], int(guarded["hops"]), guarded["status"]) == (
        "loop_repeat",
        6,
        "done",
    )
    assert (capped["stopped by"], int(capped["hops"]), capped["status"]) == (
        "hop_cap",
        max_hops,
        "done",
    )
    # The human granted 4 more hops once, then accepted the partial result.
    assert (escalated["stopped by"], int(escalated["hops"]), escalated["status"]) == (
        "hop_cap",
        max_hops + 4,
        "done",
    )
    assert rolled["status"] == "finished"


def _json_runs(out: str) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    report = json.loads(out.strip().splitlines()[-1])
    runs = {r["name"]: {**r, "stopped by": r["stopped_by"]} for r in report["runs"]}
    return report, runs


def _main(argv: list[str]) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(argv)
    return code, out.getvalue()


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, dict[str, Any]]]:
    """One ``demo --json`` run, shared by the runs/show tests: (db, runs by name)."""
    db = tmp_path_factory.mktemp("cli") / "demo.sqlite"
    code, out = _main(["demo", "--db", str(db), "--json"])
    assert code == 0
    return db, _json_runs(out)[1]


def test_demo_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "demo.sqlite"
    assert main(["demo", "--db", str(db)]) == 0
    out = capsys.readouterr().out
    _check_facts(_table(out))
    assert db.exists()
    assert f"sanegraph runs --db {db}" in out


def test_demo_json(demo: tuple[Path, dict[str, dict[str, Any]]]) -> None:
    _, runs = demo
    _check_facts(runs)
    assert runs["guarded"]["thread_id"] == runs["rolled back"]["thread_id"]
    assert runs["guarded"]["result"] is not None  # the owner kept a partial result


def test_demo_json_prints_one_object(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--db", str(tmp_path / "p.sqlite"), "--graph", "parallel", "--json"]) == 0
    out = capsys.readouterr().out
    assert len(out.strip().splitlines()) == 1
    report, runs = _json_runs(out)
    assert (report["graph"], report["max_hops"]) == ("parallel", 12)
    _check_facts(runs)


def test_demo_max_hops(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "demo.sqlite"
    assert main(["demo", "--db", str(db), "--max-hops", "6", "--json"]) == 0
    _check_facts(_json_runs(capsys.readouterr().out)[1], max_hops=6)
    assert main(["demo", "--db", str(db), "--max-hops", "1"]) == 2
    assert "Error: --max-hops must be at least 2, got 1.\n" in capsys.readouterr().err


def test_runs_lists_the_threads(
    demo: tuple[Path, dict[str, dict[str, Any]]], capsys: pytest.CaptureFixture[str]
) -> None:
    db, runs = demo
    assert main(["runs", "--db", str(db)]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert re.split(r"\s{2,}", lines[0].strip()) == [
        "thread",
        "status",
        "hops",
        "spent",
        "trips",
        "last trip",
    ]
    listed = {line.split()[0]: line.split() for line in lines[1:]}
    threads = {r["thread_id"] for r in runs.values()}
    assert set(listed) == threads
    # The guarded runs are metered: the ledger's spend is what the demo's models cost.
    cost = f"${runs['escalated']['usd']:.4f}"
    assert listed[runs["escalated"]["thread_id"]][1:] == ["done", "16", cost, "2", "hop_cap"]
    assert listed[runs["unguarded"]["thread_id"]][3] == "-"

    assert main(["runs", "--db", str(db), "--json"]) == 0
    summaries = {t["thread_id"]: t for t in json.loads(capsys.readouterr().out)}
    assert set(summaries) == threads
    escalated = summaries[runs["escalated"]["thread_id"]]
    assert (escalated["status"], escalated["hops"], escalated["trips"]) == ("done", 16, 2)
    assert escalated["outcome"]["status"] == "partial"
    rolled = summaries[runs["rolled back"]["thread_id"]]
    assert (rolled["hops"], rolled["rollbacks"]) == (6, 1)


def test_show_prints_the_ledger(
    demo: tuple[Path, dict[str, dict[str, Any]]], capsys: pytest.CaptureFixture[str]
) -> None:
    db, runs = demo
    thread = runs["escalated"]["thread_id"]
    assert main(["show", thread, "--db", str(db)]) == 0
    out = capsys.readouterr().out
    assert f"thread     {thread}\n" in out
    assert "status     done\n" in out
    assert "hops       16 (researcher=8, analyst=8)\n" in out
    assert re.search(
        r"spent      \$0\.\d{4} \([\d,]+ in \+ [\d,]+ out tokens; researcher=\$0\.\d{4}, analyst=\$0\.\d{4}\)\n",
        out,
    )
    assert "last trip  hop_cap: The next hop would exceed max_hops=16 (hops=16" in out
    assert f"outcome    partial: {runs['escalated']['result']!r}\n" in out
    assert "analyst      partial - I need more context" in out

    assert main(["show", thread, "--db", str(db), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["thread_id"], summary["status"], summary["hops"]) == (thread, "done", 16)
    assert summary["by_agent"] == {"researcher": 8, "analyst": 8}


def test_show_unknown_thread(
    demo: tuple[Path, dict[str, dict[str, Any]]], capsys: pytest.CaptureFixture[str]
) -> None:
    db, _ = demo
    assert main(["show", "no-such-thread", "--db", str(db)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == (
        f"sanegraph: no thread 'no-such-thread' in {db}. `sanegraph runs --db {db}` lists them.\n"
    )


PASS_DB = "Pass --db with a checkpoint file written by SqliteSaver."


def _sqlite(path: Path, *tables: str) -> None:
    conn = sqlite3.connect(path)
    for table in tables:
        conn.execute(f"CREATE TABLE {table} (id INTEGER PRIMARY KEY)")
    conn.commit()
    conn.close()


def _bad_db(case: str, path: Path) -> tuple[Path, str]:
    """A --db that ``runs`` and ``show`` must refuse, and the line they must print
    (a regular expression: SQLite's own words vary by version for a damaged file)."""
    if case == "missing":
        return path, re.escape(
            f"no such file: {path}. Pass --db with a checkpoint file written by SqliteSaver, "
            "or run `sanegraph demo` to write one."
        )
    if case == "directory":
        path.mkdir()
        return path, re.escape(f"{path} is a directory. {PASS_DB}")
    if case in ("text", "random bytes"):
        text = (
            b"thread_id,status\nt1,done\n" if case == "text" else random.Random(7).randbytes(4096)
        )
        path.write_bytes(text)
        return path, re.escape(f"{path} is not a SQLite file. {PASS_DB}")
    if case in ("empty", "other tables"):
        path.touch()
        if case == "other tables":
            _sqlite(path, "notes")
        return path, re.escape(
            f"{path} is a SQLite file without LangGraph's 'checkpoints' and 'writes' tables. "
            f"{PASS_DB}"
        )
    if case == "no writes table":
        _sqlite(path, "checkpoints")
        return path, re.escape(
            f"{path} is a SQLite file without LangGraph's 'writes' table. {PASS_DB}"
        )
    assert case == "damaged"
    # A SQLite header, then garbage where the schema should be.
    path.write_bytes(b"SQLite format 3\x00" + random.Random(7).randbytes(8192))
    return path, re.escape(f"cannot read {path} (") + r"[^\n]+" + re.escape(f"). {PASS_DB}")


BAD_DBS = (
    "missing",
    "directory",
    "text",
    "random bytes",
    "empty",
    "other tables",
    "no writes table",
    "damaged",
)
"""Each --db that is not a checkpoint file, by what is wrong with it."""


@pytest.mark.parametrize("case", BAD_DBS)
@pytest.mark.parametrize(
    "command", [["runs"], ["runs", "--json"], ["show", "t1"]], ids=["runs", "runs-json", "show"]
)
def test_bad_database_is_one_line_and_status_2(
    tmp_path: Path, case: str, command: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    db, message = _bad_db(case, tmp_path / "runs.db")
    before = sorted(p.name for p in tmp_path.iterdir())
    content = db.read_bytes() if db.is_file() else None

    assert main([*command, "--db", str(db)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert re.fullmatch(f"sanegraph: {message}\n", captured.err), captured.err
    # The file is left as it was: not created, not given LangGraph's tables.
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert (db.read_bytes() if db.is_file() else None) == content


def test_console_script_exits_2_on_bad_input(tmp_path: Path) -> None:
    script = Path(sys.executable).with_name("sanegraph")
    db = tmp_path / "notes.db"
    db.write_text("not a database\n")
    proc = subprocess.run(
        [str(script), "show", "t1", "--db", str(db)], capture_output=True, text=True, timeout=60
    )
    assert (proc.returncode, proc.stdout) == (2, "")
    assert proc.stderr == f"sanegraph: {db} is not a SQLite file. {PASS_DB}\n"


@pytest.mark.parametrize(
    ("argv", "error"),
    [
        ([], None),
        (["nope"], "Error: No such command 'nope'."),
        (["show"], "Error: Missing argument 'THREAD'."),
        (["demo", "--graph", "dag"], "Error: Invalid value for '--graph'"),
        (["runs", "--max-hops", "3"], "Error: No such option"),
    ],
    ids=["no-command", "unknown-command", "no-thread", "bad-choice", "unknown-option"],
)
def test_usage_errors_return_2_with_clicks_message(
    argv: list[str], error: str | None, capsys: pytest.CaptureFixture[str]
) -> None:
    """``main`` returns click's exit status 2 instead of raising SystemExit."""
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert "Usage: sanegraph" in captured.out + captured.err
    if error is not None:
        assert captured.out == ""
        assert error in captured.err
        assert "Traceback" not in captured.err


def test_help_returns_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("Usage: sanegraph [OPTIONS] COMMAND [ARGS]...")
    assert main(["show", "-h"]) == 0
    assert capsys.readouterr().out.startswith("Usage: sanegraph show [OPTIONS] THREAD")


def test_console_script_help() -> None:
    script = Path(sys.executable).with_name("sanegraph")
    assert script.exists(), f"no console script next to {sys.executable}: pip install -e ."
    proc = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("Usage: sanegraph")
    for command in ("demo", "runs", "show"):
        assert command in proc.stdout
    module = [sys.executable, "-m", "sanegraph.cli", "--help"]
    by_module = subprocess.run(module, capture_output=True, text=True, timeout=60)
    assert (by_module.returncode, by_module.stdout) == (0, proc.stdout)


def test_show_lists_the_steps_of_a_loop(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from sanegraph.checkpoints import sqlite_saver
    from sanegraph.graphs import sequential_graph
    from sanegraph.guards.testing import ScriptedChatModel, envelope_message, scripted_agent

    stuck = envelope_message("partial", reason="I need more context")
    docs = [envelope_message("success", f"doc {i}") for i in range(9)]
    agents = {
        "researcher": scripted_agent(ScriptedChatModel(docs), name="researcher"),
        "analyst": scripted_agent(ScriptedChatModel([stuck], cycle=True), name="analyst"),
    }
    db = tmp_path / "loops.sqlite"
    with sqlite_saver(db) as saver:
        graph = sequential_graph(agents).compile(checkpointer=saver)
        graph.invoke({"task": "Why?"}, {"configurable": {"thread_id": "looped"}})

    assert main(["show", "looped", "--db", str(db)]) == 0
    out = capsys.readouterr().out
    assert "last trip  loop_repeat: " in out
    steps = [line.split() for line in out.splitlines() if line.startswith("  #")]
    loop = [s for s in steps if s[1] == "analyst" and "context" in " ".join(s)]
    assert [s[0] for s in loop[:3]] == ["#2", "#4", "#6"]


def test_runs_tells_finished_failed_paused_and_unfinished_threads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The ledger says ``running`` for any untripped thread; the checkpoint tells more."""
    from sanegraph.checkpoints import sqlite_saver
    from sanegraph.graphs import sequential_graph
    from sanegraph.guards import GuardPolicy
    from sanegraph.guards.testing import ScriptedChatModel, envelope_message, scripted_agent

    def agents(analyst: Any) -> dict[str, Any]:
        researcher = ScriptedChatModel([envelope_message("success", "notes")], cycle=True)
        return {"researcher": scripted_agent(researcher, name="researcher"), "analyst": analyst}

    def broken(state: Any) -> Any:
        raise RuntimeError("the analyst's tool is down")

    answer = ScriptedChatModel([envelope_message("success", "answer")], cycle=True)
    db = tmp_path / "threads.sqlite"
    with sqlite_saver(db) as saver:
        done = sequential_graph(agents(scripted_agent(answer, name="analyst"))).compile(
            checkpointer=saver
        )
        done.invoke({"task": "Why?"}, {"configurable": {"thread_id": "finished"}})
        stopped = sequential_graph(agents(scripted_agent(answer, name="analyst"))).compile(
            checkpointer=saver, interrupt_before=["analyst"]
        )
        stopped.invoke({"task": "Why?"}, {"configurable": {"thread_id": "unfinished"}})
        failing = sequential_graph(agents(broken)).compile(checkpointer=saver)
        with pytest.raises(RuntimeError, match="tool is down"):
            failing.invoke({"task": "Why?"}, {"configurable": {"thread_id": "failed"}})
        # The hop cap trips and the owner asks a human (an interrupt()).
        stuck = ScriptedChatModel([envelope_message("partial", reason="more context")], cycle=True)
        escalating = sequential_graph(
            agents(scripted_agent(stuck, name="analyst")),
            policy=GuardPolicy(hops=4, owner="escalate", loops=False),
        ).compile(checkpointer=saver)
        escalating.invoke({"task": "Why?"}, {"configurable": {"thread_id": "paused"}})
        assert escalating.get_state({"configurable": {"thread_id": "paused"}}).interrupts
        assert done.get_state({"configurable": {"thread_id": "finished"}}).next == ()
        assert stopped.get_state({"configurable": {"thread_id": "unfinished"}}).next == ("analyst",)

    assert main(["runs", "--db", str(db), "--json"]) == 0
    status = {t["thread_id"]: t["status"] for t in json.loads(capsys.readouterr().out)}
    assert status == {
        "finished": "finished",
        "unfinished": "running",
        "failed": "error",
        "paused": "paused",
    }
    assert main(["show", "finished", "--db", str(db)]) == 0
    assert "status     finished\n" in capsys.readouterr().out
