"""Guard policies: what is allowed. What happened lives in the ledger.

Every policy is a frozen, keyword-only dataclass validated on construction, with a
``coerce()`` classmethod for shorthand, so ``GuardPolicy(hops=12)`` and
``GuardPolicy(hops=HopCap(max_hops=12))`` mean the same.

"Limit" always means the maximum allowed, checked *before* the action as
"would exceed": ``used + next > limit``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal

from ._pricing import AGENT_LIMIT_KEYS, AgentLimits, ExhaustedAction, NoUsage, Price
from .errors import ConfigurationError
from .loops import LoopPolicy

if TYPE_CHECKING:
    from .budget import SpendJournal, SpendPool

__all__ = (
    "Budget",
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


def _positive_int(name: str, value: Any, remedy: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigurationError(f"{name} must be a whole number >= 1, got {value!r}. {remedy}")
    return value


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
    per_agent: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))
    """Maximum steps for individual agents, by agent name."""

    def __post_init__(self) -> None:
        _positive_int("HopCap.max_hops", self.max_hops, "Pass e.g. HopCap(max_hops=12).")
        if not isinstance(self.per_agent, Mapping):
            raise ConfigurationError(
                f"HopCap.per_agent must map agent names to caps, got {self.per_agent!r}. "
                "Pass e.g. per_agent={'researcher': 5}."
            )
        for agent, cap in self.per_agent.items():
            _positive_int(
                f"HopCap.per_agent[{agent!r}]", cap, "Give each agent a cap of at least 1."
            )
        object.__setattr__(self, "per_agent", MappingProxyType(dict(self.per_agent)))

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
class Budget:
    """What a thread may spend: money and tokens on model calls, and wall-clock time.

    Money and tokens are checked *before* each model call, as "would exceed": the call is
    projected (its input tokens counted, plus the model's ``max_tokens`` when it sets
    one, priced with genai-prices or ``prices``) and blocked when
    ``spent + projected > limit`` for any limit set (plus any allowance a human granted);
    the model is never called. ``per_call_tokens`` caps one call's projected tokens. The
    limits are thread-scoped; ``per_agent`` adds limits on what one agent spent in the
    thread. When ``spent + projected`` reaches ``warn_at`` of a limit, a warning is
    recorded once. An empty ``Budget()`` sets no limit.

    Time: a step trips when ``now - started_at > seconds`` (plus any seconds a human
    granted), where ``started_at`` is the first guarded step of the thread. The clock
    runs across pauses and resumes: it is a deadline for the whole thread.

    Example:
        ```python
        Budget(usd=5, tokens=400_000, per_call_tokens=16_000, seconds=600)
        Budget(usd=5, per_agent={"researcher": {"usd": 1}}, on_exhausted="end")
        Budget(usd=1, prices={"my-model": Price(input_per_mtok=0.5, output_per_mtok=1.5)})
        ```
    """

    usd: float | None = None
    """US dollars the thread's model calls may cost."""
    tokens: int | None = None
    """Input plus output tokens the thread's model calls may use."""
    input_tokens: int | None = None
    """Input tokens the thread's model calls may use."""
    output_tokens: int | None = None
    """Output tokens the thread's model calls may use."""
    seconds: float | None = None
    """Wall-clock seconds the thread may run, from its first guarded step."""
    per_call_tokens: int | None = None
    """Cap on one model call's projected tokens (input + ``max_tokens``):
    ``projected > per_call_tokens`` blocks the call."""
    per_agent: Mapping[str, AgentLimits] | None = None
    """Limits on what one agent spent in the thread, by agent name:
    ``{"researcher": {"usd": 1.0, "tokens": 50_000}}`` (keys ``usd``, ``tokens``,
    ``input_tokens``, ``output_tokens``; see :class:`~sanegraph.guards.budget.AgentLimits`)."""
    warn_at: float = 0.75
    """Fraction of a limit at which a warning is recorded (once) and logged:
    ``spent + projected >= warn_at * limit``. In (0, 1]."""
    on_exhausted: ExhaustedAction = "interrupt"
    """What the task owner does when a money or token limit would be exceeded:
    ``"interrupt"`` (pause for a human top-up), ``"end"`` (finish with the best partial
    result) or ``"raise"`` (raise ``BudgetExceeded``). See
    :data:`~sanegraph.guards.budget.ExhaustedAction`."""
    prices: Mapping[str, Price] | None = None
    """Prices by model name (``ls_model_name``) as
    :class:`~sanegraph.guards.budget.Price`, for models genai-prices does not know (or to
    override it). A model with no known price is a ``ConfigurationError`` at its first
    call."""
    no_usage: NoUsage = "estimate"
    """Models whose answers carry no ``usage_metadata``: ``"estimate"`` their tokens with
    ``count_tokens_approximately``, or ``"refuse"`` them. See
    :data:`~sanegraph.guards.budget.NoUsage`."""
    pool: SpendPool | None = None
    """A budget shared with other threads and processes (e.g.
    ``sanegraph.checkpoints.SharedBudget``): each call's projection is reserved in it
    before the call and replaced by the real spend after. A call the pool cannot cover
    is blocked like one the thread's own limits cannot."""

    def __post_init__(self) -> None:
        if self.usd is not None:
            _positive_usd(
                "Budget.usd", self.usd, "Pass e.g. Budget(usd=5), or None for no money limit."
            )
        for name in ("tokens", "input_tokens", "output_tokens", "per_call_tokens"):
            value = getattr(self, name)
            if value is not None:
                _positive_int(
                    f"Budget.{name}",
                    value,
                    f"Pass e.g. Budget({name}=100_000), or None for no such limit.",
                )
        if self.seconds is not None and (
            isinstance(self.seconds, bool)
            or not isinstance(self.seconds, (int, float))
            or not math.isfinite(self.seconds)
            or self.seconds <= 0
        ):
            raise ConfigurationError(
                f"Budget.seconds must be a positive number, got {self.seconds!r}. "
                "Pass e.g. Budget(seconds=600), or None for no deadline."
            )
        if self.per_agent is not None:
            object.__setattr__(self, "per_agent", _agent_limits(self.per_agent))
        if (
            isinstance(self.warn_at, bool)
            or not isinstance(self.warn_at, (int, float))
            or not 0 < self.warn_at <= 1
        ):
            raise ConfigurationError(
                f"Budget.warn_at must be a fraction in (0, 1], got {self.warn_at!r}. "
                "Pass e.g. warn_at=0.75 to warn at 75% of each limit."
            )
        if self.on_exhausted not in _EXHAUSTED:
            raise ConfigurationError(
                f"Budget.on_exhausted must be one of {', '.join(map(repr, _EXHAUSTED))}; "
                f"got {self.on_exhausted!r}."
            )
        if self.no_usage not in _NO_USAGE:
            raise ConfigurationError(
                f"Budget.no_usage must be one of {', '.join(map(repr, _NO_USAGE))}; "
                f"got {self.no_usage!r}."
            )
        if self.prices is not None:
            if not isinstance(self.prices, Mapping):
                raise ConfigurationError(
                    f"Budget.prices must map model names to Price(...), got {self.prices!r}. "
                    "Pass e.g. prices={'my-model': Price(input_per_mtok=0.5, "
                    "output_per_mtok=1.5)}."
                )
            for model, price in self.prices.items():
                if not isinstance(model, str) or not model:
                    raise ConfigurationError(
                        f"Budget.prices keys must be model names, got {model!r}."
                    )
                if not isinstance(price, Price):
                    raise ConfigurationError(
                        f"Budget.prices[{model!r}] must be a Price, got "
                        f"{type(price).__name__}. Pass Price(input_per_mtok=..., "
                        "output_per_mtok=...) in USD per million tokens."
                    )
            object.__setattr__(self, "prices", MappingProxyType(dict(self.prices)))
        if self.pool is not None:
            from .budget import SpendPool

            if not isinstance(self.pool, SpendPool):
                raise ConfigurationError(
                    f"Budget.pool must be a shared pool with reserve/commit/release, got "
                    f"{type(self.pool).__name__}. Pass e.g. "
                    "pool=SharedBudget('acme 2026-11-22', path='runs/pools.sqlite', usd=20)."
                )

    @property
    def has_spend_limits(self) -> bool:
        """Whether any money or token limit (or a shared pool) is set: model calls need
        metering."""
        return bool(
            self.pool is not None
            or self.usd is not None
            or self.tokens is not None
            or self.input_tokens is not None
            or self.output_tokens is not None
            or self.per_call_tokens is not None
            or self.per_agent
        )

    @classmethod
    def coerce(cls, value: Budget | float | None) -> Budget | None:
        """Build a ``Budget`` from an instance, a number of seconds, or None (no budget)."""
        if value is None or isinstance(value, Budget):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return cls(seconds=float(value))
        raise ConfigurationError(
            f"budget must be a Budget or a number of seconds, got {type(value).__name__}. "
            "Pass e.g. budget=Budget(seconds=600) or budget=Budget(usd=5)."
        )


_EXHAUSTED = ("interrupt", "end", "raise")
_NO_USAGE = ("estimate", "refuse")


def _positive_usd(name: str, value: Any, remedy: str) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ConfigurationError(
            f"{name} must be a positive number of US dollars, got {value!r}. {remedy}"
        )
    return value


def _agent_limits(per_agent: Any) -> Mapping[str, AgentLimits]:
    example = "Pass e.g. per_agent={'researcher': {'usd': 1.0, 'tokens': 50_000}}."
    if not isinstance(per_agent, Mapping):
        raise ConfigurationError(
            f"Budget.per_agent must map agent names to limits, got {per_agent!r}. {example}"
        )
    out: dict[str, Any] = {}
    for agent, limits in per_agent.items():
        where = f"Budget.per_agent[{agent!r}]"
        if not isinstance(agent, str) or not agent:
            raise ConfigurationError(f"Budget.per_agent keys must be agent names, got {agent!r}.")
        if not isinstance(limits, Mapping):
            raise ConfigurationError(f"{where} must be a dict of limits, got {limits!r}. {example}")
        if not limits:
            raise ConfigurationError(
                f"{where} sets no limit. Give at least one of {', '.join(AGENT_LIMIT_KEYS)}, "
                "or leave the agent out."
            )
        for key, value in limits.items():
            if key not in AGENT_LIMIT_KEYS:
                raise ConfigurationError(
                    f"{where} has an unknown limit {key!r}. Use {', '.join(AGENT_LIMIT_KEYS)}."
                )
            if key == "usd":
                _positive_usd(f"{where}['usd']", value, "Pass e.g. {'usd': 1.0}.")
            else:
                _positive_int(f"{where}[{key!r}]", value, f"Pass e.g. {{{key!r}: 50_000}}.")
        out[agent] = MappingProxyType(dict(limits))
    return MappingProxyType(out)  # type: ignore[arg-type]


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
    by_kind: Mapping[str, OwnerAction] = field(default_factory=lambda: MappingProxyType({}))
    """Actions by trip kind (``"hop_cap"``, ``"deadline"``, ``"invalid_envelope"``...)."""

    def __post_init__(self) -> None:
        for where, action in [("on_trip", self.on_trip), *self.by_kind.items()]:
            if action not in _OWNER_ACTIONS:
                raise ConfigurationError(
                    f"OwnerPolicy {where!s} must be one of {', '.join(_OWNER_ACTIONS)}; "
                    f"got {action!r}."
                )
        object.__setattr__(self, "by_kind", MappingProxyType(dict(self.by_kind)))

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
    journal: SpendJournal | None = None
    """Where guarded steps journal their model calls and steps (e.g.
    ``sanegraph.checkpoints.Journal``): a step re-run after a crash then counts what its
    earlier attempt spent, once. None: no journal."""

    if TYPE_CHECKING:
        # The dataclass __init__ accepts the documented shorthand; tell type checkers so.
        def __init__(
            self,
            *,
            hops: HopCap | int = ...,
            budget: Budget | float | None = ...,
            envelopes: EnvelopePolicy | None = ...,
            loops: LoopPolicy | bool | int | None = ...,
            owner: OwnerPolicy | OwnerAction | None = ...,
            owner_node: str = ...,
            journal: SpendJournal | None = ...,
        ) -> None: ...

    def __post_init__(self) -> None:
        object.__setattr__(self, "hops", HopCap.coerce(self.hops))
        object.__setattr__(self, "budget", Budget.coerce(self.budget))
        object.__setattr__(self, "envelopes", EnvelopePolicy.coerce(self.envelopes))
        object.__setattr__(self, "loops", LoopPolicy.coerce(self.loops))
        object.__setattr__(self, "owner", OwnerPolicy.coerce(self.owner))
        if not isinstance(self.owner_node, str) or not self.owner_node:
            raise ConfigurationError(
                f"GuardPolicy.owner_node must be a node name, got {self.owner_node!r}."
            )
        if self.journal is not None:
            from .budget import SpendJournal

            if not isinstance(self.journal, SpendJournal):
                raise ConfigurationError(
                    "GuardPolicy.journal must have prior_calls/log_call/log_step, got "
                    f"{type(self.journal).__name__}. Pass e.g. "
                    "journal=Journal('runs/checkpoints.sqlite') from sanegraph.checkpoints."
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
