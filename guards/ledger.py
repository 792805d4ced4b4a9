"""The ledger: guard state that lives in the graph, as one reducer channel.

A guarded graph's state includes :class:`GuardedState`, whose ``guard`` channel holds the
:class:`Ledger` of the thread: hops (total and per agent), the wall-clock start, a bounded
window of step fingerprints, the last few envelopes, trips, the run status and the
``last_sane`` checkpoint pointer.

Nodes never write a whole ledger. They write a :class:`StepDelta` and the channel's
reducer (:func:`sanegraph.guards.reducer.fold_ledger`) folds it in. LangGraph applies the
writes of one superstep in task-path order, so parallel ``Send`` branches lose nothing and
the result does not depend on which branch finished first.

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

from collections.abc import Mapping
from typing import Any, Literal, TypedDict

from .trips import Trip

__all__ = (
    "BRANCH_KEY",
    "DEFAULT_WINDOW",
    "MAX_ENVELOPES",
    "MAX_RECENT",
    "MAX_TRIPS",
    "EnvelopeRecord",
    "Ledger",
    "RunStatus",
    "StepDelta",
    "StepWrite",
    "Trip",
    "envelopes_of",
    "new_ledger",
    "read_ledger",
)

BRANCH_KEY = "sanegraph_branch"
"""Key of a ``Send`` payload naming its branch; the branch's envelope is stored under it."""

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
    """Spend to add (``usd_micros``, ``input_tokens``, ``output_tokens``): a hand-made
    delta's; guarded steps write ``paid``."""
    paid: dict[str, Any]
    """What the thread has paid, per its spend log: ``{"total": {...}, "by_agent":
    {agent: {...}}}``. The ledger keeps the highest figure of each (a copy)."""
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


class StepWrite(dict):  # type: ignore[type-arg]
    """A :class:`StepDelta` as a guarded step writes it: a ``dict`` that remembers what the
    reducer last folded it into, and the result.

    LangGraph folds a step's write more than once (for the edge that reads the fresh
    state, then at the end of the superstep), each time into the same ledger: the second
    fold returns the first result instead of computing it again. The memo is an attribute
    of the write itself, so no state outlives it, and serializers see a plain dict (the
    attribute is not part of it). Folding into any other ledger computes afresh.
    """

    folded: tuple[Any, Any] | None = None
    """``(ledger, result)`` of the last fold (set on the instance; no ``__init__`` of its
    own, so a write is made at the speed of a dict)."""


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


def envelopes_of(state: Mapping[str, Any] | None) -> dict[str, dict[str, Any]]:
    """The newest envelope of each agent (or parallel branch key), as JSON-ready dicts.

    Example:
        ```python
        envelopes_of(state)["analyst"]["status"]  # "partial"
        ```
    """
    return read_ledger(state)["envelopes"]
