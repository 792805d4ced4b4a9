"""Read the threads of a SQLite checkpoint file: what ``sanegraph runs`` and ``show`` print.

A summary comes from a thread's newest checkpoint, read through the saver (never by
unpickling rows by hand), so it works on any guarded graph's threads without importing
the graph. What LangGraph does not promise publicly (its trigger and write channels, the
saver's table and connection) is read through :mod:`sanegraph.guards._compat`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sanegraph.guards import read_ledger
from sanegraph.guards._compat import (
    ERROR,
    INTERRUPT,
    has_pending_sends,
    pending_nodes,
    sqlite_connection,
    sqlite_thread_ids,
)

__all__ = ("ThreadSummary", "list_threads", "thread_summary")


class ThreadSummary(dict[str, Any]):
    """One thread's guard summary (a JSON-ready dict): id, status, hops, trips, ...

    Keys: ``thread_id``, ``checkpoint_id`` (the newest), ``status`` (see
    :func:`thread_summary`), ``hops``, ``by_agent``, ``trips``, ``last_trip``,
    ``last_sane``, ``rollbacks``, ``recent``, ``outcome``, ``spent``, ``spent_by_agent``
    and ``warned``, read from the thread's guard ledger.
    """


def _has_next(checkpoint: Mapping[str, Any]) -> bool:
    """Whether a checkpoint has tasks left to run, read from the checkpoint alone: a node
    whose trigger channel changed since it last ran, or ``Send`` packets waiting."""
    if has_pending_sends(checkpoint["channel_values"]):
        return True
    return any(True for _ in pending_nodes(checkpoint))


def _status(found: Any, ledger_status: str) -> str:
    """The thread's status: the ledger's, or what the checkpoint shows it cannot say.

    ``paused`` waits on an ``interrupt()``; ``error`` had a node raise (re-invoking the
    thread retries it); ``finished`` reached END with nothing tripped.
    """
    channels = {channel for _, channel, _ in found.pending_writes or []}
    if INTERRUPT in channels:
        return "paused"
    if ERROR in channels:
        return "error"
    if ledger_status == "running" and not _has_next(found.checkpoint):
        return "finished"
    return ledger_status


def thread_summary(saver: Any, thread_id: str) -> ThreadSummary | None:
    """Summarize the newest checkpoint of ``thread_id``.

    The status is the ledger's (``tripped``, ``done``, ``aborted``), or what the checkpoint
    shows: ``paused`` (waiting on an ``interrupt()``), ``error`` (a node raised),
    ``finished`` (reached END with nothing tripped) or ``running`` (tasks left to run).

    Args:
        saver: A checkpointer (any ``BaseCheckpointSaver``).
        thread_id: The thread to read.

    Returns:
        The summary, or None if the saver has no checkpoint for the thread.

    Example:
        ```python
        from sanegraph.checkpoints import sqlite_saver
        from sanegraph.cli import thread_summary

        with sqlite_saver("runs/checkpoints.sqlite") as saver:
            print(thread_summary(saver, "t1")["status"])
        ```
    """
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
    """Summarize every root-graph thread of a ``SqliteSaver``, newest first.

    Args:
        saver: A sync ``SqliteSaver``.

    Returns:
        One :class:`ThreadSummary` per thread (see :func:`thread_summary`).
    """
    thread_ids = sqlite_thread_ids(sqlite_connection(saver))
    summaries = [thread_summary(saver, thread_id) for thread_id in thread_ids]
    return [s for s in summaries if s is not None]
