"""Model prices for budgets: genai-prices, or a :class:`Price` the policy gives.

Prices come from ``genai-prices`` (pydantic's maintained price database), never from a
hand-written table; a policy may add prices for models it does not list (:class:`Price`).
A call is priced on its full usage: LangChain's ``usage_metadata`` (``input_tokens``,
``output_tokens``, and the details ``input_token_details`` (``cache_read``,
``cache_creation``, ``audio``) and ``output_token_details`` (``audio``; ``reasoning`` is
part of ``output_tokens`` and priced as output)) is mapped to genai-prices' ``Usage``
(:func:`usage_counts`) and priced by genai-prices' own ``calc_price``. Calls with input and
output tokens only, and every projection made before a call, are priced by a function
fitted to ``calc_price`` (see ``_genai``): the same result, 300 times faster.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from functools import lru_cache
from typing import Any

from ..errors import ConfigurationError
from ._genai import Pricer, ceil_micros, genai_pricer, genai_usage_micros

__all__ = ("Price", "Pricer", "price_call", "price_usage", "pricer", "usage_counts")

UsageCounts = Mapping[str, int]
"""A call's usage in genai-prices' ``Usage`` fields: ``input_tokens`` (all input tokens,
cached ones included), ``output_tokens``, and where present ``cache_read_tokens``,
``cache_write_tokens``, ``input_audio_tokens``, ``cache_audio_read_tokens``,
``output_audio_tokens``."""

_DETAILS = (
    ("input_token_details", "cache_read", "cache_read_tokens"),
    ("input_token_details", "cache_creation", "cache_write_tokens"),
    ("input_token_details", "audio", "input_audio_tokens"),
    ("output_token_details", "audio", "output_audio_tokens"),
)
"""LangChain ``usage_metadata`` details -> genai-prices ``Usage`` fields."""


def usage_counts(usage: Mapping[str, Any]) -> dict[str, int]:
    """A LangChain ``usage_metadata`` as genai-prices ``Usage`` fields (zeros left out).

    LangChain's ``input_tokens`` counts every input token, cache reads and writes
    included, as genai-prices' does.

    Example:
        ```python
        usage_counts({"input_tokens": 10_000, "output_tokens": 50,
                      "input_token_details": {"cache_read": 9_000}})
        # {"input_tokens": 10000, "output_tokens": 50, "cache_read_tokens": 9000}
        ```
    """
    counts = {
        "input_tokens": int(usage.get("input_tokens") or 0),
        "output_tokens": int(usage.get("output_tokens") or 0),
    }
    for group, key, field in _DETAILS:
        details = usage.get(group)
        if isinstance(details, Mapping):
            value = details.get(key)
            if isinstance(value, int) and value > 0:
                counts[field] = value
    return counts


def _price_number(name: str, value: Any) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, (int, float, Decimal)):
        raise ConfigurationError(
            f"Price.{name} must be a number of US dollars per million tokens, got {value!r}. "
            "Pass e.g. Price(input_per_mtok=0.15, output_per_mtok=0.6)."
        )
    number = Decimal(str(value))
    if not number.is_finite() or number < 0:
        raise ConfigurationError(
            f"Price.{name} must be a finite number >= 0 (USD per million tokens), got "
            f"{value!r}. Pass e.g. Price(input_per_mtok=0.15, output_per_mtok=0.6)."
        )
    return number


@lru_cache(maxsize=1024)
def _decimal(value: Any) -> Decimal:
    return Decimal(str(value))


@dataclass(frozen=True, slots=True, kw_only=True)
class Price:
    """A model's price in US dollars per million tokens, for models genai-prices lacks.

    Give it in the policy, keyed by the model name the chat model reports
    (``ls_model_name``): ``Budget(prices={"my-model": Price(...)})``. A policy price takes
    precedence over genai-prices. Since a dollar per million tokens is a micro-dollar per
    token, a call costs ``uncached input * input_per_mtok + cache reads *
    cache_read_per_mtok + cache writes * cache_write_per_mtok + output * output_per_mtok``
    micro-dollars, rounded up to a whole micro-dollar.

    Example:
        ```python
        Budget(usd=2, prices={"llama3.1:8b": Price(input_per_mtok=0, output_per_mtok=0)})
        Price(input_per_mtok=3, output_per_mtok=15, cache_read_per_mtok=0.3,
              cache_write_per_mtok=3.75)
        ```
    """

    input_per_mtok: float
    """USD per million input tokens."""
    output_per_mtok: float
    """USD per million output tokens."""
    cache_read_per_mtok: float | None = None
    """USD per million input tokens read from the provider's prompt cache; None: as
    ``input_per_mtok``."""
    cache_write_per_mtok: float | None = None
    """USD per million input tokens written to the provider's prompt cache; None: as
    ``input_per_mtok``."""

    def __post_init__(self) -> None:
        _price_number("input_per_mtok", self.input_per_mtok)
        _price_number("output_per_mtok", self.output_per_mtok)
        for name in ("cache_read_per_mtok", "cache_write_per_mtok"):
            if getattr(self, name) is not None:
                _price_number(name, getattr(self, name))

    def micros(self, input_tokens: int, output_tokens: int) -> int:
        """The price of a call with input and output tokens only, in micro-dollars,
        rounded up.

        Example:
            ```python
            Price(input_per_mtok=0.15, output_per_mtok=0.6).micros(1000, 500)  # 450
            ```
        """
        total = (
            _decimal(self.input_per_mtok) * input_tokens
            + _decimal(self.output_per_mtok) * output_tokens
        )
        return ceil_micros(total)

    def usage_micros(self, usage: UsageCounts) -> int:
        """The price of a call's full usage (genai-prices ``Usage`` fields)."""
        read = usage.get("cache_read_tokens", 0)
        write = usage.get("cache_write_tokens", 0)
        inp = _decimal(self.input_per_mtok)
        read_price = inp if self.cache_read_per_mtok is None else _decimal(self.cache_read_per_mtok)
        write_price = (
            inp if self.cache_write_per_mtok is None else _decimal(self.cache_write_per_mtok)
        )
        total = (
            inp * max(usage.get("input_tokens", 0) - read - write, 0)
            + read_price * read
            + write_price * write
            + _decimal(self.output_per_mtok) * usage.get("output_tokens", 0)
        )
        return ceil_micros(total)


def pricer(
    model: str, *, provider: str | None = None, prices: Mapping[str, Price] | None = None
) -> Pricer:
    """The function that prices one model's calls by input and output tokens:
    ``pricer(model, provider=..., prices=...)(input_tokens, output_tokens)``, micro-dollars
    rounded up.

    A meter looks it up once per step and model, then prices each call's projection with
    it: a policy price, or genai-prices' (see ``_genai``).

    Raises:
        ConfigurationError: Neither ``prices`` nor genai-prices knows the model.
    """
    if prices:
        custom = prices.get(model)
        if custom is not None:
            return custom.micros
    return genai_pricer(provider, model)


def price_usage(
    model: str,
    usage: UsageCounts,
    *,
    provider: str | None = None,
    prices: Mapping[str, Price] | None = None,
) -> int:
    """The price of a call's full usage (genai-prices ``Usage`` fields, see
    :func:`usage_counts`), in micro-dollars rounded up."""
    custom = prices.get(model) if prices else None
    if custom is not None:
        return custom.usage_micros(usage)
    if usage.keys() <= {"input_tokens", "output_tokens"}:
        return genai_pricer(provider, model)(
            usage.get("input_tokens", 0), usage.get("output_tokens", 0)
        )
    return genai_usage_micros(provider, model, usage)


def price_call(
    model: str,
    usage: Mapping[str, Any],
    *,
    provider: str | None = None,
    prices: Mapping[str, Price] | None = None,
) -> int:
    """The price of one model call in micro-dollars (USD * 1e6), rounded up.

    ``usage`` is the answer's LangChain ``usage_metadata`` (details such as cache reads
    and writes included). A price in ``prices`` (keyed by model name) takes precedence;
    otherwise genai-prices' ``calc_price`` at the current time, rounded up to a whole
    micro-dollar (so recorded spend is never below the real price). ``provider`` is the
    LangChain ``ls_provider`` (``"openai"``, ``"anthropic"``, ``"google_genai"``,
    ``"azure"``...; genai-prices matches these to its own ids); None lets genai-prices
    guess the provider from the model name.

    Args:
        model: The model name as the chat model reports it (``"gpt-4o-mini"``; dated
            names like ``"gpt-4o-mini-2024-07-18"`` match too).
        usage: The call's ``usage_metadata`` (``input_tokens``, ``output_tokens``, and
            optionally ``input_token_details`` / ``output_token_details``).
        provider: The provider id, or None.
        prices: Prices from the policy (``Budget.prices``).

    Returns:
        Micro-dollars, an int.

    Raises:
        ConfigurationError: Neither ``prices`` nor genai-prices knows the model; the
            message names the provider and model and how to give a price.

    Example:
        ```python
        price_call("gpt-4o-mini", {"input_tokens": 1000, "output_tokens": 500})  # 450
        price_call("claude-sonnet-4-5", {"input_tokens": 10_000, "output_tokens": 100,
                   "input_token_details": {"cache_read": 9_000}}, provider="anthropic")
        ```
    """
    return price_usage(model, usage_counts(usage), provider=provider, prices=prices)
