"""Text for people: the tables and the thread view the ``sanegraph`` commands print.

Pure functions from summaries to lines; the commands in :mod:`.app` do the printing.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from tabulate import SEPARATING_LINE, DataRow, Line, TableFormat, tabulate

from .threads import ThreadSummary

__all__ = ("runs_lines", "show_lines", "table")

_COLUMNS = TableFormat(
    lineabove=None,
    linebelowheader=None,
    linebetweenrows=None,
    linebelow=None,
    headerrow=DataRow("", "  ", ""),
    datarow=DataRow("", "  ", ""),
    padding=0,
    with_header_hide=None,
)
"""Cells two spaces apart and no lines (tabulate's "plain")."""
_RULED = _COLUMNS._replace(linebelowheader=Line("", "-", "  ", ""))
"""The same with a line of dashes where a ``SEPARATING_LINE`` row stands (tabulate's
"simple" without its lines above and below the table)."""


def table(
    head: Sequence[str],
    rows: Iterable[Sequence[str]],
    *,
    rule: bool,
) -> list[str]:
    """Left-aligned columns two spaces apart, with a line of dashes under ``head`` if
    ``rule``; no trailing spaces (tests split the cells on two or more spaces)."""
    # The head goes in as the first row, not as headers=: tabulate widens a column to its
    # header plus two spaces, and these tables have always been as wide as their widest
    # cell. disable_numparse: the cells are formatted already ("1,234", "$0.0012"), and
    # number columns stay left-aligned like the rest.
    body: list[Any] = [list(head), SEPARATING_LINE] if rule else [list(head)]
    body += [list(row) for row in rows]
    text = tabulate(body, tablefmt=_RULED if rule else _COLUMNS, disable_numparse=True)
    return [line.rstrip() for line in text.splitlines()]


def _usd(spent: dict[str, int]) -> str:
    return f"${spent.get('usd_micros', 0) / 1_000_000:.4f}" if spent else "-"


def _spend_line(summary: ThreadSummary) -> str:
    spent = summary["spent"]
    if not spent:
        return "-"
    tokens = f"{spent.get('input_tokens', 0):,} in + {spent.get('output_tokens', 0):,} out tokens"
    agents = ", ".join(f"{a}={_usd(s)}" for a, s in summary["spent_by_agent"].items())
    return f"{_usd(spent)} ({tokens}; {agents})" if agents else f"{_usd(spent)} ({tokens})"


def runs_lines(threads: Sequence[ThreadSummary]) -> list[str]:
    """``sanegraph runs``: one row per thread (status, hops, spend, trips, last trip)."""
    if not threads:
        return ["No threads."]
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
    return table(head, rows, rule=False)


def _step(hop: Any, agent: Any, text: str) -> str:
    return f"  #{hop!s:<4} {agent!s:<12} {text}"


def show_lines(summary: ThreadSummary) -> list[str]:
    """``sanegraph show``: one thread's ledger, a field a line, then its recent steps."""
    agents = ", ".join(f"{a}={n}" for a, n in summary["by_agent"].items())
    out = [
        f"thread     {summary['thread_id']}",
        f"status     {summary['status']}",
        f"hops       {summary['hops']} ({agents or 'none'})",
        f"last sane  {summary['last_sane'] or '-'}",
        f"rollbacks  {summary['rollbacks']}",
        f"spent      {_spend_line(summary)}",
    ]
    if summary["warned"]:
        out.append(f"warned     {', '.join(summary['warned'])} (reached the warning threshold)")
    trip = summary["last_trip"]
    if trip:
        out.append(f"last trip  {trip['kind']}: {trip['message']}")
        # A loop trip shows the repeating steps.
        for step in trip.get("steps") or []:
            out.append(_step(step.get("hop", "?"), step.get("agent", "?"), step.get("text", "")))
    if summary["outcome"]:
        outcome = summary["outcome"]
        out.append(f"outcome    {outcome['status']}: {outcome['result']!r}")
    if summary["recent"]:
        out.append("recent steps:")
        for r in summary["recent"]:
            reason = f" - {r['reason']}" if r["reason"] else ""
            out.append(_step(r["hop"], r["agent"], f"{r['status']}{reason}"))
    return out
