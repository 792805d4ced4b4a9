"""Counting a model call's input tokens, each message counted once while it lives.

``count_tokens_approximately`` (with its defaults: no usage-metadata scaling) rounds up per
message, so the count of a list of messages is the sum of the counts of each message, plus
the tools' part counted once. A conversation's earlier messages are the same objects from
one model call to the next (the graph state keeps them), so a :class:`TokenCounter` keeps
each message's count and every call counts only its new messages.

The counter holds no message: an entry keeps a weak reference to its message, and the ids
and sizes of the fields the count was computed from (``content``, ``name`` and the one
other field the count reads for its class: an AI message's ``tool_calls``, a tool
message's ``tool_call_id``, a chat message's ``role``, a system message's
``additional_kwargs``); a message whose fields were replaced, or grew or shrank, is
counted again. A change made *inside* a field that keeps its size (a tool call's ``args``
dict edited in place; a string replaced by another of the same length that happens to get
the old one's address) is not seen: the message keeps its old count while it lives. The
count is the projection's estimate only: what a call spent always comes from its
``usage_metadata``.

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

__all__ = ("TokenCounter", "shared_counter")

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


def _size(value: Any) -> int:
    """A field value's size (-1 when it has none, e.g. None)."""
    try:
        return len(value)
    except TypeError:
        return -1


class _Entry(NamedTuple):
    """A message's count, and what identifies the fields it was computed from."""

    ref: weakref.ref[BaseMessage]
    content_id: int
    content_size: int
    name_id: int
    field: str | None
    value_id: int
    value_size: int
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
            # Inline, not a call per message: a conversation is re-sent on every call.
            if entry is not None and entry.ref() is message:
                content = message.content
                if (
                    id(content) == entry.content_id
                    and len(content) == entry.content_size
                    and id(message.name) == entry.name_id
                ):
                    field = entry.field
                    if field is None:
                        total += entry.tokens
                        continue
                    value = getattr(message, field)
                    if id(value) == entry.value_id and (
                        entry.value_size < 0 or len(value) == entry.value_size
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
        value = getattr(message, field) if field is not None else None
        entry = _Entry(
            weakref.ref(message),
            id(message.content),
            _size(message.content),
            id(message.name),
            field,
            id(value),
            _size(value),
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


_SHARED = TokenCounter()


def shared_counter() -> TokenCounter:
    """The process's token counter, which meters use unless given one.

    One per process on purpose: a conversation's messages are counted once whichever run,
    step or thread sends them again (a chat thread resends its history every turn). It
    holds weak references and counts, never a message, and is bounded; a count is a pure
    function of its message, so sharing it decides nothing about any run.
    """
    return _SHARED
