"""Exceptions raised by sanegraph.

One root, :class:`SanegraphError`. Developer mistakes raise :class:`ConfigurationError`
(also a ``ValueError``) as early as possible, with a message that says what to change.
Guard trips derive from :class:`GuardTripped` (also a ``RuntimeError``, so LangGraph's
default ``RetryPolicy`` does not retry them). Inside a guarded graph a trip is recorded in
the ledger and routed to the task owner; these exceptions only reach the caller when the
policy says ``"raise"`` or a trip was left unrouted.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .trips import LOOP_KINDS

__all__ = (
    "BudgetExceeded",
    "ConfigurationError",
    "DeadlineExceeded",
    "GuardTripped",
    "HopCapExceeded",
    "InvalidDecision",
    "InvalidEnvelope",
    "LoopDetected",
    "SanegraphError",
)


class SanegraphError(Exception):
    """Root of every exception sanegraph raises."""


class ConfigurationError(SanegraphError, ValueError):
    """A developer mistake: bad policy values, unknown agent names, a missing checkpointer.

    Raised at build time wherever possible; the message says what to change.
    """


class InvalidDecision(ConfigurationError):
    """A human decision given to ``Command(resume=...)`` does not fit the escalation.

    The run stays paused at its interrupt and nothing is lost: resume again with a valid
    decision.
    """


class GuardTripped(SanegraphError, RuntimeError):
    """A guard stopped the run.

    Attributes:
        kind: The trip kind, as recorded in the ledger (``"hop_cap"``, ``"deadline"``...).
        limit: The maximum allowed.
        observed: The value that would have exceeded it.
        agent: The agent whose step tripped, if any.
        scope: Where the limit applies (``"thread"`` or ``"agent"``).
        trip: The trip record as written to the ledger (with the kind's extra keys:
            ``limit_key`` and ``projected`` for budgets, ``detector`` and ``steps`` for
            loops).

    Example:
        ```python
        try:
            graph.invoke(inputs, config)  # with OwnerPolicy(on_trip="raise")
        except GuardTripped as trip:
            print(trip.kind, trip.limit, trip.observed, trip.agent)
        ```
    """

    kind: str = "guard"

    def __init__(
        self,
        message: str,
        *,
        limit: Any = None,
        observed: Any = None,
        agent: str | None = None,
        scope: str = "thread",
        trip: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.limit = limit
        self.observed = observed
        self.agent = agent
        self.scope = scope
        self.trip: dict[str, Any] = (
            dict(trip)
            if trip is not None
            else {
                "kind": self.kind,
                "message": message,
                "limit": limit,
                "observed": observed,
                "agent": agent,
                "scope": scope,
            }
        )

    @classmethod
    def from_trip(cls, trip: Mapping[str, Any]) -> GuardTripped:
        """Build the exception matching a ledger trip record."""
        kind = trip.get("kind", "guard")
        exc_type = _BY_KIND.get(kind, GuardTripped)
        exc = exc_type(
            trip.get("message", kind),
            limit=trip.get("limit"),
            observed=trip.get("observed"),
            agent=trip.get("agent"),
            scope=trip.get("scope", "thread"),
            trip=trip,
        )
        exc.kind = kind
        return exc


class HopCapExceeded(GuardTripped):
    """The next agent step would exceed ``HopCap.max_hops`` (or a per-agent cap)."""

    kind = "hop_cap"


class DeadlineExceeded(GuardTripped):
    """The thread's wall-clock allowance (``Budget.seconds``) is used up."""

    kind = "deadline"


class InvalidEnvelope(GuardTripped):
    """A worker's output could not be read as an ``Envelope``."""

    kind = "invalid_envelope"


class BudgetExceeded(GuardTripped):
    """The next model call would exceed a money or token limit of ``Budget``.

    Raised from the budget meter's intake check (the model is not called), or by the task
    owner when ``Budget.on_exhausted="raise"``.

    Attributes:
        trip: The trip record (``kind="budget"``), as written to the ledger.

    Example:
        ```python
        try:
            model.invoke("hi", config={"callbacks": [meter]})
        except BudgetExceeded as exc:
            print(exc.trip["limit_key"], exc.limit, exc.observed)
        ```
    """

    kind = "budget"


class LoopDetected(GuardTripped):
    """A repeating pattern was detected (``LoopPolicy``): a repeat, a copy, a cycle, a
    near-duplicate, a tool repeated or failing, or no progress.

    ``kind`` is the trip's kind (``"loop_repeat"``, ``"loop_cycle"``, ``"tool_repeat"``,
    ``"no_progress"``...); :attr:`trip` has the repeating ``steps``.
    """

    kind = "loop"


_BY_KIND: dict[str, type[GuardTripped]] = {
    "hop_cap": HopCapExceeded,
    "deadline": DeadlineExceeded,
    "invalid_envelope": InvalidEnvelope,
    "budget": BudgetExceeded,
    **dict.fromkeys(LOOP_KINDS, LoopDetected),
}
