"""Guard policies: what is allowed. What happened lives in the ledger.

Every policy is a frozen, keyword-only dataclass validated on construction, with a
``coerce()`` classmethod for shorthand, so ``GuardPolicy(hops=12)`` and
``GuardPolicy(hops=HopCap(max_hops=12))`` mean the same.

"Limit" always means the maximum allowed, checked *before* the action as
"would exceed": ``used + next > limit``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import InitVar, dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from ._frozen import FrozenDict, positive_int
from .budget.policy import Budget
from .errors import ConfigurationError
from .loops.policy import LoopPolicy
from .trips import TRIP_KINDS

__all__ = (
    "EnvelopePolicy",
    "GuardPolicy",
    "HopCap",
    "OwnerAction",
    "OwnerPolicy",
)

OwnerAction = Literal["partial", "abort", "escalate", "raise"]
"""What the task owner does with a trip.

- ``"partial"``: finish the run with the best partial result (the newest usable envelope).
- ``"abort"``: finish the run as failed, keeping what was done.
- ``"escalate"``: pause the run with ``interrupt()`` and a typed payload; a human resumes
  it with ``Command(resume=decision)``.
- ``"raise"``: raise the trip as a :class:`~sanegraph.guards.GuardTripped` subclass out of
  ``invoke``; the checkpoint before the owner is kept.
"""

_OWNER_ACTIONS = ("partial", "abort", "escalate", "raise")


@dataclass(frozen=True, slots=True, kw_only=True)
class HopCap:
    """A cap on agent steps for the whole thread, across subgraphs, fan-out and resumes.

    Check: the next step trips when ``hops + 1 > max_hops`` (plus any hops a human
    granted), or when ``by_agent[agent] + 1 > per_agent[agent]``. The step does not run.

    Example:
        ```python
        HopCap(max_hops=20, per_agent={"researcher": 5})
        ```
    """

    max_hops: int = 12
    """Maximum agent steps in the thread."""
    per_agent: Mapping[str, int] = field(default_factory=lambda: FrozenDict({}))
    """Maximum steps for individual agents, by agent name."""

    def __post_init__(self) -> None:
        positive_int("HopCap.max_hops", self.max_hops, "Pass e.g. HopCap(max_hops=12).")
        if not isinstance(self.per_agent, Mapping):
            raise ConfigurationError(
                f"HopCap.per_agent must map agent names to caps, got {self.per_agent!r}. "
                "Pass e.g. per_agent={'researcher': 5}."
            )
        for agent, cap in self.per_agent.items():
            positive_int(
                f"HopCap.per_agent[{agent!r}]", cap, "Give each agent a cap of at least 1."
            )
        object.__setattr__(self, "per_agent", FrozenDict(dict(self.per_agent)))

    @classmethod
    def coerce(cls, value: HopCap | int | None) -> HopCap:
        """Build a ``HopCap`` from an instance, a ``max_hops`` int, or None (default)."""
        if value is None:
            return cls()
        if isinstance(value, HopCap):
            return value
        if isinstance(value, int) and not isinstance(value, bool):
            return cls(max_hops=value)
        raise ConfigurationError(
            f"hops must be a HopCap or an int, got {type(value).__name__}. "
            "Pass e.g. hops=12 or hops=HopCap(max_hops=12)."
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class EnvelopePolicy:
    """How worker outputs are checked.

    Every output is coerced to an :class:`~sanegraph.guards.Envelope`; one that cannot be
    becomes a ``failed`` envelope and an ``invalid_envelope`` trip. With
    ``min_confidence`` set, a ``success`` or ``partial`` envelope whose confidence is
    below it (or missing) trips ``low_confidence``: a worker proposes, the owner decides.

    Example:
        ```python
        GuardPolicy(envelopes=EnvelopePolicy(min_confidence=0.7), owner="escalate")
        ```
    """

    min_confidence: float | None = None
    """Confidence gate: trip when ``confidence < min_confidence``. None: gate off."""

    def __post_init__(self) -> None:
        if self.min_confidence is not None and not (0 <= self.min_confidence <= 1):
            raise ConfigurationError(
                f"EnvelopePolicy.min_confidence must be in [0, 1], got "
                f"{self.min_confidence!r}. Pass e.g. 0.7, or None to turn the gate off."
            )

    @classmethod
    def coerce(cls, value: EnvelopePolicy | None) -> EnvelopePolicy:
        """Build an ``EnvelopePolicy`` from an instance or None (defaults)."""
        if value is None:
            return cls()
        if isinstance(value, EnvelopePolicy):
            return value
        raise ConfigurationError(
            f"envelopes must be an EnvelopePolicy, got {type(value).__name__}."
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class OwnerPolicy:
    """What the task owner does with each kind of trip.

    Example:
        ```python
        OwnerPolicy(on_trip="partial", by_kind={"deadline": "escalate"})
        ```
    """

    on_trip: OwnerAction = "partial"
    """The action for trips not named in ``by_kind``."""
    by_kind: Mapping[str, OwnerAction] = field(default_factory=lambda: FrozenDict({}))
    """Actions by trip kind (``"hop_cap"``, ``"deadline"``, ``"invalid_envelope"``...)."""

    def __post_init__(self) -> None:
        if not isinstance(self.by_kind, Mapping):
            raise ConfigurationError(
                f"OwnerPolicy.by_kind must map trip kinds to actions, got {self.by_kind!r}. "
                "Pass e.g. by_kind={'deadline': 'escalate'}."
            )
        for kind in self.by_kind:
            if kind not in TRIP_KINDS:
                raise ConfigurationError(
                    f"OwnerPolicy.by_kind has an unknown trip kind {kind!r}. The kinds are "
                    f"{', '.join(map(repr, TRIP_KINDS))}."
                )
        for where, action in [("on_trip", self.on_trip), *self.by_kind.items()]:
            if action not in _OWNER_ACTIONS:
                raise ConfigurationError(
                    f"OwnerPolicy {where!s} must be one of {', '.join(_OWNER_ACTIONS)}; "
                    f"got {action!r}."
                )
        object.__setattr__(self, "by_kind", FrozenDict(dict(self.by_kind)))

    def action_for(self, kind: str) -> OwnerAction:
        """The action for a trip of ``kind``."""
        return self.by_kind.get(kind, self.on_trip)

    @classmethod
    def coerce(cls, value: OwnerPolicy | OwnerAction | None) -> OwnerPolicy:
        """Build an ``OwnerPolicy`` from an instance, an action name, or None (defaults)."""
        if value is None:
            return cls()
        if isinstance(value, OwnerPolicy):
            return value
        if isinstance(value, str):
            return cls(on_trip=value)  # type: ignore[arg-type]
        raise ConfigurationError(
            f"owner must be an OwnerPolicy or one of {', '.join(_OWNER_ACTIONS)}, "
            f"got {type(value).__name__}."
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class GuardPolicy:
    """Every guard of a graph in one object; pass it to ``guarded``, ``task_owner`` and the
    prebuilt graphs.

    Example:
        ```python
        policy = GuardPolicy(hops=12, budget=Budget(seconds=600), owner="escalate")
        GuardPolicy(loops=LoopPolicy(max_repeats=3, watch=("draft",)))
        ```
    """

    hops: HopCap = field(default_factory=HopCap)
    """The hop cap (an int is shorthand for ``HopCap(max_hops=...)``)."""
    budget: Budget | None = None
    """What the thread may spend; None: no budget."""
    envelopes: EnvelopePolicy = field(default_factory=EnvelopePolicy)
    """How outputs are checked."""
    loops: LoopPolicy | None = field(default_factory=LoopPolicy)
    """Repeating-pattern detection: on by default (None means the defaults), ``False``
    turns it off, an int is short for ``LoopPolicy(max_repeats=...)``."""
    owner: OwnerPolicy = field(default_factory=OwnerPolicy)
    """What the task owner does with trips (an action name is shorthand)."""
    owner_node: str = "owner"
    """Name of the task-owner node that trips are routed to."""
    journal: InitVar[Any] = None
    """Removed: a journal is a resource, passed where the checkpointer goes,
    ``GuardedStateGraph(...).compile(checkpointer=..., journal=...)``. Giving it here
    raises a ``ConfigurationError`` that says so."""

    if TYPE_CHECKING:
        # The dataclass __init__ accepts the documented shorthand; tell type checkers so.
        def __init__(
            self,
            *,
            hops: HopCap | int = ...,
            budget: Budget | None = ...,
            envelopes: EnvelopePolicy | None = ...,
            loops: LoopPolicy | bool | int | None = ...,
            owner: OwnerPolicy | OwnerAction | None = ...,
            owner_node: str = ...,
        ) -> None: ...

    def __post_init__(self, journal: Any) -> None:
        if journal is not None:
            raise ConfigurationError(
                "GuardPolicy(journal=...) moved: a journal is a resource, not policy. Pass it "
                "where the checkpointer goes: GuardedStateGraph(State).compile("
                "checkpointer=saver, journal=Journal(saver))."
            )
        object.__setattr__(self, "hops", HopCap.coerce(self.hops))
        object.__setattr__(self, "budget", Budget.coerce(self.budget))
        object.__setattr__(self, "envelopes", EnvelopePolicy.coerce(self.envelopes))
        object.__setattr__(self, "loops", LoopPolicy.coerce(self.loops))
        object.__setattr__(self, "owner", OwnerPolicy.coerce(self.owner))
        if not isinstance(self.owner_node, str) or not self.owner_node:
            raise ConfigurationError(
                f"GuardPolicy.owner_node must be a node name, got {self.owner_node!r}."
            )

    @classmethod
    def coerce(cls, value: GuardPolicy | None) -> GuardPolicy:
        """Build a ``GuardPolicy`` from an instance or None (every default)."""
        if value is None:
            return _DEFAULT
        if isinstance(value, GuardPolicy):
            return value
        raise ConfigurationError(
            f"policy must be a GuardPolicy, got {type(value).__name__}. "
            "Pass e.g. policy=GuardPolicy(hops=12)."
        )


_DEFAULT = GuardPolicy()
