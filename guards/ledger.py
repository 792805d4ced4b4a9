"""The ledger: guard state that lives in the graph, as one reducer channel.

A guarded graph's state includes :class:`GuardedState`, whose ``guard`` channel holds the
:class:`Ledger` of the thread: hops (total and per agent), the wall-clock start, a bounded
window of step fingerprints, the last few envelopes, trips, the run status and the
``last_sane`` checkpoint pointer.

Nodes never write a whole ledger. They write a :class:`StepDelta` and :func:`fold_ledger`
folds it in. LangGraph applies the writes of one superstep in task-path order, so parallel
``Send`` branches lose nothing and the result does not depend on which branch finished
first.

The ledger is a plain ``dict`` (a ``TypedDict``) of JSON-like values on purpose: it can be
built with no arguments (LangGraph calls the reducer only for such channel types), it
round-trips through any checkpointer's msgpack serializer, strict or not, without an
allow-list and without "unregistered type" warnings, and it is cheap to copy.

Subgraphs whose state also includes ``GuardedState`` share the parent's ledger: the
subgraph starts from the parent's ledger (remembering it as ``base``) and, when it returns
its state, the parent folds in only what the subgraph added. Caps are therefore global
across nesting and across parallel subgraphs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Annotated, Any, Literal, TypedDict

from langchain_core.runnables.config import var_child_runnable_config

__all__ = (
    "DEFAULT_WINDOW",
    "MAX_ENVELOPES",
    "MAX_RECENT",
    "MAX_TRIPS",
    "EnvelopeRecord",
    "GuardedState",
    "Ledger",
    "RunStatus",
    "StepDelta",
    "Trip",
    "envelopes_of",
    "fold_ledger",
    "new_ledger",
    "read_ledger",
)

RunStatus = Literal["running", "tripped", "done", "aborted"]
"""Where a guarded run stands.

- ``"running"``: no unresolved trip.
- ``"tripped"``: a guard tripped; the next edge routes to the task owner.
- ``"done"``: the owner finished the run with the best partial result.
- ``"aborted"``: the owner (or a human) aborted the run.
"""

DEFAULT_WINDOW = 16
"""Default number of step fingerprints kept for loop detection."""

MAX_RECENT = 8
"""How many recent envelope records the ledger keeps (for the owner and escalations)."""

MAX_TRIPS = 16
"""How many trip records the ledger keeps; ``trip_count`` counts them all."""

FANOUT_HOPS = "fanout_hops"
"""Key of the hop count a ``guard_sends`` branch's view of the ledger started from (its
``hops`` also counts its earlier siblings', for the cap). Only in views, never stored."""

FANOUT_INDEX = "fanout_index"
"""Key, in a subgraph ledger's ``base``, of the fan-out index of the ``guard_sends`` branch
the subgraph runs in (how many earlier siblings its hops were charged for)."""

MAX_ENVELOPES = 64
"""How many envelope keys the ledger keeps (the newest envelope of each agent or parallel
branch); past that the least recently written key is dropped."""


class _TripCore(TypedDict):
    """The keys every trip has (see :class:`Trip`)."""

    kind: str
    """``"hop_cap"``, ``"deadline"``, ``"invalid_envelope"``, ``"low_confidence"``..."""
    message: str
    """Developer-facing message: what tripped, limit, observed value, where, remedy."""
    limit: Any
    """The maximum allowed."""
    observed: Any
    """The value that would have exceeded it."""
    agent: str | None
    """The agent whose step tripped."""
    node: str | None
    """The graph node whose step tripped."""
    ns: str | None
    """The tripped task's checkpoint namespace (``"sub:id|node:id"`` inside subgraphs):
    an owner at nesting level *d* continues at the node named in segment *d*."""
    scope: str
    """What the limit applies to: ``"thread"``, ``"agent"``, or for budget trips also
    ``"call"`` (one model call) and ``"pool"`` (a shared budget)."""
    hop: int
    """Total hops when it tripped."""


class Trip(_TripCore, total=False):
    """One guard trip, as recorded in the ledger and shown to the owner.

    Every trip has ``kind``, ``message``, ``limit``, ``observed``, ``agent``, ``node``,
    ``ns``, ``scope`` and ``hop``; some kinds add the keys below.

    Example:
        ```python
        for trip in read_ledger(state)["trips"]:
            print(trip["kind"], trip["agent"], trip["observed"], ">", trip["limit"])
        ```
    """

    limit_key: str
    """Budget trips: the limit that tripped, as a key of ``Ledger.grants``
    (``"usd"``, ``"tokens"``, ``"per_call_tokens"``, ``"usd:<agent>"``, ``"pool"``...)."""
    projected: dict[str, int] | None
    """Budget trips: the blocked call's projection (``usd_micros``, ``input_tokens``,
    ``output_tokens``); None when the pool refused it."""
    detector: str
    """Loop trips: the detector that fired (``"repeat"``, ``"copy"``, ``"cycle"``,
    ``"near_duplicate"``, ``"tool_repeat"``, ``"tool_errors"``, ``"no_progress"``)."""
    steps: list[dict[str, Any]]
    """Loop trips: the repeating steps, oldest first, as ``{agent, hop, fp, text}``."""
    after_step: bool
    """True when the trip came after the agent's step ran, so its update (tool calls
    included) is in state: loop and envelope trips, and a budget trip the agent caught
    and carried on from. Absent when the step did not run or was cut short."""


class EnvelopeRecord(TypedDict):
    """A compact record of one step's envelope, kept in ``Ledger.recent``."""

    agent: str
    key: str
    hop: int
    status: str
    confidence: float | None
    reason: str


class Ledger(TypedDict, total=False):
    """The guard state of one thread. Read it; never write it from a node.

    Every key is always present once the first delta has been folded (see
    :func:`new_ledger`); a fresh channel is the empty dict.

    Example:
        ```python
        ledger = read_ledger(graph.get_state(config).values)
        print(ledger["hops"], ledger["by_agent"], ledger["status"], ledger["last_sane"])
        ```
    """

    v: int
    """Format version; its presence marks a whole ledger (as opposed to a delta)."""
    hops: int
    """Agent steps run so far, across subgraphs, fan-out and resumes."""
    by_agent: dict[str, int]
    """Agent steps per agent."""
    started_at: float | None
    """Wall-clock time (``time.time()``) of the first guarded step."""
    latency_us: dict[str, int]
    """Microseconds spent inside each agent, summed."""
    window: list[list[Any]]
    """The last ``window_size`` steps, oldest first: loop-detection entries
    (``[agent, fingerprint, hop, ...]``, see ``sanegraph.guards.loops.ENTRY_FIELDS``), or
    ``[agent, digest]`` with loop detection off."""
    window_size: int
    """How many fingerprints ``window`` keeps."""
    envelopes: dict[str, dict[str, Any]]
    """The newest envelope of each agent (or parallel branch key), as a JSON-ready dict,
    least recently written first; at most :data:`MAX_ENVELOPES` keys."""
    recent: list[EnvelopeRecord]
    """The last :data:`MAX_RECENT` envelope records, oldest first."""
    trips: list[Trip]
    """The last :data:`MAX_TRIPS` trips, oldest first."""
    trip_count: int
    """Every trip so far."""
    status: RunStatus
    """Where the run stands."""
    step_sane: bool
    """Whether every step of the newest superstep passed every guard."""
    step_parent: str | None
    """The checkpoint the newest superstep's steps ran from."""
    step_group: list[int]
    """How many window, recent and trip entries the newest superstep added."""
    last_sane: str | None
    """Id of the newest checkpoint whose state passed every guard (rollback target)."""
    grants: dict[str, float]
    """Extra allowance granted by humans: ``{"hops": n, "seconds": s}``."""
    outcome: dict[str, Any] | None
    """The owner's final envelope (as a dict) once the run is done or aborted."""
    rollbacks: int
    """How many times this thread was rolled back."""
    faults: int
    """Steps that did not pass every guard (failed envelope or trip)."""
    spent: dict[str, int]
    """Model spend of the thread: ``usd_micros``, ``input_tokens``, ``output_tokens``."""
    spent_by_agent: dict[str, dict[str, int]]
    """Model spend per agent, as in ``spent``."""
    warned: list[str]
    """Budget limits whose warning threshold was crossed (each recorded once)."""
    depth: int
    """Nesting level of the graph holding this ledger: 0 for the thread's root graph."""
    base: dict[str, Any] | None
    """Inside a subgraph: the parent's counters at entry, to fold back only what was added."""


class StepDelta(TypedDict, total=False):
    """What one node writes to the ``guard`` channel. Every key is optional."""

    agent: str
    hop: int
    latency: float
    fp: str
    entry: list[Any]
    """The step's loop-window entry (``sanegraph.guards.loops.step_entry``); without it,
    ``[agent, fp]`` goes into the window."""
    record: EnvelopeRecord
    envelope: list[Any]
    """``[key, envelope dict]``: the step's envelope, stored under its key."""
    spend: dict[str, int]
    """The step's model spend (``usd_micros``, ``input_tokens``, ``output_tokens``)."""
    warn: list[str]
    """Budget limits whose warning threshold this step crossed."""
    sane: bool
    parent: str | None
    trip: Trip
    now: float
    last_sane: str
    status: RunStatus
    grant: dict[str, float]
    outcome: dict[str, Any] | None
    window_size: int
    reset_window: bool


def new_ledger() -> Ledger:
    """Return a ledger with every key at its starting value."""
    return {
        "v": 1,
        "hops": 0,
        "by_agent": {},
        "started_at": None,
        "latency_us": {},
        "window": [],
        "window_size": DEFAULT_WINDOW,
        "envelopes": {},
        "recent": [],
        "trips": [],
        "trip_count": 0,
        "status": "running",
        "step_sane": True,
        "step_parent": None,
        "step_group": [0, 0, 0],
        "last_sane": None,
        "grants": {},
        "outcome": None,
        "rollbacks": 0,
        "faults": 0,
        "spent": {},
        "spent_by_agent": {},
        "warned": [],
        "depth": 0,
        "base": None,
    }


_EMPTY: Ledger = new_ledger()
_KEYS = len(_EMPTY)


def read_ledger(state: Mapping[str, Any] | None) -> Ledger:
    """Return the ledger in a state mapping (a fresh one if the run has not started).

    The result is shared: treat it as read-only.
    """
    if not state:
        return _EMPTY
    ledger = state.get("guard")
    if not ledger:
        return _EMPTY
    return ledger  # type: ignore[no-any-return]


def _complete(ledger: Mapping[str, Any]) -> Ledger:
    # A ledger written by an older version, or hand-built in a test, may lack keys.
    if len(ledger) >= _KEYS:
        return dict(ledger)  # type: ignore[return-value]
    full = new_ledger()
    full.update(ledger)  # type: ignore[typeddict-item]
    return full


def _add_counts(into: dict[str, Any], more: Mapping[str, Any], less: Mapping[str, Any]) -> None:
    for key, value in more.items():
        diff = value - less.get(key, 0)
        if diff:
            into[key] = into.get(key, 0) + diff


def _snapshot(ledger: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "hops": ledger["hops"],
        "by_agent": dict(ledger["by_agent"]),
        "latency_us": dict(ledger["latency_us"]),
        "trip_count": ledger["trip_count"],
        "grants": dict(ledger["grants"]),
        "faults": ledger["faults"],
        "envelopes": dict(ledger["envelopes"]),
        "spent": dict(ledger["spent"]),
        "spent_by_agent": {a: dict(v) for a, v in ledger["spent_by_agent"].items()},
    }


def _merge_child(current: Ledger, child: Mapping[str, Any]) -> Ledger:
    """Fold back what a subgraph added to its copy of this ledger."""
    base = child["base"]
    out = _complete(current)
    added_hops = child["hops"] - base["hops"]
    out["hops"] = out["hops"] + added_hops
    by_agent = dict(out["by_agent"])
    _add_counts(by_agent, child["by_agent"], base["by_agent"])
    out["by_agent"] = by_agent
    latency = dict(out["latency_us"])
    _add_counts(latency, child["latency_us"], base["latency_us"])
    out["latency_us"] = latency
    grants = dict(out["grants"])
    _add_counts(grants, child.get("grants", {}), base.get("grants", {}))
    out["grants"] = grants
    spent = dict(out["spent"])
    _add_counts(spent, child["spent"], base.get("spent", {}))
    out["spent"] = spent
    before = base.get("spent_by_agent", {})
    by_agent_spend = dict(out["spent_by_agent"])
    for agent, amounts in child["spent_by_agent"].items():
        mine = dict(by_agent_spend.get(agent, {}))
        _add_counts(mine, amounts, before.get(agent, {}))
        by_agent_spend[agent] = mine
    out["spent_by_agent"] = by_agent_spend
    new_warned = [w for w in child["warned"] if w not in out["warned"]]
    if new_warned:
        out["warned"] = [*out["warned"], *new_warned]
    known = base.get("envelopes", {})
    changed = {k: v for k, v in child["envelopes"].items() if known.get(k) != v}
    if changed:
        out["envelopes"] = _put_envelopes(out["envelopes"], changed)
    if added_hops > 0:
        size = out["window_size"]
        out["window"] = (out["window"] + child["window"][-added_hops:])[-size:]
        out["recent"] = (out["recent"] + child["recent"][-added_hops:])[-MAX_RECENT:]
    new_trips = child["trip_count"] - base["trip_count"]
    if new_trips > 0:
        out["trips"] = (out["trips"] + child["trips"][-new_trips:])[-MAX_TRIPS:]
        out["trip_count"] = out["trip_count"] + new_trips
    new_faults = child["faults"] - base.get("faults", 0)
    if new_faults > 0:
        out["faults"] = out["faults"] + new_faults
        out["step_sane"] = False
    if child["status"] != "running" and out["status"] == "running":
        out["status"] = child["status"]
        if child.get("outcome") is not None:
            out["outcome"] = child["outcome"]
    if out["started_at"] is None:
        out["started_at"] = child["started_at"]
    return out


def _level() -> int:
    """Nesting level of the graph whose reducer is running.

    LangGraph applies a subgraph's writes inside the task that runs the subgraph, so the
    runnable config in context names that task's namespace ("sub:id", "a:id|b:id"); the
    root graph applies its writes outside any task, with no namespace.
    """
    config = var_child_runnable_config.get()
    if not config:
        return 0
    ns = (config.get("configurable") or {}).get("checkpoint_ns") or ""
    return ns.count("|") + 1 if ns else 0


def _fresh(depth: int | None = None) -> Ledger:
    # Every ledger carries a base, so a whole ledger without one is recognisably a
    # hand-made replacement (update_state) rather than a subgraph handing one back.
    ledger = new_ledger()
    ledger["depth"] = _level() if depth is None else depth
    ledger["base"] = _snapshot(ledger)
    return ledger


def _put_envelopes(
    current: dict[str, dict[str, Any]], new: Mapping[str, dict[str, Any]]
) -> dict[str, dict[str, Any]]:
    out = dict(current)
    for key, envelope in new.items():
        out.pop(key, None)  # re-insert: the dict's order is the order of last writes
        out[key] = envelope
    if len(out) > MAX_ENVELOPES:
        for key in list(out)[: len(out) - MAX_ENVELOPES]:
            del out[key]
    return out


def _record_key(record: Mapping[str, Any]) -> tuple[Any, ...]:
    confidence = record["confidence"]
    return (
        record["hop"],
        record["key"],
        record["agent"],
        record["status"],
        record["reason"],
        -1.0 if confidence is None else confidence,
    )


def _trip_key(trip: Mapping[str, Any]) -> tuple[Any, ...]:
    return (trip["hop"], trip["kind"], trip["agent"] or "", trip.get("node") or "", trip["message"])


def _insert(
    seq: list[Any], item: Any, group: int, cap: int, key: Callable[[Any], Any] | None = None
) -> list[Any]:
    """Append ``item``, keeping the last ``group`` entries (this superstep's) sorted.

    Parallel steps of one superstep may be folded in any order; sorting them makes the
    ledger the same whatever the order (the property the tests check), and trimming from
    the front then keeps the same entries too.
    """
    n = len(seq)
    if group:
        k = item if key is None else key(item)
        pos = n
        low = n - min(group, n)
        while pos > low and (seq[pos - 1] if key is None else key(seq[pos - 1])) > k:
            pos -= 1
        if pos < n:
            out = [*seq[:pos], item, *seq[pos:]]
            if len(out) > cap:
                del out[: len(out) - cap]
            return out
    # The common case, a step alone in its superstep: append and trim.
    return [*seq[n - cap + 1 :], item] if n >= cap else [*seq, item]


def _apply(current: Ledger, delta: Mapping[str, Any]) -> Ledger:
    out = _complete(current) if current else _fresh()
    agent = delta.get("agent")
    g_window, g_recent, g_trips = out["step_group"]
    if "sane" in delta:
        sane = delta["sane"]
        parent = delta.get("parent")
        if not sane:
            out["faults"] += 1
        # All steps of one superstep run from the same parent checkpoint: AND them.
        if parent is not None and parent == out["step_parent"]:
            out["step_sane"] = out["step_sane"] and sane
        else:
            out["step_sane"] = sane
            out["step_parent"] = parent
            g_window = g_recent = g_trips = 0
    if "last_sane" in delta:
        out["last_sane"] = delta["last_sane"]
    now = delta.get("now")
    if now is not None and (out["started_at"] is None or now < out["started_at"]):
        out["started_at"] = now
    if "window_size" in delta:
        out["window_size"] = delta["window_size"]
    if delta.get("reset_window"):
        out["window"] = []
    hop = delta.get("hop")
    if hop and agent is not None:
        out["hops"] += hop
        by_agent = out["by_agent"].copy()
        by_agent[agent] = by_agent.get(agent, 0) + hop
        out["by_agent"] = by_agent
    latency = delta.get("latency")
    if latency is not None and agent is not None:
        # Whole microseconds: integer sums do not depend on the order of parallel steps.
        spent = out["latency_us"].copy()
        spent[agent] = spent.get(agent, 0) + round(latency * 1e6)
        out["latency_us"] = spent
    spend = delta.get("spend")
    if spend:
        total = out["spent"].copy()
        _add_counts(total, spend, {})
        out["spent"] = total
        if agent is not None:
            per_agent = out["spent_by_agent"].copy()
            mine = dict(per_agent.get(agent, {}))
            _add_counts(mine, spend, {})
            per_agent[agent] = mine
            out["spent_by_agent"] = per_agent
    warn = delta.get("warn")
    if warn:
        fresh = [w for w in warn if w not in out["warned"]]
        if fresh:
            # Sorted: parallel steps may warn in any order; the ledger must not care.
            out["warned"] = sorted({*out["warned"], *fresh})
    entry = delta.get("entry")
    if entry is None:
        fp = delta.get("fp")
        if fp is not None and agent is not None:
            entry = [agent, fp]
    if entry is not None:
        out["window"] = _insert(out["window"], entry, g_window, out["window_size"])
        g_window += 1
    envelope = delta.get("envelope")
    if envelope is not None:
        key, value = envelope
        envelopes = out["envelopes"]
        size = len(envelopes)
        if key in envelopes:
            # The newest key written again (an agent running alone in a loop) keeps the
            # order of last writes as it is: no need to move it to the end.
            in_place = size <= MAX_ENVELOPES and key == next(reversed(envelopes))
        else:
            in_place = size < MAX_ENVELOPES
        if in_place:
            envelopes = envelopes.copy()
            envelopes[key] = value
            out["envelopes"] = envelopes
        else:
            out["envelopes"] = _put_envelopes(envelopes, {key: value})
    record = delta.get("record")
    if record is not None:
        out["recent"] = _insert(out["recent"], record, g_recent, MAX_RECENT, _record_key)
        g_recent += 1
    if "status" in delta:
        out["status"] = delta["status"]
    if "outcome" in delta:
        out["outcome"] = delta["outcome"]
    trip = delta.get("trip")
    if trip is not None:
        out["trips"] = _insert(out["trips"], trip, g_trips, MAX_TRIPS, _trip_key)
        g_trips += 1
        out["trip_count"] += 1
        if out["status"] == "running":
            out["status"] = "tripped"
    out["step_group"] = [g_window, g_recent, g_trips]
    if "grant" in delta:
        grants = dict(out["grants"])
        _add_counts(grants, delta["grant"], {})
        out["grants"] = grants
    return out


def fold_ledger(current: Ledger | None, update: Any) -> Ledger:
    """The ``guard`` channel's reducer: fold one write into the ledger.

    Accepts a :class:`StepDelta`, a list of deltas, or a whole :class:`Ledger`. Whole
    ledgers are told apart by the nesting level they were made at (``depth``) against
    the level of the graph applying the write: a shallower one is a parent's ledger
    entering a subgraph (adopted, and remembered as ``base``); a deeper one is a
    subgraph handing its ledger back (only what it added since ``base`` is folded in);
    one of the same level is a previous result passed in again (ignored). A whole
    ledger without ``base`` replaces the current one; to replace a ledger read from
    state, write ``langgraph.types.Overwrite(ledger)``.

    Args:
        current: The channel's value (``{}`` before the first write).
        update: The write.

    Returns:
        A new ledger; ``current`` is never mutated.
    """
    if not update:
        # A subgraph entered with its parent's still-empty ledger starts a fresh one.
        return current if current else _fresh()
    if isinstance(update, list):
        out: Ledger = current if current is not None else {}
        for item in update:
            out = fold_ledger(out, item)
        return out
    if "v" in update:
        if not update.get("base"):
            return _complete(update)  # a hand-made ledger (update_state) replaces
        here = _level()
        there = update.get("depth", 0)
        if there > here:
            # A subgraph handing its ledger back: fold in only what it added.
            return _merge_child(current if current else _fresh(here), update)
        if there < here or not current:
            # Entering a subgraph: take the parent's ledger and remember it as the base.
            adopted = _complete(update)
            fanout = adopted.pop(FANOUT_HOPS, None)  # type: ignore[misc]
            if fanout is not None:
                index = adopted["hops"] - fanout
            else:
                index = (update.get("base") or {}).get(FANOUT_INDEX)
            adopted["depth"] = here
            base = _snapshot(adopted)
            if index is not None:
                # A branch of a fan-out (or a subgraph inside one): its steps count their
                # siblings' live hops past the ones guard_sends charged (guards/_fanout.py).
                base[FANOUT_INDEX] = index
            adopted["base"] = base
            return adopted
        # The same level's own ledger coming back as input (a previous result passed to
        # invoke again): the channel already holds the truth.
        return current
    if not current:
        # A fresh ledger takes its nesting level from the context: never reuse one.
        return _apply({}, update)
    global _LAST
    last = _LAST
    if last[0] is current and last[1] is update:
        return last[2]  # type: ignore[no-any-return]
    result = _apply(current, update)
    _LAST = (current, update, result)
    return result


_LAST: tuple[Any, Any, Any] = (None, None, None)
"""The last delta folded: ``(current, delta, result)``.

LangGraph folds each step's write twice: once on a copy of the channels when the edge
after the node reads the fresh state, then into the channels at the end of the superstep,
both times with the same ledger and the same delta objects. Ledgers are never mutated,
and folding a delta into a non-empty ledger does not depend on the context, so the
second fold can return the first one's result. One entry, replaced atomically: parallel
steps that interleave just miss it.
"""


def envelopes_of(state: Mapping[str, Any] | None) -> dict[str, dict[str, Any]]:
    """The newest envelope of each agent (or parallel branch key), as JSON-ready dicts.

    Example:
        ```python
        envelopes_of(state)["analyst"]["status"]  # "partial"
        ```
    """
    return read_ledger(state)["envelopes"]


class GuardedState(TypedDict, total=False):
    """Mixin for a graph's state: add it to your ``TypedDict`` to guard the graph.

    Example:
        ```python
        from langgraph.graph import MessagesState
        from sanegraph.guards import GuardedState

        class State(MessagesState, GuardedState):
            topic: str
        ```
    """

    guard: Annotated[Ledger, fold_ledger]
    """The ledger (see :class:`Ledger`), folded from per-step deltas. One channel on
    purpose: LangGraph's cost per written channel is a large part of a step's."""
