"""Checked values shared by the journal and pool cores, whatever store writes them.

The stores keep amounts in the integer columns :data:`SPEND_COLUMNS`; every value a caller
passes is checked here before any store sees it, with the same messages for the journal
(``_journal_core.py``) and the shared budgets (``_pool_core.py``). Nothing here does I/O.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sanegraph.guards import ConfigurationError
from sanegraph.guards.budget import Spend

__all__ = (
    "SPEND_COLUMNS",
    "nonempty_str",
    "optional_str",
    "spend_columns",
    "spend_in",
    "spend_of",
    "spend_row",
    "whole_number",
)

SPEND_COLUMNS = ("usd_micros", "input_tokens", "output_tokens")
"""The integer columns a :class:`~sanegraph.guards.budget.Spend` is stored in, in order."""

_SPEND_EXAMPLE = "Pass e.g. Spend(usd_micros=1_500, input_tokens=1_000, output_tokens=200)."


def whole_number(value: Any, field: str, *, remedy: str) -> int:
    """``value`` if it is an int >= 0 (not a bool); else a ``ConfigurationError``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigurationError(f"{field} must be a whole number >= 0, got {value!r}. {remedy}")
    return value


def nonempty_str(value: Any, field: str) -> str:
    """``value`` if it is a non-empty str; else a ``ConfigurationError``."""
    if not isinstance(value, str) or not value:
        raise ConfigurationError(f"{field} must be a non-empty str, got {value!r}.")
    return value


def optional_str(value: Any, field: str) -> str | None:
    """None, or ``value`` checked by :func:`nonempty_str`."""
    return None if value is None else nonempty_str(value, field)


def spend_row(spend: Spend, what: str) -> dict[str, int]:
    """``{usd_micros, input_tokens, output_tokens}`` of ``spend``, checked (``what`` names
    the argument in the message)."""
    row = {}
    for field in SPEND_COLUMNS:
        if not hasattr(spend, field):
            raise ConfigurationError(
                f"{what} must have usd_micros, input_tokens and output_tokens, got "
                f"{type(spend).__name__}. {_SPEND_EXAMPLE}"
            )
        row[field] = whole_number(getattr(spend, field), f"{what}.{field}", remedy=_SPEND_EXAMPLE)
    return row


def spend_of(values: Sequence[Any] | None) -> Spend:
    """The ``Spend`` of values in :data:`SPEND_COLUMNS` order (None, or NULL, counts 0)."""
    usd, inp, out = values or (0, 0, 0)
    return Spend(usd_micros=int(usd or 0), input_tokens=int(inp or 0), output_tokens=int(out or 0))


def spend_in(row: Mapping[str, Any], prefix: str = "") -> Spend:
    """The ``Spend`` a row holds in the columns ``prefix + SPEND_COLUMNS``."""
    return Spend(**{field: int(row[prefix + field]) for field in SPEND_COLUMNS})


def spend_columns(spend: Spend, prefix: str = "") -> dict[str, int]:
    """``{prefix + column: count}`` of ``spend``: the columns :func:`spend_in` reads."""
    return {prefix + field: getattr(spend, field) for field in SPEND_COLUMNS}
