"""Counting a model call's input tokens, with per-message counts cached by identity."""

from __future__ import annotations

import operator
import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from langchain_core.messages import AIMessage, BaseMessage, ChatMessage, SystemMessage, ToolMessage
from langchain_core.messages.utils import count_tokens_approximately

__all__ = ("count_messages", "count_tools")


# # ``count_tokens_approximately`` (with its defaults: no usage-metadata scaling) rounds up
# per message, so the count of a list of messages is the sum of the counts of each message,
# plus the tools' part counted once. A conversation's earlier messages are the same objects
# from one model call to the next (the graph state keeps them), so each message's count is
# cached and every call counts only its new messages.
#
# Entries are keyed by ``id(message)`` and hold the message itself (its id cannot be reused
# while cached) and the objects the count was computed from: ``content`` (and its length),
# ``name`` and the one other field the count reads for its class (an AI message's
# ``tool_calls``, a tool message's ``tool_call_id``, a chat message's ``role``, a system
# message's ``additional_kwargs``), each compared by identity (and length) before the count
# is reused; anything else is counted again. Caveat: a change made *inside* one of those
# objects (a tool call's ``args`` dict, a content block's dict, mutated in place) is not
# seen, and the message keeps its old count until it leaves the cache. The count is the
# projection's estimate only: what a call spent always comes from its ``usage_metadata``.

_COUNT_CACHE_SIZE = 4096
"""Messages whose counts are kept: the oldest cached leaves first (bounded memory)."""

_COUNTS: OrderedDict[int, tuple[Any, ...]] = OrderedDict()
"""``id(message)`` -> ``(message, content, content size, name, field, value, value size,
tokens)``: ``field`` names the class's extra field (None if it has none); a size is the
``len()`` of a mutable container (a list, a dict), None for a string (immutable)."""

_COUNTS_LOCK = threading.Lock()
"""Taken to add (and evict) entries; lookups are single dict reads and take no lock."""

_EXTRA_FIELD: dict[type, str | None] = {}
"""Per message class, the field the count reads besides content and name (or None)."""

_EXTRA_FIELDS = (
    (AIMessage, "tool_calls"),
    (ToolMessage, "tool_call_id"),
    (ChatMessage, "role"),
    (SystemMessage, "additional_kwargs"),
)


def _extra_field(cls: type) -> str | None:
    try:
        return _EXTRA_FIELD[cls]
    except KeyError:
        found = next((name for base, name in _EXTRA_FIELDS if issubclass(cls, base)), None)
        _EXTRA_FIELD[cls] = found
        return found


def _size(value: Any) -> int | None:
    return None if value is None or isinstance(value, str) else len(value)


def _count_one(message: Any) -> int:
    """One message's count (cached when it is a ``BaseMessage``)."""
    tokens = count_tokens_approximately([message])
    if isinstance(message, BaseMessage):
        content = message.content
        field = _extra_field(type(message))
        value = getattr(message, field) if field is not None else None
        entry = (message, content, _size(content), message.name, field, value, _size(value), tokens)
        with _COUNTS_LOCK:
            _COUNTS[id(message)] = entry
            while len(_COUNTS) > _COUNT_CACHE_SIZE:
                _COUNTS.popitem(last=False)
    return tokens


def count_messages(messages: Sequence[BaseMessage]) -> int:
    """``count_tokens_approximately(messages)``, counting only messages not seen before."""
    total = 0
    get = _COUNTS.get
    for message in messages:
        entry = get(id(message))
        # entry[0] is message: the entry holds it, so no other live object has its id.
        if (
            entry is not None
            and entry[1] is message.content
            and entry[3] is message.name
            and (entry[2] is None or entry[2] == len(entry[1]))
        ):
            field = entry[4]
            if field is None or (
                getattr(message, field) is entry[5]
                and (entry[6] is None or entry[6] == len(entry[5]))
            ):
                total += entry[7]
                continue
        total += _count_one(message)
    return total


_TOOL_COUNTS: OrderedDict[int, tuple[list[Any], tuple[Any, ...], int]] = OrderedDict()
"""``id(tools)`` -> ``(tools, tuple(tools), tokens)`` for the tool lists of model calls."""

_TOOL_CACHE_SIZE = 64


def count_tools(tools: list[Any]) -> int:
    """``count_tokens_approximately([], tools=tools)``: the tools' part of a call's count.

    Cached for the same list holding the same tool objects (a model bound to its tools
    once); a tool dict changed in place keeps its old count, as messages do."""
    entry = _TOOL_COUNTS.get(id(tools))
    if (
        entry is not None
        and entry[0] is tools
        and len(tools) == len(entry[1])
        and all(map(operator.is_, tools, entry[1]))
    ):
        return entry[2]
    tokens = count_tokens_approximately([], tools=tools)
    with _COUNTS_LOCK:
        _TOOL_COUNTS[id(tools)] = (tools, tuple(tools), tokens)
        while len(_TOOL_COUNTS) > _TOOL_CACHE_SIZE:
            _TOOL_COUNTS.popitem(last=False)
    return tokens
