"""Scripted workers: the envelope message a worker answers with, and agents that answer
from a scripted model."""

from __future__ import annotations

import json
import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from langchain_core.language_models import LanguageModelInput
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage
from langchain_core.messages.tool import tool_call
from langchain_core.runnables import Runnable, RunnableConfig

from ..errors import ConfigurationError
from .models import ENVELOPE_TOOL

__all__ = ("async_scripted_agent", "envelope_message", "scripted_agent")


# -- envelopes ------------------------------------------------------------------------


def envelope_message(
    status: str,
    result: Any = None,
    *,
    confidence: float | None = None,
    reason: str = "",
    as_tool_call: bool = False,
    tool_call_id: str | None = None,
) -> AIMessage:
    """Build the AI message a worker answers with: a JSON envelope.

    Args:
        status: The envelope status: ``"success"``, ``"partial"`` or ``"failed"``
            (:data:`~sanegraph.guards.envelope.EnvelopeStatus`); any other string
            scripts an invalid envelope.
        result: The envelope result; must be JSON-serializable.
        confidence: The worker's confidence, if any.
        reason: Why the worker answered so.
        as_tool_call: Send the envelope as the arguments of one ``submit_envelope``
            tool call (empty content) instead of as JSON content.
        tool_call_id: The tool call's id; a fresh ``call_...`` id by default.

    Returns:
        An ``AIMessage`` whose content is
        ``{"status": ..., "result": ..., "confidence": ..., "reason": ...}`` as JSON, or
        which carries that dict as its tool call's ``args``.

    Example:
        ```python
        msg = envelope_message("success", {"answer": 42}, confidence=0.9)
        assert json.loads(msg.content)["result"] == {"answer": 42}
        call = envelope_message("partial", 42, as_tool_call=True).tool_calls[0]
        assert (call["name"], call["args"]["result"]) == ("submit_envelope", 42)
        ```
    """
    envelope = {"status": status, "result": result, "confidence": confidence, "reason": reason}
    if not as_tool_call:
        return AIMessage(content=json.dumps(envelope))
    call_id = tool_call_id or f"call_{uuid.uuid4().hex[:24]}"
    return AIMessage(
        content="", tool_calls=[tool_call(name=ENVELOPE_TOOL, args=envelope, id=call_id)]
    )


# -- agents ---------------------------------------------------------------------------

ChatRunnable = Runnable[LanguageModelInput, BaseMessage]


def _input_messages(state: Mapping[str, Any], prompt: str | None, messages_key: str) -> list[Any]:
    history = list(state.get(messages_key) or [])
    if not history:
        history = [HumanMessage(content=str(state.get("task") or state.get("topic") or "begin"))]
    return [SystemMessage(content=prompt), *history] if prompt else history


def _checked(reply: BaseMessage, name: str | None) -> AIMessage:
    if not isinstance(reply, AIMessage):
        raise ConfigurationError(
            f"scripted_agent expected the model to return an AIMessage, got "
            f"{type(reply).__name__}. Pass a chat model, not a chain with a parser."
        )
    if name is not None and reply.name is None:
        reply.name = name
    return reply


def _rename(fn: Any, name: str | None) -> None:
    if name is not None:
        fn.__name__ = name
        fn.__qualname__ = name


def scripted_agent(
    model: ChatRunnable,
    *,
    name: str | None = None,
    prompt: str | None = None,
    messages_key: str = "messages",
) -> Callable[..., AIMessage]:
    """Make an agent ``agent(state, config=None) -> AIMessage`` that calls ``model``.

    The input is an optional ``SystemMessage(prompt)``, then ``state[messages_key]``; when
    that is empty, a ``HumanMessage`` with ``state["task"]``, ``state["topic"]`` or
    ``"begin"``. The agent returns the model's ``AIMessage`` (named ``name`` when the
    model gave it no name), not a state update: wrap it in
    :func:`~sanegraph.guards.guarded`, or in a node returning ``{"messages": [reply]}``.

    Args:
        model: A chat model, e.g. a :class:`ScriptedChatModel`.
        name: The agent's name: its ``__name__`` (so ``add_node(agent)`` uses it) and
            the reply's ``name``.
        prompt: A system prompt put first.
        messages_key: The state key holding the conversation.

    Returns:
        The agent function; ``config`` is passed on to ``model.invoke``.

    Raises:
        ConfigurationError: (when called) the model returned something other than an
            ``AIMessage``.

    Example:
        ```python
        agent = scripted_agent(ScriptedChatModel(responses=["done"]), name="analyst")
        builder.add_node("analyst", lambda state: {"messages": [agent(state)]})
        ```
    """

    def agent(state: Mapping[str, Any], config: RunnableConfig | None = None) -> AIMessage:
        reply = model.invoke(_input_messages(state, prompt, messages_key), config)
        return _checked(reply, name)

    _rename(agent, name)
    return agent


def async_scripted_agent(
    model: ChatRunnable,
    *,
    name: str | None = None,
    prompt: str | None = None,
    messages_key: str = "messages",
) -> Callable[..., Awaitable[AIMessage]]:
    """Like :func:`scripted_agent`, but an ``async def`` agent calling ``model.ainvoke``.

    Args:
        model: A chat model, e.g. a :class:`ScriptedChatModel`.
        name: The agent's ``__name__`` and the reply's ``name``.
        prompt: A system prompt put first.
        messages_key: The state key holding the conversation.

    Returns:
        The coroutine function ``agent(state, config=None)``.

    Example:
        ```python
        agent = async_scripted_agent(ScriptedChatModel(responses=["done"]))
        reply = await agent({"task": "summarize"})
        assert reply.content == "done"
        ```
    """

    async def agent(state: Mapping[str, Any], config: RunnableConfig | None = None) -> AIMessage:
        reply = await model.ainvoke(_input_messages(state, prompt, messages_key), config)
        return _checked(reply, name)

    _rename(agent, name)
    return agent
