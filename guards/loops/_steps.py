"""What one step shows the loop detectors: its tool calls with their results, its
request, its progress. Pure functions over messages and state.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from langchain_core.messages import AIMessage, BaseMessage, ToolMessage, convert_to_messages

from .similarity import normalize, short_hash, text_of
from .window import PROG, SIZE, TOOLS

_MAX_TOOLS = 8
"""Tool calls kept per entry (the last ones)."""
_MAX_TEXT = 60
"""Characters of a step's text kept for people."""
_SCAN = 64
"""Messages read from the end of a list: bounds the cost per step."""
_ENVELOPE_TOOLS = frozenset(("Envelope", "submit_envelope"))
"""Tool names of an envelope carried as a tool call (structured output, and
``testing.envelope_message(as_tool_call=True)``): not real tools."""
_ENVELOPE_KEYS = frozenset(("status", "result", "confidence", "reason"))
_NAME = re.compile(r"[^\w.-]")


# -- what a step's messages show ---------------------------------------------------------


def _message_id(message: Any) -> Any:
    return message.get("id") if isinstance(message, Mapping) else getattr(message, "id", None)


def _message(item: Any) -> BaseMessage | None:
    """A state's message as a LangChain message: OpenAI-style dicts, ``(role, text)``
    tuples and strings through LangChain's own ``convert_to_messages``; None for anything
    it cannot read (which then shows no tool calls)."""
    if isinstance(item, BaseMessage):
        return item
    try:
        return convert_to_messages([item])[0]
    except (ValueError, TypeError, KeyError, NotImplementedError):
        return None


def new_messages(update: Mapping[str, Any] | None, state: Mapping[str, Any]) -> list[Any]:
    """The messages a step added: a subgraph hands back the whole list, a node only news."""
    messages = update.get("messages") if update else None
    if messages is None:
        return []
    if not isinstance(messages, (list, tuple)):
        messages = [messages]
    old = state.get("messages")
    last = old[-1] if isinstance(old, list) and old else None
    last_id = _message_id(last) if last is not None else None
    new = []
    for message in reversed(messages[-_SCAN:]):
        if last is not None and (
            message is last or (last_id is not None and _message_id(message) == last_id)
        ):
            break
        new.append(message)
    new.reverse()
    return new


def _is_envelope(args: Any) -> bool:
    """Whether a tool call's arguments are an envelope (the guard reads the first call
    with a ``status`` argument as the step's envelope, whatever its name): a call whose
    arguments are ``status`` and other envelope fields only is no tool, and it is never
    answered, so it would count as a pending call on every step."""
    if isinstance(args, str) and '"status"' in args:  # OpenAI-style: arguments as JSON
        try:
            args = json.loads(args)
        except ValueError:
            return False
    return isinstance(args, Mapping) and "status" in args and args.keys() <= _ENVELOPE_KEYS


def tool_tokens(new: list[Any], state: Mapping[str, Any]) -> list[str]:
    """Tool calls of the step, with the results it saw: ``name:args:result:call`` tokens.

    Results come from the step's own messages (a ReAct agent) or, for the calls the
    previous step made, from the tool messages ending the request (agent -> ToolNode ->
    agent).
    """
    seen: list[BaseMessage] = []
    old = state.get("messages")
    if isinstance(old, list) and old:
        # The tool messages ending the request, with the AI message that asked for them.
        start = len(old)
        while start > 0 and len(old) - start < _SCAN:
            message = _message(old[start - 1])
            if message is None:
                break
            seen.append(message)
            start -= 1
            if not isinstance(message, ToolMessage):
                break
        seen.reverse()
        if seen and not isinstance(seen[-1], ToolMessage):
            seen = []  # the request ends with no tool answers: nothing to take from it
    seen.extend(m for m in map(_message, new) if m is not None)
    if not seen:
        # The common step: no tool messages before it and no messages of its own.
        return []
    calls: dict[str, list[str]] = {}
    envelopes: set[str] = set()
    for message in seen:
        if isinstance(message, AIMessage):
            for call in message.tool_calls:
                name, args, call_id = call["name"] or "", call["args"], call.get("id") or ""
                if name in _ENVELOPE_TOOLS or _is_envelope(args):
                    if call_id:  # skip its answer too, if any (structured output)
                        envelopes.add(call_id)
                    continue
                args_hash = short_hash(normalize(text_of(args)), 4)
                name = _NAME.sub("_", name)[:24] or "?"
                calls[call_id or f"#{len(calls)}"] = [name, args_hash, "", call_id]
        elif isinstance(message, ToolMessage):
            call_id = message.tool_call_id or ""
            if call_id in envelopes or message.name in _ENVELOPE_TOOLS:
                continue
            result = short_hash(normalize(text_of(message.content)), 4)
            if message.status == "error":
                result = "!" + result
            known = calls.get(call_id) if call_id else None
            if known is None:
                name = _NAME.sub("_", str(message.name or ""))[:24] or "?"
                calls[call_id or f"#{len(calls)}"] = [name, "", result, call_id]
            else:
                known[2] = result
    return [
        f"{name}:{args}:{result}:{short_hash(call_id, 3) if call_id else ''}"
        for name, args, result, call_id in list(calls.values())[-_MAX_TOOLS:]
    ]


def tool_part(tokens: list[str]) -> str:
    """A step's tool calls and results without call ids, in a fixed order (the
    fingerprint's ``tool_calls`` part)."""
    return " ".join(sorted(t.rpartition(":")[0] for t in tokens))


def request_text(state: Mapping[str, Any], key: str) -> str:
    """What the agent was asked: the last message, or the newest other envelope."""
    messages = state.get("messages")
    if isinstance(messages, list) and messages:
        return text_of(messages[-1])
    ledger = state.get("guard")
    envelopes = ledger.get("envelopes") if isinstance(ledger, Mapping) else None
    if isinstance(envelopes, Mapping):
        for other in reversed(list(envelopes)):
            env = envelopes[other]
            if other != key and isinstance(env, Mapping):
                return f"{text_of(env.get('result'))} {env.get('reason') or ''}"
    return ""


def changed(new: Any, old: Any) -> bool:
    """Whether a written value differs from the state's (unsure counts as changed)."""
    if new is old:
        return False
    try:
        return bool(new != old)
    except Exception:  # e.g. arrays, whose comparison has no single truth value
        return True


def seen_progress(window: Sequence[Sequence[Any]], progress: str) -> bool:
    """Whether an entry of the window already made this progress."""
    try:
        # A plain loop: cheaper than any() or ``progress in map(itemgetter(PROG), window)``.
        for e in window:  # noqa: SIM110
            if e[PROG] == progress:
                return True
        return False
    except IndexError:  # an entry of an older layout
        return any(len(e) >= SIZE and e[PROG] == progress for e in window)


def tool_progress(tokens: list[str], window: Sequence[Sequence[Any]]) -> str:
    """Hash of the tool answers the step saw that no entry of the window saw; ``""`` if
    none. Errors and pending calls are never progress; an answer counts by tool and result,
    so paging or polling whose results change makes progress, and the same answer again
    does not."""
    answers = {a for a in map(_answer, tokens) if a and "!" not in a}
    if not answers:
        return ""
    for e in window:
        if len(e) >= SIZE and e[TOOLS]:
            answers.difference_update(map(_answer, e[TOOLS].split()))
            if not answers:
                return ""
    return short_hash("tools\x1e" + " ".join(sorted(answers)))


def _answer(token: str) -> str:
    """``name:result`` of a ``name:args:result:call`` token; ``""`` while pending."""
    fields = token.split(":")
    if len(fields) != 4 or not fields[2]:
        return ""
    return f"{fields[0]}:{fields[2]}"


def snippet(envelope: Mapping[str, Any], result: str) -> str:
    """At most 60 characters of the step's result, or else its reason, for people."""
    text = " ".join(result.split())
    if not text:
        text = " ".join(str(envelope.get("reason") or "").split())
    return text if len(text) <= _MAX_TEXT else text[: _MAX_TEXT - 3] + "..."


def progress(
    envelope: Mapping[str, Any],
    result: str,
    update: Mapping[str, Any] | None,
    state: Mapping[str, Any],
    watch: tuple[str, ...],
    key: str,
) -> str:
    """Hash of what the step changed in the watched state; ``""`` if it changed nothing."""
    if watch:
        written = [
            f"{k}={normalize(text_of(update[k]))}"
            for k in watch
            if update and k in update and changed(update[k], state.get(k))
        ]
        return short_hash("\x1e".join(written)) if written else ""
    ledger = state.get("guard")
    # type() first: the ABC check of isinstance(x, Mapping) is slow, and these are dicts.
    envelopes = (
        ledger.get("envelopes") if type(ledger) is dict or isinstance(ledger, Mapping) else None
    )
    before = (
        envelopes.get(key) if type(envelopes) is dict or isinstance(envelopes, Mapping) else None
    )
    status = envelope.get("status")
    if (
        (type(before) is dict or isinstance(before, Mapping))
        and before.get("status") == status
        and before.get("result") == envelope.get("result")
    ):
        return ""
    return short_hash(f"{status}\x1e{result}")
