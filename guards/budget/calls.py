"""One model call as the meter sees it: what it is projected to cost before it is made
(:class:`InFlight`), what it used after (:class:`FinishedCall`), and reading the model,
``max_tokens`` and usage from LangChain's callback arguments.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, NamedTuple
from uuid import UUID, uuid4

from langchain_core.messages.utils import count_tokens_approximately
from langchain_core.outputs import ChatGeneration, LLMResult

from ..errors import ConfigurationError
from .check import usd
from .pricing import Price, Pricer, price_usage, usage_counts
from .spend import Spend, spend

__all__ = (
    "FinishedCall",
    "InFlight",
    "call_model",
    "estimated_output",
    "max_tokens_of",
    "usage_of",
)

_MAX_TOKEN_PARAMS = (
    "max_tokens",
    "max_completion_tokens",
    "max_output_tokens",
    "max_tokens_to_sample",
    "num_predict",
)
_MODEL_PARAMS = ("model", "model_name", "model_id")
_NO_DETAILS: Mapping[str, int] = MappingProxyType({})


class InFlight(NamedTuple):
    """A call the meter let through, until it ends (one is made per model call)."""

    call_index: int
    """The call's index among its step's calls (in the order they started)."""
    prefix: str
    """Prefix of its idempotency key: ``"<thread>|<namespace>"``."""
    provider: str | None
    model: str
    input_tokens: int
    """Input tokens counted before the call."""
    max_tokens: int | None
    """The model's ``max_tokens``, if it sets one."""
    usd_micros: int
    """Projected cost."""
    output_tokens: int
    """Projected output tokens: ``max_tokens``, or ``Budget.assume_output_tokens`` for a
    model that sets none."""
    pricer: Pricer
    parent_run_id: UUID | None
    metadata: Mapping[str, Any]

    @property
    def max_tokens_or_zero(self) -> int:
        """The model's ``max_tokens``, or 0 when it sets none (``per_call_tokens`` caps
        input plus this: an output allowance is not the call's size)."""
        return self.max_tokens or 0

    @property
    def key(self) -> str:
        """The call's idempotency key (pools and journals count it once)."""
        return f"{self.prefix}|{self.call_index}"


class FinishedCall(NamedTuple):
    """A call that ended: what it was projected to cost, and what it used."""

    flight: InFlight
    run_id: UUID
    input_tokens: int
    output_tokens: int
    usd_micros: int
    estimated: bool
    """True when the answer carried no usage and it was estimated."""
    details: Mapping[str, int]
    """Usage beyond input and output tokens, in genai-prices' field names
    (``cache_read_tokens``, ``cache_write_tokens``, audio): priced too."""

    @classmethod
    def of(
        cls,
        call: InFlight,
        *,
        run_id: UUID,
        response: LLMResult,
        prices: Mapping[str, Price] | None = None,
    ) -> FinishedCall:
        """What a call used, read from its answer (estimated when it reports no usage),
        priced on its full usage."""
        counts = usage_of(response)
        estimated = counts is None
        if counts is None:
            counts = {
                "input_tokens": call.input_tokens,
                "output_tokens": estimated_output(response),
            }
        i, o = counts["input_tokens"], counts["output_tokens"]
        if len(counts) == 2:
            return cls(call, run_id, i, o, call.pricer(i, o), estimated, _NO_DETAILS)
        usd_micros = price_usage(call.model, counts, provider=call.provider, prices=prices)
        details = {k: v for k, v in counts.items() if k not in ("input_tokens", "output_tokens")}
        return cls(call, run_id, i, o, usd_micros, estimated, details)

    @property
    def spend(self) -> Spend:
        """What the call cost."""
        return spend(self.usd_micros, self.input_tokens, self.output_tokens)

    def no_usage_message(self) -> str:
        """The error for a call that revealed its model reports no usage."""
        flight = self.flight
        return (
            f"Model {flight.model!r} (provider {flight.provider!r}) answered without "
            f"usage_metadata and Budget.no_usage='refuse'. This call's spend was "
            f"estimated ({self.input_tokens} input + {self.output_tokens} output tokens, "
            f"{usd(self.usd_micros)}) and recorded; later calls to the model are "
            "refused. Use a chat model integration that reports usage, or set "
            "Budget(no_usage='estimate')."
        )

    def record(self, agent: str) -> dict[str, Any]:
        """The call's JSON-ready record (``BudgetMeter.calls``, the journal)."""
        flight = self.flight
        meta = flight.metadata
        parent = flight.parent_run_id
        return {
            "key": flight.key,
            "index": flight.call_index,
            "run_id": str(self.run_id),
            "parent_run_id": str(parent) if parent else None,
            "agent": agent,
            "provider": flight.provider,
            "model": flight.model,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "usd_micros": self.usd_micros,
            "estimated": self.estimated,
            "max_tokens": flight.max_tokens,
            "projected": {
                "usd_micros": flight.usd_micros,
                "input_tokens": flight.input_tokens,
                "output_tokens": flight.output_tokens,
            },
            "thread_id": meta.get("thread_id"),
            "checkpoint_ns": meta.get("langgraph_checkpoint_ns"),
            "node": meta.get("langgraph_node"),
            "usage_details": dict(self.details),
        }


def refused_message(provider: str | None, model: str) -> str:
    """The error for a call to a model known to report no usage, refused."""
    return (
        f"Model {model!r} (provider {provider!r}) reports no usage_metadata and "
        "Budget.no_usage='refuse': the call was not made. Use a chat model "
        "integration that reports usage, or set Budget(no_usage='estimate')."
    )


def key_prefix(metadata: Mapping[str, Any]) -> str:
    """The prefix of a step's call keys: ``"<thread_id>|<checkpoint_ns>"`` (a re-run task
    keeps both), or a random ``"meter-<hex>"`` outside a graph (nothing stable to key on:
    keys are unique only)."""
    thread = metadata.get("thread_id")
    ns = metadata.get("langgraph_checkpoint_ns")
    return f"{thread}|{ns}" if thread or ns else f"meter-{uuid4().hex}"


def call_model(metadata: Mapping[str, Any], params: Mapping[str, Any]) -> tuple[str | None, str]:
    """``(provider, model)`` of a call, from the LangSmith params LangChain puts in the run
    metadata (``ls_provider``, ``ls_model_name``), else the invocation params.

    Raises:
        ConfigurationError: The call names no model: its cost cannot be known.
    """
    provider = metadata.get("ls_provider")
    model = metadata.get("ls_model_name")
    if not model:
        model = next((params[n] for n in _MODEL_PARAMS if params.get(n)), None)
    if not isinstance(model, str) or not model:
        raise ConfigurationError(
            "A model call reports no model name (no ls_model_name in its run metadata, "
            "no model in its invocation params), so its cost is unknown. Give the chat "
            "model a model name (its `model`/`model_name` field, or override "
            "_get_ls_params to report ls_model_name)."
        )
    if not isinstance(provider, str) or not provider:
        provider = None
    return provider, model


def max_tokens_of(metadata: Mapping[str, Any], params: Mapping[str, Any]) -> int | None:
    """The call's ``max_tokens`` (``ls_max_tokens``, or an invocation param), if set."""
    value = metadata.get("ls_max_tokens")
    if type(value) is int and value > 0:
        return value
    if value is None:
        for name in _MAX_TOKEN_PARAMS:
            value = params.get(name)
            if value is not None:
                break
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    return None


def usage_of(response: LLMResult) -> dict[str, int] | None:
    """The usage the answer reports, as genai-prices ``Usage`` fields (see
    :func:`~.pricing.usage_counts`), or None."""
    for generations in response.generations:
        for generation in generations:
            message = getattr(generation, "message", None)
            usage = getattr(message, "usage_metadata", None)
            if usage:
                return usage_counts(usage)
    legacy = (response.llm_output or {}).get("token_usage")
    if isinstance(legacy, Mapping) and ("prompt_tokens" in legacy or "completion_tokens" in legacy):
        return {
            "input_tokens": int(legacy.get("prompt_tokens") or 0),
            "output_tokens": int(legacy.get("completion_tokens") or 0),
        }
    return None


def estimated_output(response: LLMResult) -> int:
    """The answer's output tokens, counted: for a model that reports no usage."""
    # Several generations of one run are alternatives (n > 1): each was generated.
    total = 0
    for generations in response.generations:
        for generation in generations:
            if isinstance(generation, ChatGeneration):
                total += count_tokens_approximately([generation.message])
            else:
                total += count_tokens_approximately([("ai", generation.text)])
    return total
