"""The I/O-free core of rollback: decisions over ``StateSnapshot`` values.

Which checkpoint is the sane one (:func:`sane_id`), which node(s) wrote it
(:func:`producer_step`, walked by the shells one parent read at a time), the fork's ledger
and the ``update_state`` writes that keep the sane checkpoint's next nodes
(:func:`fork_writes`), the config to resume with (:func:`resume_config`), and the checks
and errors. ``rollback.py`` reads the snapshots through the graph (sync or async) and
writes the fork; everything between the reads is decided here, once for both shells.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, NamedTuple

from langchain_core.runnables import RunnableConfig
from langgraph.errors import InvalidUpdateError
from langgraph.graph import START, StateGraph
from langgraph.types import Command, StateSnapshot, StateUpdate

from sanegraph.guards import ConfigurationError, Ledger, SanegraphError, read_ledger
from sanegraph.guards._compat import (
    is_pull_task,
    state_keys,
    static_targets,
    without_checkpoint_map,
)
from sanegraph.guards.ledger import new_ledger

__all__ = (
    "MAX_WALK",
    "WALK",
    "Grants",
    "NoSaneCheckpoint",
    "RollbackError",
    "UnknownThread",
    "Walk",
    "ambiguous",
    "check_grants",
    "check_patch",
    "checkpoint_config",
    "fork_ledger",
    "fork_writes",
    "found_target",
    "known",
    "needs_parent",
    "producer_step",
    "resume_config",
    "sane_id",
    "thread_config",
)

MAX_WALK = 32
"""How many rollback forks in a row are followed to find the producing node."""


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


# -- input ------------------------------------------------------------------------------


def thread_config(config: RunnableConfig | None, fn: str) -> tuple[str, RunnableConfig]:
    """The thread ``config`` names and a config reading its newest root checkpoint (or the
    checkpoint ``config`` names)."""
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


def checkpoint_config(thread_id: str, checkpoint_id: str) -> RunnableConfig:
    """The config naming one checkpoint of a thread's root graph."""
    return {
        "configurable": {
            "thread_id": thread_id,
            "checkpoint_ns": "",
            "checkpoint_id": checkpoint_id,
        }
    }


def check_patch(patch: Mapping[str, Any] | None, *, channels: Any, fn: str) -> dict[str, Any]:
    """``patch`` as a dict, checked against the graph's ``channels``."""
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
    unknown = [key for key in patch if key not in channels]
    if unknown:
        raise ConfigurationError(
            f"{fn}(patch=...) has keys that are not in the graph's state: "
            f"{', '.join(map(repr, unknown))}. State keys: {', '.join(state_keys(channels))}."
        )
    return dict(patch)


class Grants(NamedTuple):
    """What a rollback grants the fork on top of its limits (all >= 0)."""

    hops: int = 0
    seconds: float = 0.0
    usd: float = 0.0
    tokens: int = 0


def check_grants(grants: Grants, *, fn: str) -> None:
    """Refuse grants that are not whole hops or tokens / seconds or dollars >= 0."""
    for name, value in (("extra_hops", grants.hops), ("extra_tokens", grants.tokens)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ConfigurationError(
                f"{fn}({name}=...) must be a whole number >= 0, got {value!r}."
            )
    for name, number in (("extra_seconds", grants.seconds), ("extra_usd", grants.usd)):
        if (
            isinstance(number, bool)
            or not isinstance(number, (int, float))
            or not math.isfinite(number)
            or number < 0
        ):
            raise ConfigurationError(f"{fn}({name}=...) must be a number >= 0, got {number!r}.")


# -- which checkpoint -------------------------------------------------------------------


def known(snapshot: StateSnapshot, thread_id: str) -> StateSnapshot:
    """``snapshot`` (the thread's newest), unless the checkpointer had none."""
    if snapshot.metadata is None:
        raise UnknownThread(
            f"Thread {thread_id!r} has no checkpoint in the graph's checkpointer. Check "
            "the thread_id, and that the graph was compiled with the checkpointer (and "
            "database file) the run used.",
            thread_id=thread_id,
        )
    return snapshot


def sane_id(snapshot: StateSnapshot, thread_id: str) -> str:
    """The newest sane checkpoint as seen from ``snapshot`` (see ``rollback.py``)."""
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
        and START not in snapshot.next
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


def found_target(snapshot: StateSnapshot, *, thread_id: str, checkpoint_id: str) -> StateSnapshot:
    """``snapshot`` (read for the sane ``checkpoint_id``), unless the checkpointer had none.

    Raises:
        RollbackError: The checkpointer no longer has the checkpoint.
    """
    if snapshot.metadata is None:
        raise RollbackError(
            f"Thread {thread_id!r}'s sane pointer names checkpoint {checkpoint_id!r}, which "
            "the checkpointer does not have (were old checkpoints deleted?). Roll back "
            "by hand with graph.update_state(config_with_checkpoint_id, values, as_node=...).",
            thread_id=thread_id,
        )
    return snapshot


# -- which node(s) wrote it -------------------------------------------------------------


class Walk:
    """Marker: the producers are those of the parent checkpoint (a fork rollback wrote)."""


WALK = Walk()
"""What :func:`producer_step` returns to say "look one checkpoint further back"."""


def _rollbacks(values: Mapping[str, Any]) -> int:
    return read_ledger(values)["rollbacks"]


def needs_parent(snapshot: StateSnapshot) -> bool:
    """Whether :func:`producer_step` needs ``snapshot``'s parent to name its producers."""
    source = (snapshot.metadata or {}).get("source")
    return snapshot.parent_config is not None and source in ("loop", "fork", "update")


def producer_step(snapshot: StateSnapshot, parent: StateSnapshot) -> tuple[str, ...] | Walk | None:
    """The node(s) that wrote ``snapshot``, from its parent's tasks; :data:`WALK` to ask
    the parent instead; None if unknown."""
    source = (snapshot.metadata or {}).get("source")
    if source in ("loop", "fork"):
        # A "loop" checkpoint is what its parent's tasks wrote; a "fork" is a copy of such
        # a checkpoint, made under the same parent.
        names = tuple(dict.fromkeys(task.name for task in parent.tasks))
        return names or None
    if source == "update" and _rollbacks(snapshot.values) > _rollbacks(parent.values):
        # A fork written by rollback(): written as the same node(s) as the checkpoint it
        # forked, which is its parent.
        return WALK
    return None


# -- the fork ---------------------------------------------------------------------------


def _most(a: Mapping[str, int], b: Mapping[str, int]) -> dict[str, int]:
    return {key: max(a.get(key, 0), b.get(key, 0)) for key in {*a, *b}}


def fork_ledger(target: StateSnapshot, latest: StateSnapshot, *, grants: Grants) -> Ledger:
    """The sane checkpoint's ledger with the loop window emptied, status ``"running"``, no
    outcome, ``rollbacks`` + 1 (counted from the newest state) and the grants added.

    Spend is not rolled back: money paid is a fact of the thread, so the fork carries what
    the newest state says the thread paid (and its warnings), not the sane checkpoint's.
    """
    ledger = new_ledger()
    ledger.update(read_ledger(target.values))
    now = read_ledger(latest.values)
    ledger["window"] = []
    ledger["status"] = "running"
    ledger["outcome"] = None
    ledger["rollbacks"] = max(now["rollbacks"], ledger["rollbacks"]) + 1
    ledger["spent"] = _most(ledger["spent"], now["spent"])
    agents = {**ledger["spent_by_agent"]}
    for agent, amounts in now["spent_by_agent"].items():
        agents[agent] = _most(agents.get(agent, {}), amounts)
    ledger["spent_by_agent"] = agents
    ledger["warned"] = sorted({*ledger["warned"], *now["warned"]})
    added = {
        key: value
        for key, value in (
            ("hops", grants.hops),
            ("seconds", grants.seconds),
            ("usd", grants.usd),
            ("tokens", grants.tokens),
        )
        if value
    }
    if added:
        merged = dict(ledger["grants"])
        for key, value in added.items():
            merged[key] = merged.get(key, 0) + value
        ledger["grants"] = merged
    return ledger


def _replayed_gotos(
    producers: tuple[str, ...], target: StateSnapshot, *, builder: StateGraph[Any, Any, Any, Any]
) -> list[str]:
    """Next nodes the producers reached by ``Command(goto=...)`` rather than by an edge."""
    reachable: set[str] = set()
    for node in producers:
        targets = static_targets(builder, node)
        if targets is None:
            return []
        reachable |= targets
    pulled = (task.name for task in target.tasks if is_pull_task(task))
    return [name for name in dict.fromkeys(pulled) if name not in reachable]


def fork_writes(
    target: StateSnapshot,
    producers: tuple[str, ...] | None,
    *,
    values: dict[str, Any],
    builder: Any,
) -> list[StateUpdate]:
    """The ``update_state`` writes of the fork: ``values`` as the first producer, the other
    producers (parallel nodes of the same superstep) with no values, for their edges.

    Args:
        target: The sane checkpoint.
        producers: The node(s) that wrote it, or None if unknown (LangGraph then picks).
        values: The patch and the fork's ledger.
        builder: The graph's ``StateGraph`` builder, to tell edges from
            ``Command(goto=...)`` routes (anything else: no goto is replayed).
    """
    if not producers:
        return [StateUpdate(values, None)]
    gotos = (
        _replayed_gotos(producers, target, builder=builder)
        if isinstance(builder, StateGraph)
        else []
    )
    first: Any = Command(update=values, goto=gotos) if gotos else values
    return [StateUpdate(first, producers[0]), *(StateUpdate(None, p) for p in producers[1:])]


def ambiguous(exc: InvalidUpdateError, *, thread_id: str, checkpoint_id: str) -> RollbackError:
    """The error for a fork LangGraph refused because the writer cannot be told."""
    return RollbackError(
        f"Cannot tell which node wrote the sane checkpoint {checkpoint_id!r} of thread "
        f"{thread_id!r} ({exc}). Fork it by hand with graph.update_state(config, values, "
        "as_node=<the node that wrote it>).",
        thread_id=thread_id,
    )


def resume_config(
    config: RunnableConfig | None, written: RunnableConfig, *, thread_id: str
) -> RunnableConfig:
    """``config`` pointing at the fork ``written`` (its other keys kept)."""
    base: dict[str, Any] = dict(config or {})
    configurable = without_checkpoint_map(base.get("configurable") or {})
    configurable.update(
        thread_id=thread_id,
        checkpoint_ns="",
        checkpoint_id=written["configurable"]["checkpoint_id"],
    )
    base["configurable"] = configurable
    return base  # type: ignore[return-value]
