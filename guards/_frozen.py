"""Plain-data helpers for policies: an immutable, hashable, picklable mapping and the
number checks every policy shares. A leaf module (imports only ``errors``).

Policies are values: frozen, hashable, picklable and comparable, so they can be cached,
sent to another process and compared in tests. ``types.MappingProxyType`` is none of
hashable and picklable, hence :class:`FrozenDict`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from typing import Any, TypeVar

from .errors import ConfigurationError

__all__ = ("FrozenDict", "positive_int", "positive_number", "positive_usd")

K = TypeVar("K")
V = TypeVar("V")


class FrozenDict(Mapping[K, V]):
    """An immutable mapping that hashes, pickles and compares by its items.

    Example:
        ```python
        limits = FrozenDict({"researcher": 5})
        assert hash(limits) == hash(FrozenDict({"researcher": 5}))
        ```
    """

    __slots__ = ("_data", "_hash")

    def __init__(self, data: Mapping[K, V] | None = None) -> None:
        self._data: dict[K, V] = dict(data or {})
        self._hash: int | None = None

    def __getitem__(self, key: K) -> V:
        return self._data[key]

    def __iter__(self) -> Iterator[K]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: object) -> bool:
        return key in self._data

    def get(self, key: K, default: Any = None) -> Any:  # type: ignore[override]
        """``dict.get``: one lookup (``Mapping.get`` goes through ``__getitem__``)."""
        return self._data.get(key, default)

    def __hash__(self) -> int:
        if self._hash is None:
            self._hash = hash(frozenset(self._data.items()))
        return self._hash

    def __eq__(self, other: object) -> bool:
        if isinstance(other, FrozenDict):
            return self._data == other._data
        if isinstance(other, Mapping):
            return self._data == dict(other)
        return NotImplemented

    def __reduce__(self) -> tuple[Any, ...]:
        return (FrozenDict, (self._data,))

    def __repr__(self) -> str:
        return f"FrozenDict({self._data!r})"


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
