"""Plain-data helpers for policies: an immutable, hashable, picklable mapping and the
number checks every policy shares. A leaf module (imports only ``errors``).

Policies are values: frozen, hashable, picklable and comparable, so they can be cached,
sent to another process and compared in tests. ``types.MappingProxyType`` is none of
hashable and picklable, hence :class:`FrozenDict`.
"""

from __future__ import annotations

import math
from typing import Any, NoReturn, TypeVar

from .errors import ConfigurationError

__all__ = ("FrozenDict", "positive_int", "positive_number", "positive_usd")

K = TypeVar("K")
V = TypeVar("V")


class FrozenDict(dict[K, V]):
    """A read-only ``dict`` that hashes, pickles and compares by its items.

    A ``dict`` subclass so that reads run at C speed (policies are read on every step);
    every method that would change it raises ``TypeError``.

    Example:
        ```python
        limits = FrozenDict({"researcher": 5})
        assert hash(limits) == hash(FrozenDict({"researcher": 5}))
        ```
    """

    __slots__ = ()

    def _readonly(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise TypeError("a policy's mapping is read-only: build a new policy instead")

    __setitem__ = __delitem__ = _readonly
    clear = pop = popitem = setdefault = update = _readonly  # type: ignore[assignment]
    __ior__ = _readonly  # type: ignore[assignment]

    def __hash__(self) -> int:  # type: ignore[override]
        return hash(frozenset(self.items()))

    def __reduce__(self) -> tuple[Any, ...]:
        return (FrozenDict, (dict(self),))

    def __repr__(self) -> str:
        return f"FrozenDict({dict.__repr__(self)})"


def positive_int(name: str, value: Any, remedy: str) -> int:
    """``value`` if it is a whole number >= 1 (not a bool); else a ConfigurationError."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigurationError(f"{name} must be a whole number >= 1, got {value!r}. {remedy}")
    return value


def positive_number(name: str, value: Any, unit: str, remedy: str) -> float:
    """``value`` if it is a finite number > 0 (not a bool); else a ConfigurationError."""
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ConfigurationError(f"{name} must be a positive {unit}, got {value!r}. {remedy}")
    return value


def positive_usd(name: str, value: Any, remedy: str) -> float:
    """``value`` if it is a positive, finite number of US dollars."""
    return positive_number(name, value, "number of US dollars", remedy)
