"""genai-prices, looked up once per model and kept in integers.

``genai_prices.calc_price`` costs ~70 µs a call (measured: 72 µs for ``gpt-4o`` on these
machines), and a meter prices each model call twice (the projection before, the usage
after), where the rest of the meter costs a few µs: so the price of a call with input and
output tokens only is computed from an affine function fitted to ``calc_price`` itself,
``c + a * input_tokens + b * output_tokens`` per (active price set, input-token tier),
checked against ``calc_price`` at a typical call before use (a price that does not fit
falls back to ``calc_price`` on every call) and evaluated in integers over one common
denominator (the terms are exact decimal fractions): 0.24 µs a call. genai-prices' tiers
are "cliff" tiers keyed by the call's input tokens, so within one tier such a price is
exactly affine. Time-dependent prices (DeepSeek's off-peak hours, announced price changes)
pick the active price set on every call, as ``calc_price`` does. A call whose usage has
more than input and output tokens (cache reads and writes, audio) is priced by
``calc_price`` on its full usage.

Everything derived is held by one :class:`_Catalog` per genai-prices snapshot (an
``UpdatePrices`` refresh starts a new one), bounded: keys are provider and model names,
never a caller's objects.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from decimal import ROUND_CEILING, Decimal
from functools import partial
from typing import Any, cast

from ..errors import ConfigurationError

__all__ = ("Pricer", "genai_pricer", "genai_usage_micros")

Pricer = Callable[[int, int], int]
"""Prices one model's calls: ``(input_tokens, output_tokens) -> micro-dollars``."""

_MICROS = Decimal(1_000_000)
_MAX_MODELS = 512
"""Models a catalog keeps (their entries, tiers, rates and pricers), oldest out first."""

_Affine = tuple[Decimal, Decimal, Decimal]
"""(per input token, per output token, per call), in micro-dollars."""

_Rate = tuple[int, int, int, int]
"""An affine price in integers: a call costs ``(a * input + b * output + c) / d``
micro-dollars (exact: each term of ``_Affine`` is a decimal fraction over ``d``)."""

_Resolved = tuple[Any, Any, Any]
"""genai-prices' (provider, model info, fixed model price or None if time-dependent)."""

_MISSING = object()


def ceil_micros(value: Decimal) -> int:
    """A decimal amount of micro-dollars, rounded up to a whole one."""
    return int(value.to_integral_value(rounding=ROUND_CEILING))


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


class _Catalog:
    """What was looked up and fitted from one genai-prices snapshot, bounded."""

    __slots__ = ("lib", "models", "pricers", "rates", "snapshot", "starts")

    def __init__(self, lib: _Lib, snapshot: Any) -> None:
        self.lib = lib
        self.snapshot = snapshot
        self.models: OrderedDict[tuple[str | None, str], _Resolved | str] = OrderedDict()
        self.pricers: OrderedDict[tuple[str | None, str], Pricer] = OrderedDict()
        # Keyed by id() of a price set of this snapshot: the snapshot holds them alive.
        self.starts: dict[int, tuple[int, ...]] = {}
        self.rates: dict[tuple[int, int], _Rate | None] = {}

    def resolve(self, provider: str | None, model: str) -> _Resolved:
        """genai-prices' entry for a call's model; ConfigurationError if unknown."""
        key = (provider, model)
        found = self.models.get(key)
        if found is None:
            lib = self.lib
            try:
                calc = lib.calc_price(
                    lib.Usage(input_tokens=0, output_tokens=0),
                    model_ref=model,
                    provider_id=provider,
                )
                info = calc.model
                # A single price set (not a list of time-conditional ones) is what
                # ``info.get_prices(when)`` returns at any time: no clock needed per call.
                fixed = info.prices if isinstance(info.prices, lib.ModelPrice) else None
                found = (calc.provider, info, fixed)
            except LookupError as exc:
                found = _unknown(provider, model, exc)
            self.models[key] = found
            if len(self.models) > _MAX_MODELS:
                self.models.popitem(last=False)
        if isinstance(found, str):
            raise ConfigurationError(found)
        return found

    def tier_starts(self, model_price: Any) -> tuple[int, ...]:
        key = id(model_price)
        starts = self.starts.get(key)
        if starts is None:
            found: set[int] = set()
            for value in vars(model_price).values():
                if isinstance(value, self.lib.TieredPrices):
                    found.update(tier.start for tier in value.tiers)
            starts = self.starts[key] = tuple(sorted(found))
        return starts

    def exact(self, info: Any, provider: Any, i: int, o: int, when: datetime) -> Decimal:
        usage = self.lib.Usage(input_tokens=i, output_tokens=o)
        calc = info.calc_price(usage, provider, genai_request_timestamp=when)
        return Decimal(calc.total_price) * _MICROS

    def _fit(
        self, info: Any, provider: Any, when: datetime, low: int, high: int | None, i: int, o: int
    ) -> _Affine | None:
        """The affine price on input tokens in [low, high], checked at (i, o); None if not."""
        if high is not None and low + 1 > high:
            return None
        base = self.exact(info, provider, low, 0, when)
        per_in = self.exact(info, provider, low + 1, 0, when) - base
        per_out = self.exact(info, provider, low, 1, when) - base
        fixed = base - per_in * low
        if fixed + per_in * i + per_out * o != self.exact(info, provider, i, o, when):
            return None
        return per_in, per_out, fixed

    def rate(
        self,
        info: Any,
        prov: Any,
        model_price: Any,
        bracket: int,
        i: int,
        o: int,
        when: datetime | None,
    ) -> _Rate | None:
        """The affine price of one tier of a price set, fitted and checked at (i, o), kept.
        ``when``: the time ``model_price`` was picked for (None: one price set, any time)."""
        key = (id(model_price), bracket)
        rate = self.rates.get(key, _MISSING)
        if rate is not _MISSING:
            return cast("_Rate | None", rate)
        starts = self.tier_starts(model_price)
        low = 0 if bracket == 0 else starts[bracket - 1] + 1
        high = starts[bracket] if bracket < len(starts) else None
        when = when or datetime.now(tz=timezone.utc)
        made = _as_rate(self._fit(info, prov, when, low, high, i, o))
        if len(self.rates) > 4 * _MAX_MODELS:
            self.rates.clear()
        self.rates[key] = made
        return made

    def micros(self, provider: str | None, model: str, i: int, o: int) -> int:
        """The price of a call with ``i`` input and ``o`` output tokens."""
        prov, info, fixed = self.resolve(provider, model)
        when = None
        if fixed is not None:
            model_price = fixed
        else:
            when = datetime.now(tz=timezone.utc)
            model_price = info.get_prices(when)
        # genai-prices picks a tier when input_tokens > tier.start ("cliff" tiers).
        bracket = sum(1 for start in self.tier_starts(model_price) if i > start)
        rate = self.rate(info, prov, model_price, bracket, i, o, when)
        if rate is None:
            return ceil_micros(self.exact(info, prov, i, o, when or datetime.now(tz=timezone.utc)))
        a, b, c, d = rate
        return -(-(a * i + b * o + c) // d)  # the ceiling of a fraction, in integers

    def pricer(self, provider: str | None, model: str) -> Pricer:
        """The function that prices this model's calls (see :func:`genai_pricer`)."""
        key = (provider, model)
        made = self.pricers.get(key)
        if made is not None:
            return made
        prov, info, fixed = self.resolve(provider, model)
        if fixed is not None and not self.tier_starts(fixed):
            # One price set, one tier: the rate micros() uses, checked at a typical call.
            rate = self.rate(info, prov, fixed, 0, 12_345, 678, None)
            if rate is not None:
                made = _affine_pricer(*rate)
        if made is None:
            made = partial(_micros_now, provider, model)
        self.pricers[key] = made
        if len(self.pricers) > _MAX_MODELS:
            self.pricers.popitem(last=False)
        return made


def _as_rate(affine: _Affine | None) -> _Rate | None:
    """The affine price over one integer denominator: integer arithmetic per call."""
    if affine is None:
        return None
    ratios = [term.as_integer_ratio() for term in affine]
    denominator = math.lcm(*(d for _, d in ratios))
    a, b, c = (n * (denominator // d) for n, d in ratios)
    return a, b, c, denominator


def _affine_pricer(a: int, b: int, c: int, d: int) -> Pricer:
    def micros(input_tokens: int, output_tokens: int) -> int:
        return -(-(a * input_tokens + b * output_tokens + c) // d)  # rounded up, in integers

    return micros


class _Current:
    """The catalog of the snapshot genai-prices serves now (one per process: it caches
    public price data keyed by model name, and decides nothing about any run)."""

    __slots__ = ("catalog", "lib")

    def __init__(self) -> None:
        self.lib: _Lib | None = None
        self.catalog: _Catalog | None = None

    def get(self) -> _Catalog:
        lib = self.lib
        if lib is None:
            lib = self.lib = _Lib()
        snapshot = lib.get_snapshot()
        catalog = self.catalog
        if catalog is None or catalog.snapshot is not snapshot:
            # Prices were updated (genai_prices.UpdatePrices): start afresh.
            catalog = self.catalog = _Catalog(lib, snapshot)
        return catalog


_current = _Current()


def _micros_now(provider: str | None, model: str, i: int, o: int) -> int:
    return _current.get().micros(provider, model, i, o)


def genai_pricer(provider: str | None, model: str) -> Pricer:
    """The function that prices one genai-prices model's calls by input and output tokens:
    for a model with a single price set and no tiers (most models) the model's affine
    price in integers; otherwise a lookup on every call (time-dependent prices pick the
    active price set each time).

    Raises:
        ConfigurationError: genai-prices does not know the model.
    """
    return _current.get().pricer(provider, model)


def genai_usage_micros(provider: str | None, model: str, usage: Mapping[str, int]) -> int:
    """genai-prices' own ``calc_price`` on a call's full usage (genai-prices ``Usage``
    fields: ``input_tokens`` (all of them, cached included), ``cache_read_tokens``,
    ``cache_write_tokens``, ``output_tokens``, ``input_audio_tokens``,
    ``cache_audio_read_tokens``, ``output_audio_tokens``), rounded up to a micro-dollar."""
    catalog = _current.get()
    prov, info, _ = catalog.resolve(provider, model)
    calc = info.calc_price(
        catalog.lib.Usage(**usage), prov, genai_request_timestamp=datetime.now(tz=timezone.utc)
    )
    return ceil_micros(Decimal(calc.total_price) * _MICROS)
