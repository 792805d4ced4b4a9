"""Everything sanegraph relies on that LangGraph does not promise in a public API.

One module, so that an upgrade that breaks an assumption breaks here, and
``tests/test_compat.py`` names it: each function below states the behaviour it rests on,
and the test checks that behaviour against the installed LangGraph with a message saying
what changed. Nothing else in sanegraph reads LangGraph's private names, parses its
namespace strings or reaches into a builder's or a saver's attributes.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import sqlite3
from collections.abc import Iterable, Mapping
from typing import Any

from langgraph.graph import StateGraph
from langgraph.graph.state import CompiledStateGraph

__all__ = (
    "ERROR",
    "INTERRUPT",
    "NS_END",
    "NS_SEP",
    "PENDING_SENDS",
    "PULL",
    "SQLITE_TABLES",
    "graph_depth",
    "has_pending_sends",
    "is_error_handler",
    "is_pull_task",
    "make_compiled_class",
    "node_runnable",
    "parent_ns",
    "pending_nodes",
    "recursion_limit",
    "replace_node_runnable",
    "root_checkpoint_id",
    "saver_loop",
    "segment_node",
    "sqlite_connection",
    "sqlite_thread_ids",
    "state_keys",
    "static_targets",
    "task_depth",
    "top_segment",
    "trigger_node",
    "without_checkpoint_map",
)

NS_SEP = "|"
"""Separates the nesting levels of a checkpoint namespace: ``"sub:<task>|node:<task>"``."""
NS_END = ":"
"""Separates a node's name from its task id in one namespace segment."""
PULL = "__pregel_pull"
"""First element of the path of a task that runs because its trigger channels changed
(an edge, or ``Command(goto=...)``), as opposed to a ``Send`` (``__pregel_push``)."""
PENDING_SENDS = "__pregel_tasks"
"""Channel in which ``Send`` packets wait for the next superstep."""
INTERRUPT = "__interrupt__"
"""Channel of the pending write that an ``interrupt()`` leaves on the checkpoint it paused."""
ERROR = "__error__"
"""Channel of the pending write that a node which raised leaves on its checkpoint."""
SQLITE_TABLES = ("checkpoints", "writes")
"""The tables ``SqliteSaver.setup()`` creates: a SQLite file without them holds no
checkpoints."""
_BRANCH_TO = "branch:to:"
_JOIN = "join:"
_START = "__start__"


# -- namespaces ------------------------------------------------------------------------


def task_depth(task_ns: str) -> int:
    """Nesting level of a task from its namespace (``runtime.execution_info.checkpoint_ns``):
    0 for a node of the root graph (``"node:<task>"``), 1 for a node of a subgraph
    (``"sub:<task>|node:<task>"``), and so on."""
    return task_ns.count(NS_SEP)


def graph_depth(graph_ns: str | None) -> int:
    """Nesting level of a graph from the ``checkpoint_ns`` of the config it runs under:
    0 for the root graph (``""``), 1 for a subgraph run by a root task, and so on."""
    return graph_ns.count(NS_SEP) + 1 if graph_ns else 0


def top_segment(task_ns: str) -> str:
    """The root-graph task a task runs under: the first segment of its namespace."""
    return task_ns.split(NS_SEP, 1)[0]


def segment_node(task_ns: str, level: int) -> str | None:
    """The node name at nesting ``level`` of a task's namespace, or None if shallower."""
    segments = task_ns.split(NS_SEP)
    if level >= len(segments):
        return None
    return segments[level].split(NS_END, 1)[0]


def parent_ns(task_ns: str) -> str:
    """The namespace of the graph a task runs in: its namespace without its own segment
    (``""`` for a root-graph task)."""
    return task_ns.rpartition(NS_SEP)[0]


def recursion_limit(config: Mapping[str, Any]) -> int:
    """The recursion limit a graph run under ``config`` gets.

    LangGraph gives a root graph its own default (10,007, or the
    ``LANGGRAPH_DEFAULT_RECURSION_LIMIT`` environment variable) when the config sets none,
    but a graph invoked from inside a node through a Runnable receives langchain-core's
    default of 25 instead: a wrapped agent would die at 25 supersteps.
    """
    limit = config.get("recursion_limit")
    if isinstance(limit, int) and not isinstance(limit, bool) and limit >= 1:
        return limit
    return int(os.getenv("LANGGRAPH_DEFAULT_RECURSION_LIMIT", "10007"))


def root_checkpoint_id(config: Mapping[str, Any]) -> str | None:
    """The root graph's checkpoint a (sub)graph task runs under.

    LangGraph keeps, in ``configurable["checkpoint_map"]``, the checkpoint id of every
    enclosing graph by namespace; ``""`` is the root's. Inside a root-graph task the map
    may be absent: None.
    """
    configurable = config.get("configurable") or {}
    found = (configurable.get("checkpoint_map") or {}).get("")
    return found if isinstance(found, str) and found else None


def without_checkpoint_map(configurable: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of a config's ``configurable`` without LangGraph's ``checkpoint_map``.

    LangGraph puts ``checkpoint_map`` (see :func:`root_checkpoint_id`) in the config of
    every task it runs, so a config taken from inside a node carries it. A run started
    with a map that has an entry for the run's own namespace (``""`` for the root graph)
    resumes from that checkpoint, not from ``checkpoint_id``, and records the map as the
    new checkpoint's ``metadata["parents"]``: a config meant to point at one checkpoint
    must not carry it.
    """
    out = dict(configurable)
    out.pop("checkpoint_map", None)
    return out


# -- compiled graphs and builders ------------------------------------------------------


def make_compiled_class(graph: CompiledStateGraph, cls: type) -> Any:  # type: ignore[type-arg]
    """Give a compiled graph the subclass ``cls`` of its class.

    ``StateGraph.compile`` builds the ``CompiledStateGraph`` itself with no hook for a
    subclass; swapping ``__class__`` keeps every attribute it set. ``cls`` must add
    methods only (no ``__init__``, no slots).
    """
    if not isinstance(graph, CompiledStateGraph) or not issubclass(cls, type(graph)):
        raise TypeError(
            f"LangGraph's compile() returned {type(graph).__name__}, not the "
            f"CompiledStateGraph sanegraph subclasses: upgrade sanegraph."
        )
    graph.__class__ = cls
    return graph


def static_targets(builder: StateGraph[Any, Any, Any, Any], node: str) -> set[str] | None:
    """Where ``node``'s edges can lead (plain, waiting and conditional edges); None when a
    conditional edge does not declare its destinations."""
    out = {end for start, end in builder.edges if start == node}
    out.update(end for starts, end in builder.waiting_edges if node in starts)
    for branch in builder.branches.get(node, {}).values():
        if branch.ends is None:
            return None
        out.update(branch.ends.values())
    return out


def conditional_sources(builder: StateGraph[Any, Any, Any, Any]) -> dict[str, list[Any]]:
    """The conditional edges of a builder: source node -> its path functions."""
    return {
        source: [branch.path for branch in branches.values()]
        for source, branches in builder.branches.items()
    }


def plain_targets(builder: StateGraph[Any, Any, Any, Any], node: str) -> set[str]:
    """Where ``node``'s unconditional edges lead."""
    out = {end for start, end in builder.edges if start == node}
    out.update(end for starts, end in builder.waiting_edges if node in starts)
    return out


def node_runnable(builder: StateGraph[Any, Any, Any, Any], name: str) -> Any:
    """The runnable a builder's node runs (``builder.nodes[name]`` is a ``StateNodeSpec``)."""
    return builder.nodes[name].runnable


def replace_node_runnable(
    builder: StateGraph[Any, Any, Any, Any], name: str, *, runnable: Any
) -> None:
    """Make a builder's node run ``runnable`` instead, keeping its other settings (retry,
    cache, destinations, input schema)."""
    spec = builder.nodes[name]
    builder.nodes[name] = dataclasses.replace(spec, runnable=runnable)


def state_keys(channels: Iterable[str]) -> list[str]:
    """The state keys among a compiled graph's channels, sorted.

    Next to one channel per state key, LangGraph adds its own: ``__start__``,
    ``__pregel_tasks``, ``branch:to:<node>``, ``join:<a+b>:<node>`` and the like.
    """
    return sorted(name for name in channels if not name.startswith("__") and ":" not in name)


def is_error_handler(spec: Any) -> bool:
    """Whether a builder node is an ``error_handler`` (not a node a run goes to)."""
    return bool(getattr(spec, "is_error_handler", False))


def is_pull_task(task: Any) -> bool:
    """Whether a ``StateSnapshot`` task runs because a channel triggered it (an edge or a
    ``Command(goto=...)``), not because of a ``Send``."""
    path = getattr(task, "path", None)
    if not path:
        return False
    return bool(path[0] == PULL)


# -- checkpoints -----------------------------------------------------------------------


def trigger_node(channel: str) -> str | None:
    """The node a trigger channel of a checkpoint starts, or None for a state channel.

    LangGraph names the channels that start nodes ``__start__``, ``branch:to:<node>`` and
    ``join:<a+b>:<node>``; a node runs when one holds a version newer than the node saw.
    """
    if channel == _START:
        return _START
    if channel.startswith((_BRANCH_TO, _JOIN)):
        return channel.rpartition(NS_END)[2]
    return None


def has_pending_sends(channel_values: Mapping[str, Any]) -> bool:
    """Whether ``Send`` packets wait in a checkpoint."""
    return bool(channel_values.get(PENDING_SENDS))


def sqlite_connection(saver: Any) -> Any:
    """The ``sqlite3.Connection`` of a ``SqliteSaver`` (its ``conn`` attribute)."""
    conn = getattr(saver, "conn", None)
    if conn is None:
        raise TypeError(
            f"{type(saver).__name__} has no 'conn' attribute: langgraph-checkpoint-sqlite "
            "changed how SqliteSaver keeps its connection; upgrade sanegraph."
        )
    return conn


def saver_loop(saver: Any) -> asyncio.AbstractEventLoop | None:
    """The event loop an async checkpointer belongs to; None for a sync one.

    LangGraph's async savers (``AsyncSqliteSaver``, ``AsyncPostgresSaver``) keep the loop
    they were opened in as ``loop`` and run their sync methods on it
    (``asyncio.run_coroutine_threadsafe``): called from that loop they raise, and with the
    loop stopped they block forever.
    """
    loop = getattr(saver, "loop", None)
    return loop if isinstance(loop, asyncio.AbstractEventLoop) else None


def sqlite_thread_ids(conn: sqlite3.Connection) -> list[str]:
    """The root-graph thread ids in a ``SqliteSaver`` database, newest checkpoint first.

    ``SqliteSaver`` keeps one row per checkpoint in its ``checkpoints`` table, keyed by
    ``thread_id``, ``checkpoint_ns`` (``""`` for the root graph) and ``checkpoint_id``;
    checkpoint ids (uuid6) sort in the order they were written.
    """
    rows = conn.execute(
        "SELECT thread_id, max(checkpoint_id) AS newest FROM checkpoints "
        "WHERE checkpoint_ns = '' GROUP BY thread_id ORDER BY newest DESC"
    )
    return [thread_id for thread_id, _ in rows]


def _finished_pair(value: Any) -> bool:
    """Whether a checkpointed channel value is the ``(value, finished)`` pair that the
    channels of a deferred node (``add_node(..., defer=True)``) store; a serializer may
    turn the tuple into a list."""
    return isinstance(value, (list, tuple)) and len(value) == 2 and isinstance(value[1], bool)


def _available(channel: str, value: Any) -> bool:
    """Whether a trigger channel's checkpointed value would start its node (LangGraph's
    ``BaseChannel.is_available``).

    ``__start__`` and ``branch:to:<node>`` are in ``channel_values`` only while they hold a
    write. A deferred node's channel holds ``(value, finished)`` and counts once finished
    (LangGraph finishes it when nothing else is left to run). ``join:<a+b>:<node>`` holds
    the set of nodes that have reached the join (``(set, finished)`` for a deferred node)
    and counts once every node named in the channel has: after the join fires, the
    emptied set stays in the checkpoint with a newer version.
    """
    if channel == _START:
        return True  # holds the run's input, whatever its shape
    finished = True
    if _finished_pair(value):
        value, finished = value[0], bool(value[1])
    if not channel.startswith(_JOIN):
        return finished
    starts = channel[len(_JOIN) :].rpartition(NS_END)[0]
    reached = "+".join(str(name) for name in value or ())
    # A node name may itself contain "+": compare the "+"-separated tokens of both sides
    # (the set only ever holds names of the channel, so equal tokens mean every one).
    return finished and sorted(reached.split("+")) == sorted(starts.split("+"))


def pending_nodes(checkpoint: Mapping[str, Any]) -> Iterable[str]:
    """Nodes a checkpoint will run next, each once, read from the checkpoint alone
    (LangGraph's rule in ``prepare_next_tasks``, without the graph): a node whose trigger
    channel is available (see :func:`_available`) and holds a version newer than the one
    the node last saw. ``Send`` packets are not among them (see :func:`has_pending_sends`).
    """
    values = checkpoint["channel_values"]
    versions = checkpoint["channel_versions"]
    seen = checkpoint.get("versions_seen") or {}
    found: set[str] = set()
    for channel, value in values.items():
        node = trigger_node(channel)
        if node is None or node in found or not _available(channel, value):
            continue
        last = (seen.get(node) or {}).get(channel)
        version = versions.get(channel)
        if last is None or (version is not None and type(version) is type(last) and version > last):
            found.add(node)
            yield node
