"""The ``sanegraph`` command line: ``demo``, ``runs``, ``show``.

``runs`` and ``show`` read a SQLite checkpoint file directly (through the saver, never by
unpickling rows by hand), so they work on any guarded graph's threads without importing
the graph.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sanegraph.guards._compat import sqlite_connection

from .threads import ThreadSummary, list_threads, thread_summary

__all__ = ("main",)


def _saver(db: str) -> Any:
    from sanegraph.checkpoints import open_sqlite_saver

    if not Path(db).exists():
        raise SystemExit(
            f"sanegraph: no such file: {db}. Run `sanegraph demo` first, or pass --db."
        )
    return open_sqlite_saver(db)


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
        sqlite_connection(saver).close()


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
