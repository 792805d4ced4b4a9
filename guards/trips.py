"""Trips: what a guard records when it stops a step. A leaf module: it imports nothing
from the rest of sanegraph, so every guard (hops, budgets, loops, envelopes) can build
trips without importing the others.

A trip is a plain ``dict`` (:class:`Trip`) so that it is stored in the ledger as it is
and survives every checkpointer's serializer. :func:`make_trip` builds one; the owner
routes on its ``kind`` (:data:`TripKind`).
"""

from __future__ import annotations

from typing import Any, Literal, TypedDict

__all__ = ("LOOP_KINDS", "TRIP_KINDS", "Trip", "TripKind", "make_trip")

TripKind = Literal[
    "hop_cap",
    "deadline",
    "budget",
    "invalid_envelope",
    "low_confidence",
    "loop_repeat",
    "loop_copy",
    "loop_cycle",
    "loop_near_duplicate",
    "tool_repeat",
    "tool_errors",
    "no_progress",
]
"""What tripped.

- ``"hop_cap"``: the next step would exceed ``HopCap.max_hops`` or a per-agent cap.
- ``"deadline"``: the thread's wall-clock allowance (``Budget.seconds``) is used up.
- ``"budget"``: the next model call would exceed a money or token limit, or a shared pool.
- ``"invalid_envelope"``: a worker's output could not be read as an ``Envelope``.
- ``"low_confidence"``: a worker answered below ``EnvelopePolicy.min_confidence``.
- ``"loop_*"``, ``"tool_repeat"``, ``"tool_errors"``, ``"no_progress"``: a loop detector
  fired (see ``sanegraph.guards.loops``).
"""

LOOP_KINDS = frozenset(
    (
        "loop_repeat",
        "loop_copy",
        "loop_cycle",
        "loop_near_duplicate",
        "tool_repeat",
        "tool_errors",
        "no_progress",
    )
)
"""The trip kinds of the loop detectors."""

TRIP_KINDS: tuple[str, ...] = TripKind.__args__  # type: ignore[attr-defined]
"""Every trip kind, as ``OwnerPolicy.by_kind`` accepts them."""


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


def make_trip(
    kind: str,
    message: str,
    *,
    limit: Any,
    observed: Any,
    agent: str | None,
    hops: int,
    scope: str = "thread",
    node: str | None = None,
) -> Trip:
    """Build a trip record (``ns`` is filled in by the guarded node that records it).

    Example:
        ```python
        trip = make_trip("hop_cap", "The next hop would exceed max_hops=12 ...",
                         limit=12, observed=13, agent="analyst", hops=12)
        ```
    """
    return {
        "kind": kind,
        "message": message,
        "limit": limit,
        "observed": observed,
        "agent": agent,
        "node": node,
        "ns": None,
        "scope": scope,
        "hop": hops,
    }
