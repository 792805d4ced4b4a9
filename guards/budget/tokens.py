"""Counting a model call's input tokens, each message counted once while it lives.

``count_tokens_approximately`` (with its defaults: no usage-metadata scaling) rounds up per
message, so the count of a list of messages is the sum of the counts of each message, plus
the tools' part counted once. A conversation's earlier messages are the same objects from
one model call to the next (the graph state keeps them), so a :class:`TokenCounter` keeps
each message's count and every call counts only its new messages.

The counter holds no message: an entry keeps a weak reference to its message, the ids and
sizes of the fields the count was computed from (``content``, ``name`` and the one other
field the count reads for its class: an AI message's ``tool_calls``, a tool message's
``tool_call_id``, a chat message's ``role``, a system message's ``additional_kwargs``), and
for string content its hash; a message whose fields were replaced is counted again. A
change made *inside* a mutable field (a tool call's ``args`` dict edited in place) is not
seen: the message keeps its old count while it lives. The count is the projection's
estimate only: what a call spent always comes from its ``usage_metadata``.

Measured reason for the cache (bench/budget.py --loop): re-counting a 40-message
conversation on every call of an agent's tool loop costs more than the rest of the meter.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Sequence
from functools import lru_cache
from typing import Any, NamedTuple

from langchain_core.messages import AIMessage, BaseMessage, ChatMessage, SystemMessage, ToolMessage
from langchain_core.messages.utils import count_tokens_approximately

__all__ = ("TokenCounter",)

_EXTRA_FIELDS = (
    (AIMessage, "tool_calls"),
    (ToolMessage, "tool_call_id"),
    (ChatMessage, "role"),
    (SystemMessage, "additional_kwargs"),
)


@lru_cache(maxsize=64)
def _extra_field(cls: type) -> str | None:
    """The field the count reads for a message class besides content and name."""
    return next((name for base, name in _EXTRA_FIELDS if issubclass(cls, base)), None)


def _shape(value: Any) -> tuple[int, int, int]:
    """What identifies a field's value without holding it: id, size, and for a string its
    hash (cached by the string itself, so cheap after the first time)."""
    if value is None:
        return (0, -1, 0)
    if isinstance(value, str):
        return (id(value), len(value), hash(value))
    try:
        return (id(value), len(value), 0)
    except TypeError:
        return (id(value), -1, 0)


class _Entry(NamedTuple):
    ref: weakref.ref[BaseMessage]
    content: tuple[int, int, int]
    name: tuple[int, int, int]
    field: str | None
    value: tuple[int, int, int]
    tokens: int


class TokenCounter:
    """``count_tokens_approximately`` for the messages of model calls, each message
    counted once while it lives (see the module docstring).

    Bounded: at most ``max_entries`` messages; entries of messages that died are swept
    first, then the oldest go.

    Example:
        ```python
        counter = TokenCounter()
        history = [HumanMessage("hi"), AIMessage("hello")]
        assert counter.count(history) == count_tokens_approximately(history)
        ```
    """

    __slots__ = ("_entries", "_lock", "_tools", "max_entries")

    def __init__(self, *, max_entries: int = 4096) -> None:
        self.max_entries = max_entries
        self._entries: dict[int, _Entry] = {}
        self._tools: dict[tuple[int, ...], int] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def count(self, messages: Sequence[BaseMessage]) -> int:
        """``count_tokens_approximately(messages)``, counting only messages not seen."""
        total = 0
        get = self._entries.get
        for message in messages:
            entry = get(id(message))
            if (
                entry is not None
                and entry.ref() is message
                and entry.content == _shape(message.content)
                and entry.name == _shape(message.name)
                and (entry.field is None or entry.value == _shape(getattr(message, entry.field)))
            ):
                total += entry.tokens
                continue
            total += self._count_one(message)
        return total

    def _count_one(self, message: Any) -> int:
        tokens = count_tokens_approximately([message])
        if not isinstance(message, BaseMessage):
            return tokens
        field = _extra_field(type(message))
        entry = _Entry(
            weakref.ref(message),
            _shape(message.content),
            _shape(message.name),
            field,
            _shape(getattr(message, field)) if field is not None else (0, -1, 0),
            tokens,
        )
        with self._lock:
            entries = self._entries
            entries[id(message)] = entry
            if len(entries) > self.max_entries:
                self._shrink()
        return tokens

    def _shrink(self) -> None:
        """Sweep entries of dead messages; then drop the oldest (lock held)."""
        entries = self._entries
        for key in [k for k, e in entries.items() if e.ref() is None]:
            del entries[key]
        excess = len(entries) - self.max_entries * 3 // 4
        if excess > 0:
            for key in list(entries)[:excess]:
                del entries[key]

    def tools(self, tools: list[Any]) -> int:
        """``count_tokens_approximately([], tools=tools)``: the tools' part of a call.

        Kept per list and tool objects (a model bound to its tools once), by identity and
        size only, so no tool schema is held; a tool dict edited in place keeps its count.
        """
        key = (id(tools), len(tools), *map(id, tools))
        found = self._tools.get(key)
        if found is not None:
            return found
        tokens = count_tokens_approximately([], tools=tools)
        with self._lock:
            if len(self._tools) >= 64:
                self._tools.clear()
            self._tools[key] = tokens
        return tokens
