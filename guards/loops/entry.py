"""What one finished step adds to the loop window: :func:`step_entry`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..ledger import BRANCH_KEY
from . import _steps as _st
from .policy import LoopPolicy
from .similarity import normalize, short_hash, text_of
from .window import SIZE, STALL

__all__ = ("step_entry",)

_MIN_COPY = 16
"""Shorter results ("ok", "done") are not counted as copies: agents agree on them."""


def step_entry(
    agent: str,
    envelope: Mapping[str, Any],
    *,
    update: Mapping[str, Any] | None,
    state: Mapping[str, Any],
    policy: LoopPolicy,
    window: Sequence[Sequence[Any]],
    hop: int,
) -> list[Any]:
    """The window entry of one finished step (see :data:`ENTRY_FIELDS`).

    Args:
        agent: The agent's name in the ledger.
        envelope: The step's envelope as a JSON-ready dict (``status``, ``result``,
            ``confidence``, ``reason``).
        update: The state update the agent returned, without its envelope; its
            ``"messages"`` (AI messages with tool calls, tool messages) feed the tool
            detectors and the ``watch`` keys it writes show progress.
        state: The state the agent received: its last message is the request, the
            ``"guard"`` ledger holds the previous envelopes.
        policy: The loop policy.
        window: The ledger's window before this step, oldest first.
        hop: The step's hop (the ledger's hops plus one).

    Returns:
        A JSON-ready list of str and int, to append to the ledger's window.

    Example:
        ```python
        entry = step_entry("analyst", envelope, update=update, state=state,
                           policy=policy, window=ledger["window"], hop=ledger["hops"] + 1)
        ```
    """
    parts = policy.parts_for(agent)
    status = str(envelope.get("status") or "")
    raw = text_of(envelope.get("result"))
    result = normalize(raw)
    reason = envelope.get("reason")
    reason = normalize(str(reason)) if reason else ""
    old = state.get("messages")
    if (update and update.get("messages") is not None) or (isinstance(old, list) and old):
        tokens = _st.tool_tokens(_st.new_messages(update, state), state)
    else:
        tokens = []  # no messages before or in the step: no tool calls
    key = str(state.get(BRANCH_KEY) or agent)
    pieces = []
    texts = []
    if "output" in parts:
        pieces.append(f"{status}\x1f{result}\x1f{reason}")
        texts.append(f"{result} {reason}")
    if "tool_calls" in parts:
        pieces.append(_st.tool_part(tokens) if tokens else "")
    if "request" in parts:
        request = normalize(_st.request_text(state, key))
        pieces.append(request)
        texts.append(request)
    fp = short_hash("\x1e".join(pieces)) if parts else ""
    text = " ".join(texts).strip()
    sim = ""
    # A text of one or two words ("done", "route researcher") cannot be reworded: the
    # exact detectors cover it.
    if policy.max_near_duplicates and text.count(" ") >= 2:
        sim = policy.similarity.signature(text)
    out = short_hash(result) if len(result) >= _MIN_COPY else ""
    progress = _st.progress(envelope, result, update, state, policy.watch, key)
    if not progress and not policy.watch:
        # A poller may say the same thing every time while its tool answers change.
        progress = _st.tool_progress(tokens, window)
    stalls = 0
    last = window[-1] if window else None
    if last is not None and len(last) >= SIZE and isinstance(last[STALL], int):
        stalls = last[STALL]
    if progress and not _st.seen_progress(window, progress):
        stalls //= 2
    else:
        stalls += 1
    return [
        agent,
        fp,
        hop,
        out,
        sim,
        " ".join(tokens),
        progress,
        stalls,
        _st.snippet(envelope, raw),
    ]
