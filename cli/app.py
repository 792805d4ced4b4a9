"""The ``sanegraph`` command line: ``demo``, ``runs``, ``show``.

``runs`` and ``show`` read a SQLite checkpoint file directly (through the saver, never by
unpickling rows by hand), so they work on any guarded graph's threads without importing
the graph.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from sanegraph.guards import read_ledger

__all__ = ("ThreadSummary", "list_threads", "main", "thread_summary")


class ThreadSummary(dict[str, Any]):
    """One thread's guard summary (a JSON-ready dict): id, status, hops, trips, ..."""


def _saver(db: str) -> Any:
    from sanegraph.checkpoints import open_sqlite_saver

    if not Path(db).exists():
        raise SystemExit(
            f"sanegraph: no such file: {db}. Run `sanegraph demo` first, or pass --db."
        )
    return open_sqlite_saver(db)


def _has_next(checkpoint: Mapping[str, Any]) -> bool:
    """Whether a checkpoint has tasks left to run, read from the checkpoint alone.

    LangGraph's rule (``prepare_next_tasks``) without the graph: a node runs when one of
    its trigger channels (``__start__``, ``branch:to:<node>``, ``join:<a+b>:<node>``) holds
    a value newer than the version the node last saw, and ``Send`` packets wait in
    ``__pregel_tasks``.
    """
    values = checkpoint["channel_values"]
    versions = checkpoint["channel_versions"]
    seen = checkpoint.get("versions_seen") or {}
    if values.get("__pregel_tasks"):
        return True
    for channel in values:
        if channel == "__start__":
            node = channel
        elif channel.startswith(("branch:to:", "join:")):
            node = channel.rpartition(":")[2]
        else:
            continue
        last = (seen.get(node) or {}).get(channel)
        version = versions.get(channel)
        if last is None or (version is not None and type(version) is type(last) and version > last):
            return True
    return False


def _status(found: Any, ledger_status: str) -> str:
    """The thread's status: the ledger's, or what the checkpoint shows it cannot say.

    ``paused`` waits on an ``interrupt()``; ``error`` had a node raise (re-invoking the
    thread retries it); ``finished`` reached END with nothing tripped.
    """
    channels = {channel for _, channel, _ in found.pending_writes or []}
    if "__interrupt__" in channels:
        return "paused"
    if "__error__" in channels:
        return "error"
    if ledger_status == "running" and not _has_next(found.checkpoint):
        return "finished"
    return ledger_status


def thread_summary(saver: Any, thread_id: str) -> ThreadSummary | None:
    """Summarize the newest checkpoint of ``thread_id`` (None if the thread is unknown)."""
    found = saver.get_tuple({"configurable": {"thread_id": thread_id, "checkpoint_ns": ""}})
    if found is None:
        return None
    values = found.checkpoint["channel_values"]
    ledger = read_ledger(values)
    return ThreadSummary(
        thread_id=thread_id,
        checkpoint_id=found.checkpoint["id"],
        status=_status(found, ledger["status"]),
        hops=ledger["hops"],
        by_agent=ledger["by_agent"],
        trips=ledger["trip_count"],
        last_trip=ledger["trips"][-1] if ledger["trips"] else None,
        last_sane=ledger["last_sane"],
        rollbacks=ledger["rollbacks"],
        recent=ledger["recent"],
        outcome=ledger["outcome"],
        spent=ledger["spent"],
        spent_by_agent=ledger["spent_by_agent"],
        warned=ledger["warned"],
    )


def list_threads(saver: Any) -> list[ThreadSummary]:
    """Every top-level thread in a SQLite checkpoint file, newest first."""
    import sqlite_utils

    db = sqlite_utils.Database(saver.conn)
    rows = db.query(
        "select thread_id, max(checkpoint_id) as newest from checkpoints "
        "where checkpoint_ns = '' group by thread_id order by newest desc"
    )
    summaries = [thread_summary(saver, row["thread_id"]) for row in rows]
    return [s for s in summaries if s is not None]


def _kind(trip: dict[str, Any] | None) -> str:
    return str(trip["kind"]) if trip else "-"


def _usd(spent: dict[str, int]) -> str:
    return f"${spent.get('usd_micros', 0) / 1_000_000:.4f}" if spent else "-"


def _spend_line(summary: ThreadSummary) -> str:
    spent = summary["spent"]
    if not spent:
        return "-"
    tokens = f"{spent.get('input_tokens', 0):,} in + {spent.get('output_tokens', 0):,} out tokens"
    agents = ", ".join(f"{a}={_usd(s)}" for a, s in summary["spent_by_agent"].items())
    return f"{_usd(spent)} ({tokens}; {agents})" if agents else f"{_usd(spent)} ({tokens})"


def _print_runs(threads: list[ThreadSummary]) -> None:
    if not threads:
        print("No threads.")
        return
    head = ("thread", "status", "hops", "spent", "trips", "last trip")
    rows = [
        (
            t["thread_id"],
            t["status"],
            str(t["hops"]),
            _usd(t["spent"]),
            str(t["trips"]),
            (t["last_trip"] or {}).get("kind", "-"),
        )
        for t in threads
    ]
    widths = [max(len(x) for x in col) for col in zip(head, *rows, strict=False)]
    line = "  ".join(f"{{:<{w}}}" for w in widths)
    print(line.format(*head).rstrip())
    for row in rows:
        print(line.format(*row).rstrip())


def _print_show(summary: ThreadSummary) -> None:
    print(f"thread     {summary['thread_id']}")
    print(f"status     {summary['status']}")
    agents = ", ".join(f"{a}={n}" for a, n in summary["by_agent"].items())
    print(f"hops       {summary['hops']} ({agents or 'none'})")
    print(f"last sane  {summary['last_sane'] or '-'}")
    print(f"rollbacks  {summary['rollbacks']}")
    print(f"spent      {_spend_line(summary)}")
    if summary["warned"]:
        print(f"warned     {', '.join(summary['warned'])} (reached the warning threshold)")
    trip = summary["last_trip"]
    if trip:
        print(f"last trip  {trip['kind']}: {trip['message']}")
        for step in trip.get("steps") or []:
            # A loop trip shows the repeating steps.
            hop, agent = step.get("hop", "?"), step.get("agent", "?")
            print(f"  #{hop!s:<4} {agent:<12} {step.get('text', '')}")
    if summary["outcome"]:
        outcome = summary["outcome"]
        print(f"outcome    {outcome['status']}: {outcome['result']!r}")
    if summary["recent"]:
        print("recent steps:")
        for r in summary["recent"]:
            reason = f" - {r['reason']}" if r["reason"] else ""
            print(f"  #{r['hop']:<4} {r['agent']:<12} {r['status']}{reason}")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``sanegraph`` command."""
    parser = argparse.ArgumentParser(prog="sanegraph", description="Guards for LangGraph runs.")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser(
        "demo", help="replay the researcher/analyst incident, unguarded and guarded"
    )
    demo.add_argument(
        "--db", default="sanegraph-demo.db", help="SQLite file to write (default: %(default)s)"
    )
    demo.add_argument("--graph", choices=("sequential", "parallel"), default="sequential")
    demo.add_argument("--max-hops", type=int, default=12)
    demo.add_argument("--json", action="store_true", help="print one JSON object")
    runs = sub.add_parser("runs", help="list the threads in a checkpoint file")
    runs.add_argument("--db", default="sanegraph-demo.db")
    runs.add_argument("--json", action="store_true")
    show = sub.add_parser("show", help="show one thread's guard ledger")
    show.add_argument("thread_id")
    show.add_argument("--db", default="sanegraph-demo.db")
    show.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    if args.command == "demo":
        from .demo import render, run_demo

        if args.max_hops < 2:
            parser.error("--max-hops must be at least 2")
        report = run_demo(db=args.db, graph=args.graph, max_hops=args.max_hops)
        print(report.to_json() if args.json else render(report))
        return 0
    saver = _saver(args.db)
    try:
        if args.command == "runs":
            threads = list_threads(saver)
            if args.json:
                print(json.dumps(threads, default=str))
            else:
                _print_runs(threads)
            return 0
        summary = thread_summary(saver, args.thread_id)
        if summary is None:
            missing = f"sanegraph: no thread {args.thread_id!r} in {args.db}."
            print(f"{missing} `sanegraph runs` lists them.", file=sys.stderr)
            return 1
        if args.json:
            print(json.dumps(summary, default=str))
        else:
            _print_show(summary)
        return 0
    finally:
        saver.conn.close()


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
