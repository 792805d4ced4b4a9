"""``Budget``: what a thread may spend on model calls (money, tokens) and in time.

Plain data: frozen, hashable, picklable. The meter (:mod:`.meter`) and the intake check
(:mod:`.check`) read it; a shared pool or a journal is a resource, passed where the
checkpointer goes (``GuardedStateGraph.compile(pool=..., journal=...)``), never here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import InitVar, dataclass
from typing import Any, Literal, TypedDict

from .._frozen import FrozenDict, positive_int, positive_usd
from ..errors import ConfigurationError
from .pricing import Price

__all__ = ("AGENT_LIMIT_KEYS", "AgentLimits", "Budget", "ExhaustedAction", "NoUsage")

ExhaustedAction = Literal["interrupt", "end", "raise"]
"""What happens when a budget limit would be exceeded (the call is never made).

- ``"interrupt"``: the task owner pauses the run at a checkpoint with ``interrupt()`` and a
  typed payload (spent, limit, by agent, projected next call); a human resumes it with a
  decision: raise the budget and continue, accept the best partial result, or abort.
- ``"end"``: the owner finishes the run with the best partial result (status ``done``).
- ``"raise"``: the owner raises :class:`~sanegraph.guards.errors.BudgetExceeded` out of
  ``invoke``; the checkpoint before the owner is kept.
"""

NoUsage = Literal["estimate", "refuse"]
"""What to do with a model whose answers carry no ``usage_metadata``.

- ``"estimate"``: count the call's tokens with langchain-core's
  ``count_tokens_approximately`` (input messages and the answer), price that, and mark the
  call as estimated. Never free.
- ``"refuse"``: record the estimated spend of the call that revealed it, then raise
  :class:`~sanegraph.guards.ConfigurationError`; later calls to that model (same provider
  and model name, in this process) are refused before they are made.
"""

AGENT_LIMIT_KEYS = ("usd", "tokens", "input_tokens", "output_tokens")
"""The limits an agent may have in ``Budget.per_agent``."""


class AgentLimits(TypedDict, total=False):
    """One agent's limits in ``Budget.per_agent``; give at least one.

    Each is checked like the thread's limit of the same name, against what that agent
    spent in the thread: ``spent_by_agent + next call > limit``.

    Example:
        ```python
        Budget(usd=5, per_agent={"researcher": {"usd": 1.0, "tokens": 50_000}})
        ```
    """

    usd: float
    """US dollars the agent may spend."""
    tokens: int
    """Input plus output tokens the agent may use."""
    input_tokens: int
    """Input tokens the agent may use."""
    output_tokens: int
    """Output tokens the agent may use."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Budget:
    """What a thread may spend: money and tokens on model calls, and wall-clock time.

    Money and tokens are checked *before* each model call, as "would exceed": the call is
    projected (its input tokens counted, plus the model's ``max_tokens``, or
    ``assume_output_tokens`` when it sets none, priced with genai-prices or ``prices``)
    and blocked when ``spent + projected > limit`` for any limit set (plus any allowance a
    human granted), where ``spent`` is everything the thread paid and has reserved; the
    model is never called. ``per_call_tokens`` caps one call's input + ``max_tokens``. The
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
    assume_output_tokens: int = 1000
    """Output tokens a call reserves when its model sets no ``max_tokens``: its projection
    is ``input + assume_output_tokens``, so concurrent calls cannot all pass on the same
    headroom. A call that answers with more overshoots by the difference; one that answers
    with less gives the rest back. Give models ``max_tokens`` for an exact bound."""
    no_usage: NoUsage = "estimate"
    """Models whose answers carry no ``usage_metadata``: ``"estimate"`` their tokens with
    ``count_tokens_approximately``, or ``"refuse"`` them. See
    :data:`~sanegraph.guards.budget.NoUsage`."""
    pool: InitVar[Any] = None
    """Removed: pass a shared pool where the checkpointer goes,
    ``GuardedStateGraph(...).compile(checkpointer=..., pool=...)``. Giving it here raises
    a ``ConfigurationError`` that says so."""

    def __post_init__(self, pool: Any) -> None:
        if pool is not None:
            raise ConfigurationError(
                "Budget(pool=...) moved: a pool is a resource, not policy. Pass it where the "
                "checkpointer goes: GuardedStateGraph(State).compile(checkpointer=saver, "
                "pool=SharedBudget(...))."
            )
        if self.usd is not None:
            positive_usd(
                "Budget.usd", self.usd, "Pass e.g. Budget(usd=5), or None for no money limit."
            )
        positive_int(
            "Budget.assume_output_tokens",
            self.assume_output_tokens,
            "Pass e.g. Budget(assume_output_tokens=1000), what a call without max_tokens "
            "reserves for its answer.",
        )
        for name in ("tokens", "input_tokens", "output_tokens", "per_call_tokens"):
            value = getattr(self, name)
            if value is not None:
                positive_int(
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
            object.__setattr__(self, "prices", FrozenDict(dict(self.prices)))

    @property
    def has_spend_limits(self) -> bool:
        """Whether any money or token limit is set: model calls need metering."""
        return bool(
            self.usd is not None
            or self.tokens is not None
            or self.input_tokens is not None
            or self.output_tokens is not None
            or self.per_call_tokens is not None
            or self.per_agent
        )

    @classmethod
    def coerce(cls, value: Budget | None) -> Budget | None:
        """A ``Budget`` from an instance or None (no budget).

        A bare number is refused: ``budget=20`` reads as twenty dollars to one person and
        twenty seconds to another.
        """
        if value is None or isinstance(value, Budget):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            raise ConfigurationError(
                f"budget={value!r} is ambiguous: say what it limits, e.g. "
                f"budget=Budget(usd={value!r}) for dollars or budget=Budget(seconds={value!r}) "
                "for wall-clock time."
            )
        raise ConfigurationError(
            f"budget must be a Budget, got {type(value).__name__}. "
            "Pass e.g. budget=Budget(usd=5) or budget=Budget(seconds=600)."
        )


_EXHAUSTED = ("interrupt", "end", "raise")
_NO_USAGE = ("estimate", "refuse")


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
                positive_usd(f"{where}['usd']", value, "Pass e.g. {'usd': 1.0}.")
            else:
                positive_int(f"{where}[{key!r}]", value, f"Pass e.g. {{{key!r}: 50_000}}.")
        out[agent] = FrozenDict(dict(limits))
    return FrozenDict(out)
