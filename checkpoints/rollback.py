"""Rollback to the last sane checkpoint: read the pointer, fork, resume.

Every guarded step that starts while the previous one passed every guard records the
checkpoint it starts from as ``ledger["last_sane"]`` (the sane pointer, see DESIGN.md).
:func:`rollback` reads the thread's newest state (one checkpointer read, whatever the
length of the history), takes the sane checkpoint, and forks the thread there with
``update_state``: the state is patched, the ledger is the one the sane checkpoint held
with the loop window emptied, the status back to ``"running"`` and ``rollbacks`` counted.
Resume the fork with ``graph.invoke(None, config)``: the nodes after the sane point run
again. The abandoned branch stays in the history.

Which checkpoint is "the last sane one":

- the newest checkpoint itself, when the run is paused or was cut off in a sane state
  (ledger ``status == "running"``, ``step_sane``, at least one hop, and nodes left to
  run): it is exactly what the next guarded step would record as ``last_sane``;
- otherwise ``ledger["last_sane"]``: the checkpoint the newest sane guarded step
  started from. After a trip that is the state before the step that tripped; for a run
  that finished, the state before its last guarded step.

How the fork keeps the sane checkpoint's next nodes: LangGraph's ``update_state`` writes a
new checkpoint as if a node had returned the values, and the nodes that run next are
those that node's edges lead to. The fork is therefore written as the node(s) that
produced the sane checkpoint (read from its parent checkpoint's tasks: one more O(1)
read). Conditional edges are evaluated again on the patched state, so a patch may change
the route (a fan-out sends again from the patched state); a ``Command(goto=node)`` by which
the producer routed is replayed. Leaving ``as_node`` to LangGraph would not do: it guesses
from channel versions, fails for parallel producers, picks the node before a ``Send``
fan-in (re-sending the workers instead of going on to the aggregator), and a node that
routed by ``Command`` leaves a fork with nothing to run. Not replayed: ``Send`` packets a
producer returned inside a ``Command``.

The decisions (which checkpoint, which producers, the fork's ledger and writes) are the
I/O-free core in ``_rollback_core.py``, over ``StateSnapshot`` values; this module holds
the sync and async shells that read the snapshots and write the fork through the graph.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.errors import InvalidUpdateError
from langgraph.pregel import Pregel
from langgraph.types import Overwrite, StateSnapshot, StateUpdate

from sanegraph.guards import ConfigurationError
from sanegraph.guards._compat import saver_loop

from ._rollback_core import (
    MAX_WALK,
    Grants,
    NoSaneCheckpoint,
    RollbackError,
    UnknownThread,
    Walk,
    ambiguous,
    check_grants,
    check_patch,
    checkpoint_config,
    fork_ledger,
    fork_writes,
    found_target,
    known,
    needs_parent,
    producer_step,
    resume_config,
    sane_id,
    thread_config,
)

__all__ = (
    "NoSaneCheckpoint",
    "RollbackError",
    "UnknownThread",
    "alast_sane_checkpoint",
    "arollback",
    "last_sane_checkpoint",
    "rollback",
)

AnyGraph = Pregel[Any, Any, Any, Any]


# -- what both shells check and build ---------------------------------------------------


def _checkpointer(graph: Any, fn: str) -> BaseCheckpointSaver[Any]:
    saver = getattr(graph, "checkpointer", None)
    if not isinstance(saver, BaseCheckpointSaver):
        raise ConfigurationError(
            f"{fn}() needs a graph compiled with a checkpointer, got checkpointer={saver!r}. "
            "Compile it with builder.compile(checkpointer=saver), e.g. a saver from "
            "sanegraph.checkpoints.sqlite_saver(path)."
        )
    channels = getattr(graph, "channels", {})
    if "guard" not in channels:
        raise ConfigurationError(
            f"{fn}() needs a guarded graph: its state has no 'guard' channel. Add "
            "GuardedState to the state schema and wrap agents with guarded(...)."
        )
    return saver


def _prepare(
    graph: AnyGraph, patch: Mapping[str, Any] | None, *, fn: str, grants: Grants
) -> dict[str, Any]:
    """Check the graph, the grants and the patch before anything is read or written."""
    _checkpointer(graph, fn)
    check_grants(grants, fn=fn)
    return check_patch(patch, channels=graph.channels, fn=fn)


def _writes(
    graph: AnyGraph,
    target: StateSnapshot,
    *,
    latest: StateSnapshot,
    producers: tuple[str, ...] | None,
    values: dict[str, Any],
    grants: Grants,
) -> list[StateUpdate]:
    ledger = fork_ledger(target, latest, grants=grants)
    # Overwrite: the fork's ledger replaces the sane one whole, past the ledger's reducer.
    values = {**values, "guard": Overwrite(ledger)}
    return fork_writes(target, producers, values=values, builder=getattr(graph, "builder", None))


def _is_latest(latest: StateSnapshot, checkpoint_id: str) -> bool:
    return bool(latest.config["configurable"]["checkpoint_id"] == checkpoint_id)


# -- sync shell -------------------------------------------------------------------------


def _sync_usable(saver: BaseCheckpointSaver[Any], fn: str) -> None:
    # An async saver runs sync calls on its event loop: from that loop they raise, with
    # the loop stopped they block forever.
    loop = saver_loop(saver)
    if loop is None:
        return
    try:
        running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if running is loop or not loop.is_running():
        raise ConfigurationError(
            f"{fn}() is sync, but the graph's checkpointer ({type(saver).__name__}) is "
            f"async: use `await a{fn}(graph, config)` in the event loop that opened it."
        )


def _sync_start(graph: AnyGraph, config: RunnableConfig, *, fn: str) -> tuple[str, StateSnapshot]:
    saver = _checkpointer(graph, fn)
    _sync_usable(saver, fn)
    thread_id, own = thread_config(config, fn)
    return thread_id, known(graph.get_state(own), thread_id)


def _sync_producers(graph: AnyGraph, target: StateSnapshot) -> tuple[str, ...] | None:
    snapshot = target
    for _ in range(MAX_WALK):
        if not needs_parent(snapshot):
            return None
        assert snapshot.parent_config is not None
        parent = graph.get_state(snapshot.parent_config)
        step = producer_step(snapshot, parent)
        if not isinstance(step, Walk):
            return step
        snapshot = parent
    return None


def last_sane_checkpoint(graph: AnyGraph, config: RunnableConfig) -> str:
    """The id of the thread's newest sane checkpoint (the one :func:`rollback` forks).

    One checkpointer read, whatever the length of the history. With a ``checkpoint_id``
    in ``config``, the answer is as seen from that checkpoint.

    Args:
        graph: The compiled guarded graph, with its checkpointer.
        config: ``{"configurable": {"thread_id": ...}}``.

    Returns:
        The checkpoint id.

    Raises:
        ConfigurationError: The graph has no checkpointer or no ``guard`` channel, or the
            config names no thread.
        UnknownThread: The checkpointer has no checkpoint for the thread.
        NoSaneCheckpoint: No guarded step of the thread has passed every guard.
    """
    thread_id, latest = _sync_start(graph, config, fn="last_sane_checkpoint")
    return sane_id(latest, thread_id)


def rollback(
    graph: AnyGraph,
    config: RunnableConfig,
    *,
    patch: Mapping[str, Any] | None = None,
    extra_hops: int = 0,
    extra_seconds: float = 0.0,
    extra_usd: float = 0.0,
    extra_tokens: int = 0,
) -> RunnableConfig:
    """Fork the thread from its last sane checkpoint; return the config to resume it.

    The fork holds the sane checkpoint's state with ``patch`` applied (through the
    channels' reducers, as ``update_state`` does; wrap a value in
    ``langgraph.types.Overwrite`` to replace a list) and its ledger with the loop window
    emptied, status ``"running"``, no outcome and ``rollbacks`` + 1. Hop and time
    counters are those of the sane checkpoint: the abandoned branch stays in the history
    but not in the counts. Spend is not rolled back (money paid is a fact of the thread):
    the fork counts what the thread really paid; grant more on purpose with ``extra_usd``
    or ``extra_tokens``. A constant number of checkpointer reads (no history scan).

    Args:
        graph: The compiled guarded graph, with its checkpointer.
        config: ``{"configurable": {"thread_id": ...}}`` (other keys are kept in the
            returned config).
        patch: State keys to change in the fork (never ``"guard"``).
        extra_hops: Hops granted to the fork on top of the cap. The sane checkpoint just
            before a hop-cap trip has every hop used, so a fork that should run on needs
            some.
        extra_seconds: Seconds granted to the fork on top of ``Budget.seconds``.
        extra_usd: US dollars granted to the fork on top of ``Budget.usd``.
        extra_tokens: Tokens granted to the fork on top of ``Budget.tokens``.

    Returns:
        ``config`` pointing at the fork; continue with ``graph.invoke(None, returned)``.

    Raises:
        ConfigurationError: The graph has no checkpointer or no ``guard`` channel, the
            config names no thread, the patch names unknown keys or ``"guard"``, or the
            checkpointer is async (use :func:`arollback`).
        UnknownThread: The checkpointer has no checkpoint for the thread.
        NoSaneCheckpoint: No guarded step of the thread has passed every guard.
        RollbackError: The fork cannot be written (e.g. the sane checkpoint was deleted).

    Example:
        ```python
        config = {"configurable": {"thread_id": "t1"}}
        resume = rollback(graph, config, patch={"topic": "a narrower topic"})
        result = graph.invoke(None, resume)
        ```
    """
    grants = Grants(extra_hops, extra_seconds, extra_usd, extra_tokens)
    values = _prepare(graph, patch, fn="rollback", grants=grants)
    thread_id, latest = _sync_start(graph, config, fn="rollback")
    sane = sane_id(latest, thread_id)
    at_sane = checkpoint_config(thread_id, sane)
    read = latest if _is_latest(latest, sane) else graph.get_state(at_sane)
    target = found_target(read, thread_id=thread_id, checkpoint_id=sane)
    producers = _sync_producers(graph, target)
    updates = _writes(
        graph, target, latest=latest, producers=producers, values=values, grants=grants
    )
    try:
        written = graph.bulk_update_state(at_sane, [updates])
    except InvalidUpdateError as exc:
        raise ambiguous(exc, thread_id=thread_id, checkpoint_id=sane) from exc
    return resume_config(config, written, thread_id=thread_id)


# -- async shell ------------------------------------------------------------------------


def _no_async(saver: BaseCheckpointSaver[Any], fn: str) -> ConfigurationError:
    return ConfigurationError(
        f"a{fn}() needs a checkpointer with async methods, and {type(saver).__name__} has "
        f"none: call {fn}(graph, config), or open the file with "
        "async_sqlite_saver(path)."
    )


async def _async_start(
    graph: AnyGraph, config: RunnableConfig, *, fn: str
) -> tuple[str, StateSnapshot]:
    saver = _checkpointer(graph, fn)
    thread_id, own = thread_config(config, fn)
    try:
        latest = await graph.aget_state(own)
    except NotImplementedError as exc:
        raise _no_async(saver, fn) from exc
    return thread_id, known(latest, thread_id)


async def _async_producers(graph: AnyGraph, target: StateSnapshot) -> tuple[str, ...] | None:
    snapshot = target
    for _ in range(MAX_WALK):
        if not needs_parent(snapshot):
            return None
        assert snapshot.parent_config is not None
        parent = await graph.aget_state(snapshot.parent_config)
        step = producer_step(snapshot, parent)
        if not isinstance(step, Walk):
            return step
        snapshot = parent
    return None


async def alast_sane_checkpoint(graph: AnyGraph, config: RunnableConfig) -> str:
    """Async :func:`last_sane_checkpoint` (for async checkpointers such as
    ``AsyncSqliteSaver``)."""
    thread_id, latest = await _async_start(graph, config, fn="last_sane_checkpoint")
    return sane_id(latest, thread_id)


async def arollback(
    graph: AnyGraph,
    config: RunnableConfig,
    *,
    patch: Mapping[str, Any] | None = None,
    extra_hops: int = 0,
    extra_seconds: float = 0.0,
    extra_usd: float = 0.0,
    extra_tokens: int = 0,
) -> RunnableConfig:
    """Async :func:`rollback`: fork the thread from its last sane checkpoint.

    Continue with ``await graph.ainvoke(None, returned)``. Raises what :func:`rollback`
    raises; a checkpointer without async methods (``SqliteSaver``) raises
    ``ConfigurationError`` naming :func:`rollback`.

    Example:
        ```python
        resume = await arollback(graph, config, patch={"topic": "a narrower topic"})
        result = await graph.ainvoke(None, resume)
        ```
    """
    grants = Grants(extra_hops, extra_seconds, extra_usd, extra_tokens)
    values = _prepare(graph, patch, fn="arollback", grants=grants)
    thread_id, latest = await _async_start(graph, config, fn="rollback")
    sane = sane_id(latest, thread_id)
    at_sane = checkpoint_config(thread_id, sane)
    read = latest if _is_latest(latest, sane) else await graph.aget_state(at_sane)
    target = found_target(read, thread_id=thread_id, checkpoint_id=sane)
    producers = await _async_producers(graph, target)
    updates = _writes(
        graph, target, latest=latest, producers=producers, values=values, grants=grants
    )
    try:
        written = await graph.abulk_update_state(at_sane, [updates])
    except InvalidUpdateError as exc:
        raise ambiguous(exc, thread_id=thread_id, checkpoint_id=sane) from exc
    return resume_config(config, written, thread_id=thread_id)
