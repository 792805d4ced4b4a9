"""Model prices for budgets, and the budget types the policy module needs.

Prices come from ``genai-prices`` (pydantic's maintained price database), never from a
hand-written table; a policy may add prices for models it does not list (:class:`Price`).

Pricing runs twice per model call (the intake projection and the actual usage), and a
``genai_prices.calc_price`` call costs ~150 µs, so lookups are cached: the model's entry is
resolved once per (provider, model), and its price is cached as an affine function
``c + a * input_tokens + b * output_tokens`` per (active price set, input-token tier).
genai-prices' tiers are "cliff" tiers keyed by the call's input tokens, so within one tier
the price of a call with only input and output tokens is exactly affine; each cached
function is derived from ``calc_price`` itself and checked against it before use (a price
that does not fit falls back to ``calc_price`` on every call), and evaluated in integers
over one common denominator (the terms are exact decimal fractions). Time-dependent prices
(DeepSeek's off-peak hours, announced price changes) pick the active price set on every
call, as ``calc_price`` does; a model with a single price set skips the clock. A meter
prices through :func:`pricer`, looked up once per step and model: for a model with one
price set and no tiers it is that affine function alone.

This module imports nothing from the rest of the package but ``errors``, so that
``policy`` can use :class:`Price` while ``budget`` imports ``policy``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from decimal import ROUND_CEILING, Decimal
from functools import partial
from typing import Any, cast

from ..errors import ConfigurationError

__all__ = ("Price", "Pricer", "price_call", "pricer")


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


@dataclass(frozen=True, slots=True, kw_only=True)
class Price:
    """A model's price in US dollars per million tokens, for models genai-prices lacks.

    Give it in the policy, keyed by the model name the chat model reports
    (``ls_model_name``): ``Budget(prices={"my-model": Price(...)})``. A policy price takes
    precedence over genai-prices. Since a dollar per million tokens is a micro-dollar per
    token, a call costs ``input_tokens * input_per_mtok + output_tokens * output_per_mtok``
    micro-dollars, rounded up to a whole micro-dollar.

    Example:
        ```python
        Budget(usd=2, prices={"llama3.1:8b": Price(input_per_mtok=0, output_per_mtok=0)})
        ```
    """

    input_per_mtok: float
    """USD per million input tokens."""
    output_per_mtok: float
    """USD per million output tokens."""

    def __post_init__(self) -> None:
        _price_number("input_per_mtok", self.input_per_mtok)
        _price_number("output_per_mtok", self.output_per_mtok)

    def micros(self, input_tokens: int, output_tokens: int) -> int:
        """The price of a call in micro-dollars, rounded up.

        Example:
            ```python
            Price(input_per_mtok=0.15, output_per_mtok=0.6).micros(1000, 500)  # 450
            ```
        """
        total = (
            _decimal(self.input_per_mtok) * input_tokens
            + _decimal(self.output_per_mtok) * output_tokens
        )
        return _ceil(total)


_DECIMALS: dict[Any, Decimal] = {}


def _decimal(value: Any) -> Decimal:
    number = _DECIMALS.get(value)
    if number is None:
        number = _DECIMALS[value] = Decimal(str(value))
    return number


def _ceil(value: Decimal) -> int:
    return int(value.to_integral_value(rounding=ROUND_CEILING))


_MICROS = Decimal(1_000_000)

# -- genai-prices, cached --------------------------------------------------------------

_Affine = tuple[Decimal, Decimal, Decimal]
"""(per input token, per output token, per call), in micro-dollars."""

_Rate = tuple[int, int, int, int]
"""An affine price in integers: a call costs ``(a * input + b * output + c) / d``
micro-dollars (exact: each term of ``_Affine`` is a decimal fraction over ``d``)."""

_Resolved = tuple[Any, Any, Any]
"""genai-prices' (provider, model info, fixed model price or None if time-dependent)."""

_snapshot: Any = None
_models: dict[tuple[str | None, str], _Resolved | str] = {}
_starts: dict[int, tuple[int, ...]] = {}
_rates: dict[tuple[int, int], _Rate | None] = {}
_MISSING = object()
"""A ``_rates`` miss (None is a cached "does not fit")."""


def _genai_version() -> str:
    try:
        import genai_prices

        return str(genai_prices.__version__)
    except Exception:  # pragma: no cover - the version is informative only
        return "unknown"


def _unknown(provider: str | None, model: str, error: LookupError) -> str:
    text = str(error)
    if provider is None:
        what = (
            f"No price for model {model!r} (no provider reported): genai-prices cannot "
            "match the model name to a provider"
        )
    elif "provider" in text and "model_ref" not in text:
        what = (
            f"No price for model {model!r} from provider {provider!r}: genai-prices does "
            f"not know the provider {provider!r}"
        )
    else:
        what = (
            f"No price for model {model!r} from provider {provider!r}: genai-prices does "
            "not list this model"
        )
    return (
        f"{what}. Give its price in the policy, in USD per million tokens: "
        f"Budget(prices={{{model!r}: Price(input_per_mtok=..., output_per_mtok=...)}}), or "
        f"upgrade genai-prices (installed: {_genai_version()}) if the model is new."
    )


class _Lib:
    """genai-prices, imported on first use: importing it takes ~0.2 s."""

    __slots__ = ("ModelPrice", "TieredPrices", "Usage", "calc_price", "get_snapshot")

    def __init__(self) -> None:
        from genai_prices import Usage, calc_price
        from genai_prices.data_snapshot import get_snapshot
        from genai_prices.types import ModelPrice, TieredPrices

        self.Usage = Usage
        self.calc_price = calc_price
        self.get_snapshot = get_snapshot
        self.ModelPrice = ModelPrice
        self.TieredPrices = TieredPrices


_lib: _Lib | None = None


def _genai() -> _Lib:
    global _lib
    if _lib is None:
        _lib = _Lib()
    return _lib


def _resolve(provider: str | None, model: str) -> _Resolved:
    """genai-prices' entry for a call's model; ConfigurationError if unknown."""
    lib = _lib or _genai()
    global _snapshot
    snapshot = lib.get_snapshot()
    if snapshot is not _snapshot:
        # Prices were updated (genai_prices.UpdatePrices): forget everything derived.
        _models.clear()
        _starts.clear()
        _rates.clear()
        _snapshot = snapshot
    key = (provider, model)
    found = _models.get(key)
    if found is None:
        try:
            calc = lib.calc_price(
                lib.Usage(input_tokens=0, output_tokens=0), model_ref=model, provider_id=provider
            )
            info = calc.model
            # A single price set (not a list of time-conditional ones) is what
            # ``info.get_prices(when)`` returns at any time: no clock needed per call.
            fixed = info.prices if isinstance(info.prices, lib.ModelPrice) else None
            found = (calc.provider, info, fixed)
        except LookupError as exc:
            found = _unknown(provider, model, exc)
        _models[key] = found
    if isinstance(found, str):
        raise ConfigurationError(found)
    return found


def _tier_starts(model_price: Any) -> tuple[int, ...]:
    key = id(model_price)
    starts = _starts.get(key)
    if starts is None:
        tiered = _genai().TieredPrices
        found: set[int] = set()
        for value in vars(model_price).values():
            if isinstance(value, tiered):
                found.update(tier.start for tier in value.tiers)
        starts = _starts[key] = tuple(sorted(found))
    return starts


def _exact(info: Any, provider: Any, i: int, o: int, when: datetime) -> Decimal:
    usage = _genai().Usage(input_tokens=i, output_tokens=o)
    calc = info.calc_price(usage, provider, genai_request_timestamp=when)
    return Decimal(calc.total_price) * _MICROS


def _fit(
    info: Any, provider: Any, when: datetime, low: int, high: int | None, i: int, o: int
) -> _Affine | None:
    """The affine price on input tokens in [low, high], checked at (i, o); None if not."""
    if high is not None and low + 1 > high:
        return None
    base = _exact(info, provider, low, 0, when)
    per_in = _exact(info, provider, low + 1, 0, when) - base
    per_out = _exact(info, provider, low, 1, when) - base
    fixed = base - per_in * low
    if fixed + per_in * i + per_out * o != _exact(info, provider, i, o, when):
        return None
    return per_in, per_out, fixed


def _as_rate(affine: _Affine | None) -> _Rate | None:
    """The affine price over one integer denominator: integer arithmetic per call."""
    if affine is None:
        return None
    ratios = [term.as_integer_ratio() for term in affine]
    denominator = math.lcm(*(d for _, d in ratios))
    a, b, c = (n * (denominator // d) for n, d in ratios)
    return a, b, c, denominator


def _rate(
    info: Any,
    prov: Any,
    model_price: Any,
    starts: tuple[int, ...],
    bracket: int,
    i: int,
    o: int,
    when: datetime | None,
) -> _Rate | None:
    """The affine price of one tier of a price set, fitted and checked at (i, o), cached.
    ``when``: the time ``model_price`` was picked for (None: one price set, any time)."""
    low = 0 if bracket == 0 else starts[bracket - 1] + 1
    high = starts[bracket] if bracket < len(starts) else None
    when = when or datetime.now(tz=timezone.utc)
    rate = _rates[(id(model_price), bracket)] = _as_rate(_fit(info, prov, when, low, high, i, o))
    return rate


def _genai_micros(provider: str | None, model: str, i: int, o: int) -> int:
    prov, info, fixed = _resolve(provider, model)
    when = None
    if fixed is not None:
        model_price = fixed
    else:
        when = datetime.now(tz=timezone.utc)
        model_price = info.get_prices(when)
    starts = _starts.get(id(model_price))
    if starts is None:
        starts = _tier_starts(model_price)
    # genai-prices picks a tier when input_tokens > tier.start ("cliff" tiers).
    bracket = 0
    for start in starts:
        if i > start:
            bracket += 1
    rate = _rates.get((id(model_price), bracket), _MISSING)
    if rate is _MISSING:
        rate = _rate(info, prov, model_price, starts, bracket, i, o, when)
    if rate is None:
        return _ceil(_exact(info, prov, i, o, when or datetime.now(tz=timezone.utc)))
    a, b, c, d = cast(_Rate, rate)
    return -(-(a * i + b * o + c) // d)  # the ceiling of a fraction, in integers


Pricer = Callable[[int, int], int]
"""Prices one model's calls: ``(input_tokens, output_tokens) -> micro-dollars``."""

_pricers: dict[tuple[str | None, str], tuple[Any, Pricer]] = {}
"""(provider, model) -> (the genai-prices snapshot it was made from, its pricer)."""


def pricer(provider: str | None, model: str, prices: Mapping[str, Price] | None = None) -> Pricer:
    """The function that prices calls of one model: ``pricer(p, m, prices)(i, o) ==
    price_call(p, m, i, o, prices=prices)``.

    A meter looks it up once per step and model, then prices each call with one call of
    it: for a genai-prices model with a single price set and no tiers (most models) it is
    the model's affine price in integers; otherwise it runs :func:`price_call`'s lookup
    on every call (time-dependent prices pick the active price set each time). Made once
    per genai-prices snapshot (an ``UpdatePrices`` refresh makes new ones).

    Raises:
        ConfigurationError: Neither ``prices`` nor genai-prices knows the model.
    """
    if prices:
        custom = prices.get(model)
        if custom is not None:
            return custom.micros
    lib = _lib or _genai()
    snapshot = lib.get_snapshot()
    key = (provider, model)
    cached = _pricers.get(key)
    if cached is not None and cached[0] is snapshot:
        return cached[1]
    prov, info, fixed = _resolve(provider, model)
    made: Pricer | None = None
    if fixed is not None and not _tier_starts(fixed):
        # One price set, one tier: the rate _genai_micros uses, checked at a typical call.
        rate = _rates.get((id(fixed), 0), _MISSING)
        if rate is _MISSING:
            rate = _rate(info, prov, fixed, (), 0, 12_345, 678, None)
        if rate is not None:
            made = _affine_pricer(*cast(_Rate, rate))
    if made is None:
        made = partial(_genai_micros, provider, model)
    _pricers[key] = (snapshot, made)
    return made


def _affine_pricer(a: int, b: int, c: int, d: int) -> Pricer:
    def micros(input_tokens: int, output_tokens: int) -> int:
        return -(-(a * input_tokens + b * output_tokens + c) // d)  # rounded up, in integers

    return micros


def price_call(
    provider: str | None,
    model: str,
    input_tokens: int,
    output_tokens: int,
    *,
    prices: Mapping[str, Price] | None = None,
) -> int:
    """The price of one model call in micro-dollars (USD * 1e6), rounded up.

    A price in ``prices`` (keyed by model name) takes precedence; otherwise the price is
    genai-prices' ``calc_price(Usage(input_tokens=..., output_tokens=...),
    model_ref=model, provider_id=provider)`` at the current time, rounded up to a whole
    micro-dollar (so recorded spend is never below the real price). ``provider`` is the
    LangChain ``ls_provider`` (``"openai"``, ``"anthropic"``, ``"google_genai"``,
    ``"azure"``...; genai-prices matches these to its own ids); None lets genai-prices
    guess the provider from the model name.

    Args:
        provider: The provider id, or None.
        model: The model name as the chat model reports it (``"gpt-4o-mini"``; dated
            names like ``"gpt-4o-mini-2024-07-18"`` match too).
        input_tokens: Input tokens of the call.
        output_tokens: Output tokens of the call.
        prices: Prices from the policy (``Budget.prices``).

    Returns:
        Micro-dollars, an int.

    Raises:
        ConfigurationError: Neither ``prices`` nor genai-prices knows the model; the
            message names the provider and model and how to give a price.

    Example:
        ```python
        price_call("openai", "gpt-4o-mini", 1000, 500)  # 450 ($0.00045)
        ```
    """
    return pricer(provider, model, prices)(input_tokens, output_tokens)
