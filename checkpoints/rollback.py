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
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.errors import InvalidUpdateError
from langgraph.graph import StateGraph
from langgraph.pregel import Pregel
from langgraph.types import Command, Overwrite, StateSnapshot, StateUpdate

from sanegraph.guards import ConfigurationError, Ledger, SanegraphError, read_ledger
from sanegraph.guards.ledger import new_ledger

__all__ = (
    "NoSaneCheckpoint",
    "RollbackError",
    "UnknownThread",
    "alast_sane_checkpoint",
    "arollback",
    "last_sane_checkpoint",
    "rollback",
)

_PULL = "__pregel_pull"
_MAX_WALK = 32
"""How many rollback forks in a row are followed to find the producing node."""

AnyGraph = Pregel[Any, Any, Any, Any]


class RollbackError(SanegraphError):
    """A thread cannot be rolled back.

    Attributes:
        thread_id: The thread.
    """

    def __init__(self, message: str, *, thread_id: str) -> None:
        super().__init__(message)
        self.thread_id = thread_id


class UnknownThread(RollbackError, LookupError):
    """The graph's checkpointer has no checkpoint for the thread."""


class NoSaneCheckpoint(RollbackError):
    """The thread has no checkpoint that passed every guard (e.g. its first guarded step
    already failed), so there is nothing to roll back to."""


# -- I/O-free core ----------------------------------------------------------------------


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


def _sync_usable(saver: BaseCheckpointSaver[Any], fn: str) -> None:
    # AsyncSqliteSaver (and LangGraph's other async savers) run sync calls on their event
    # loop: from that loop they raise, with the loop stopped they block forever.
    loop = getattr(saver, "loop", None)
    if not isinstance(loop, asyncio.AbstractEventLoop):
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


def _no_async(saver: BaseCheckpointSaver[Any], fn: str) -> ConfigurationError:
    return ConfigurationError(
        f"a{fn}() needs a checkpointer with async methods, and {type(saver).__name__} has "
        f"none: call {fn}(graph, config), or open the file with "
        "async_sqlite_saver(path)."
    )


def _thread_config(config: RunnableConfig | None, fn: str) -> tuple[str, RunnableConfig]:
    configurable = (config or {}).get("configurable") or {}
    thread_id = configurable.get("thread_id")
    if thread_id is None or thread_id == "":
        raise ConfigurationError(
            f"{fn}() needs the thread to roll back: pass "
            "config={'configurable': {'thread_id': ...}}."
        )
    if configurable.get("checkpoint_ns"):
        raise ConfigurationError(
            f"{fn}() rolls back the root graph's thread; drop checkpoint_ns="
            f"{configurable['checkpoint_ns']!r} from the config."
        )
    # "checkpoint_ns": "" lets SqliteSaver use its index instead of sorting the thread.
    own: dict[str, Any] = {"thread_id": thread_id, "checkpoint_ns": ""}
    if configurable.get("checkpoint_id"):
        own["checkpoint_id"] = configurable["checkpoint_id"]
    return str(thread_id), {"configurable": own}


def _at(thread_id: str, checkpoint_id: str) -> RunnableConfig:
    return {
        "configurable": {
            "thread_id": thread_id,
            "checkpoint_ns": "",
            "checkpoint_id": checkpoint_id,
        }
    }


def _known(snapshot: StateSnapshot, thread_id: str) -> StateSnapshot:
    if snapshot.metadata is None:
        raise UnknownThread(
            f"Thread {thread_id!r} has no checkpoint in the graph's checkpointer. Check "
            "the thread_id, and that the graph was compiled with the checkpointer (and "
            "database file) the run used.",
            thread_id=thread_id,
        )
    return snapshot


def _sane_id(snapshot: StateSnapshot, thread_id: str) -> str:
    """The newest sane checkpoint as seen from ``snapshot`` (see the module docstring)."""
    if not snapshot.values.get("guard"):
        raise NoSaneCheckpoint(
            f"Thread {thread_id!r} has no sane checkpoint: no guarded step has run in it "
            "yet. Run it first, or start it again with new input.",
            thread_id=thread_id,
        )
    ledger = read_ledger(snapshot.values)
    if (
        ledger["status"] == "running"
        and ledger["step_sane"]
        and ledger["hops"]
        and snapshot.next
        and "__start__" not in snapshot.next
    ):
        return str(snapshot.config["configurable"]["checkpoint_id"])
    sane = ledger["last_sane"]
    if not sane:
        raise NoSaneCheckpoint(
            f"Thread {thread_id!r} has no sane checkpoint: no guarded step has passed "
            f"every guard yet (hops={ledger['hops']}, status={ledger['status']!r}). "
            "Start the thread again with new input, or a new thread.",
            thread_id=thread_id,
        )
    return sane


def _target(snapshot: StateSnapshot, thread_id: str, checkpoint_id: str) -> StateSnapshot:
    if snapshot.metadata is None:
        raise RollbackError(
            f"Thread {thread_id!r}'s sane pointer names checkpoint {checkpoint_id!r}, which "
            "the checkpointer does not have (were old checkpoints deleted?). Roll back "
            "by hand with graph.update_state(config_with_checkpoint_id, values, as_node=...).",
            thread_id=thread_id,
        )
    return snapshot


def _check_patch(graph: AnyGraph, patch: Mapping[str, Any] | None, fn: str) -> dict[str, Any]:
    if patch is None:
        return {}
    if not isinstance(patch, Mapping):
        raise ConfigurationError(
            f"{fn}(patch=...) takes a mapping of state keys to new values, got "
            f"{type(patch).__name__}. Pass e.g. patch={{'topic': 'narrower'}}."
        )
    if "guard" in patch:
        raise ConfigurationError(
            f"{fn}(patch=...) must not contain 'guard': {fn}() writes the ledger itself "
            "(the sane checkpoint's, with the loop window reset)."
        )
    unknown = [key for key in patch if key not in graph.channels]
    if unknown:
        keys = sorted(k for k in graph.channels if not k.startswith("__") and ":" not in k)
        raise ConfigurationError(
            f"{fn}(patch=...) has keys that are not in the graph's state: "
            f"{', '.join(map(repr, unknown))}. State keys: {', '.join(keys)}."
        )
    return dict(patch)


def _rollbacks(values: Mapping[str, Any]) -> int:
    return read_ledger(values)["rollbacks"]


def _fork_ledger(
    target: StateSnapshot, latest: StateSnapshot, extra_hops: int, extra_seconds: float
) -> Ledger:
    ledger = new_ledger()
    ledger.update(read_ledger(target.values))
    ledger["window"] = []
    ledger["status"] = "running"
    ledger["outcome"] = None
    ledger["rollbacks"] = max(_rollbacks(latest.values), ledger["rollbacks"]) + 1
    if extra_hops or extra_seconds:
        grants = dict(ledger["grants"])
        if extra_hops:
            grants["hops"] = grants.get("hops", 0) + extra_hops
        if extra_seconds:
            grants["seconds"] = grants.get("seconds", 0.0) + extra_seconds
        ledger["grants"] = grants
    return ledger


def _check_grants(extra_hops: int, extra_seconds: float, fn: str) -> None:
    if isinstance(extra_hops, bool) or not isinstance(extra_hops, int) or extra_hops < 0:
        raise ConfigurationError(
            f"{fn}(extra_hops=...) must be a whole number >= 0, got {extra_hops!r}."
        )
    if not isinstance(extra_seconds, (int, float)) or extra_seconds < 0:
        raise ConfigurationError(
            f"{fn}(extra_seconds=...) must be a number >= 0, got {extra_seconds!r}."
        )


class _Walk:
    """Marker: the producers are those of the parent checkpoint (a fork rollback wrote)."""


_WALK = _Walk()


def _producer_step(
    snapshot: StateSnapshot, parent: StateSnapshot
) -> tuple[str, ...] | _Walk | None:
    """The node(s) that wrote ``snapshot``, from its parent's tasks; None if unknown."""
    source = (snapshot.metadata or {}).get("source")
    if source in ("loop", "fork"):
        # A "loop" checkpoint is what its parent's tasks wrote; a "fork" is a copy of such
        # a checkpoint, made under the same parent.
        names = tuple(dict.fromkeys(task.name for task in parent.tasks))
        return names or None
    if source == "update" and _rollbacks(snapshot.values) > _rollbacks(parent.values):
        # A fork written by rollback(): written as the same node(s) as the checkpoint it
        # forked, which is its parent.
        return _WALK
    return None


def _needs_parent(snapshot: StateSnapshot) -> bool:
    source = (snapshot.metadata or {}).get("source")
    return snapshot.parent_config is not None and source in ("loop", "fork", "update")


def _static_targets(builder: StateGraph[Any, Any, Any, Any], node: str) -> set[str] | None:
    """Where ``node``'s edges can lead; None if a branch does not declare its ends."""
    out = {end for start, end in builder.edges if start == node}
    out.update(end for starts, end in builder.waiting_edges if node in starts)
    for branch in builder.branches.get(node, {}).values():
        if branch.ends is None:
            return None
        out.update(branch.ends.values())
    return out


def _replayed_gotos(
    graph: AnyGraph, producers: tuple[str, ...], target: StateSnapshot
) -> list[str]:
    """Next nodes the producers reached by ``Command(goto=...)`` rather than by an edge."""
    builder = getattr(graph, "builder", None)
    if not isinstance(builder, StateGraph):
        return []
    reachable: set[str] = set()
    for node in producers:
        targets = _static_targets(builder, node)
        if targets is None:
            return []
        reachable |= targets
    pulled = (task.name for task in target.tasks if task.path and task.path[0] == _PULL)
    return [name for name in dict.fromkeys(pulled) if name not in reachable]


def _updates(
    graph: AnyGraph,
    producers: tuple[str, ...] | None,
    target: StateSnapshot,
    values: dict[str, Any],
) -> list[StateUpdate]:
    """The ``update_state`` writes of the fork: the patch as the first producer, the other
    producers (parallel nodes of the same superstep) with no values, for their edges."""
    if not producers:
        return [StateUpdate(values, None)]
    gotos = _replayed_gotos(graph, producers, target)
    first: Any = Command(update=values, goto=gotos) if gotos else values
    return [StateUpdate(first, producers[0]), *(StateUpdate(None, p) for p in producers[1:])]


def _ambiguous(thread_id: str, checkpoint_id: str, exc: InvalidUpdateError) -> RollbackError:
    return RollbackError(
        f"Cannot tell which node wrote the sane checkpoint {checkpoint_id!r} of thread "
        f"{thread_id!r} ({exc}). Fork it by hand with graph.update_state(config, values, "
        "as_node=<the node that wrote it>).",
        thread_id=thread_id,
    )


def _result(config: RunnableConfig | None, thread_id: str, written: RunnableConfig) -> Any:
    new_id = written["configurable"]["checkpoint_id"]
    base: dict[str, Any] = dict(config or {})
    configurable = dict(base.get("configurable") or {})
    configurable.update(thread_id=thread_id, checkpoint_ns="", checkpoint_id=new_id)
    configurable.pop("checkpoint_map", None)
    base["configurable"] = configurable
    return base


# -- sync shell -------------------------------------------------------------------------


def _sync_start(graph: AnyGraph, config: RunnableConfig, fn: str) -> tuple[str, StateSnapshot]:
    saver = _checkpointer(graph, fn)
    _sync_usable(saver, fn)
    thread_id, own = _thread_config(config, fn)
    return thread_id, _known(graph.get_state(own), thread_id)


def _sync_producers(graph: AnyGraph, target: StateSnapshot) -> tuple[str, ...] | None:
    snapshot = target
    for _ in range(_MAX_WALK):
        if not _needs_parent(snapshot):
            return None
        assert snapshot.parent_config is not None
        parent = graph.get_state(snapshot.parent_config)
        step = _producer_step(snapshot, parent)
        if not isinstance(step, _Walk):
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
    thread_id, latest = _sync_start(graph, config, "last_sane_checkpoint")
    return _sane_id(latest, thread_id)


def rollback(
    graph: AnyGraph,
    config: RunnableConfig,
    *,
    patch: Mapping[str, Any] | None = None,
    extra_hops: int = 0,
    extra_seconds: float = 0.0,
) -> RunnableConfig:
    """Fork the thread from its last sane checkpoint; return the config to resume it.

    The fork holds the sane checkpoint's state with ``patch`` applied (through the
    channels' reducers, as ``update_state`` does; wrap a value in
    ``langgraph.types.Overwrite`` to replace a list) and its ledger with the loop window
    emptied, status ``"running"``, no outcome and ``rollbacks`` + 1. Hop and time
    counters are those of the sane checkpoint: the abandoned branch stays in the history
    but not in the counts. A constant number of checkpointer reads (no history scan).

    Args:
        graph: The compiled guarded graph, with its checkpointer.
        config: ``{"configurable": {"thread_id": ...}}`` (other keys are kept in the
            returned config).
        patch: State keys to change in the fork (never ``"guard"``).
        extra_hops: Hops granted to the fork on top of the cap. The sane checkpoint just
            before a hop-cap trip has every hop used, so a fork that should run on needs
            some.
        extra_seconds: Seconds granted to the fork on top of ``Budget.seconds``.

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
    _checkpointer(graph, "rollback")
    _check_grants(extra_hops, extra_seconds, "rollback")
    values = _check_patch(graph, patch, "rollback")
    thread_id, latest = _sync_start(graph, config, "rollback")
    sane = _sane_id(latest, thread_id)
    target_cfg = _at(thread_id, sane)
    target = latest if sane == latest.config["configurable"]["checkpoint_id"] else None
    target = _target(target or graph.get_state(target_cfg), thread_id, sane)
    values["guard"] = Overwrite(_fork_ledger(target, latest, extra_hops, extra_seconds))
    updates = _updates(graph, _sync_producers(graph, target), target, values)
    try:
        written = graph.bulk_update_state(target_cfg, [updates])
    except InvalidUpdateError as exc:
        raise _ambiguous(thread_id, sane, exc) from exc
    return _result(config, thread_id, written)  # type: ignore[no-any-return]


# -- async shell ------------------------------------------------------------------------


async def _async_start(
    graph: AnyGraph, config: RunnableConfig, fn: str
) -> tuple[str, StateSnapshot]:
    saver = _checkpointer(graph, fn)
    thread_id, own = _thread_config(config, fn)
    try:
        latest = await graph.aget_state(own)
    except NotImplementedError as exc:
        raise _no_async(saver, fn) from exc
    return thread_id, _known(latest, thread_id)


async def _async_producers(graph: AnyGraph, target: StateSnapshot) -> tuple[str, ...] | None:
    snapshot = target
    for _ in range(_MAX_WALK):
        if not _needs_parent(snapshot):
            return None
        assert snapshot.parent_config is not None
        parent = await graph.aget_state(snapshot.parent_config)
        step = _producer_step(snapshot, parent)
        if not isinstance(step, _Walk):
            return step
        snapshot = parent
    return None


async def alast_sane_checkpoint(graph: AnyGraph, config: RunnableConfig) -> str:
    """Async :func:`last_sane_checkpoint` (for async checkpointers such as
    ``AsyncSqliteSaver``)."""
    thread_id, latest = await _async_start(graph, config, "last_sane_checkpoint")
    return _sane_id(latest, thread_id)


async def arollback(
    graph: AnyGraph,
    config: RunnableConfig,
    *,
    patch: Mapping[str, Any] | None = None,
    extra_hops: int = 0,
    extra_seconds: float = 0.0,
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
    _checkpointer(graph, "arollback")
    _check_grants(extra_hops, extra_seconds, "arollback")
    values = _check_patch(graph, patch, "arollback")
    thread_id, latest = await _async_start(graph, config, "rollback")
    sane = _sane_id(latest, thread_id)
    target_cfg = _at(thread_id, sane)
    target = latest if sane == latest.config["configurable"]["checkpoint_id"] else None
    target = _target(target or await graph.aget_state(target_cfg), thread_id, sane)
    values["guard"] = Overwrite(_fork_ledger(target, latest, extra_hops, extra_seconds))
    updates = _updates(graph, await _async_producers(graph, target), target, values)
    try:
        written = await graph.abulk_update_state(target_cfg, [updates])
    except InvalidUpdateError as exc:
        raise _ambiguous(thread_id, sane, exc) from exc
    return _result(config, thread_id, written)  # type: ignore[no-any-return]
