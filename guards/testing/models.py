"""Scripted chat models: :class:`ScriptedChatModel` answers from a script, with
realistic ``usage_metadata``, and records every call."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any, Union, cast

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import LanguageModelInput
from langchain_core.language_models.base import LangSmithParams
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    ToolCallChunk,
    UsageMetadata,
)
from langchain_core.messages.tool import tool_call_chunk
from langchain_core.messages.utils import count_tokens_approximately
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable
from langchain_core.tools import BaseTool
from pydantic import ConfigDict, Field, PrivateAttr

from ..errors import ConfigurationError, SanegraphError

__all__ = ("ENVELOPE_TOOL", "ScriptExhausted", "ScriptedChatModel", "ScriptedResponse")

ScriptedResponse = Union[AIMessage, str, dict[str, Any]]
"""One scripted answer.

- ``AIMessage``: returned as is (a copy), tool calls included.
- ``str``: becomes the content of an ``AIMessage``.
- ``dict``: JSON-dumped into the content (handy for envelopes).
"""

ENVELOPE_TOOL = "submit_envelope"
"""Name of the tool call :func:`envelope_message` builds with ``as_tool_call=True``."""

_WORDS = re.compile(r"(\s)")


class ScriptExhausted(SanegraphError, IndexError):
    """A :class:`ScriptedChatModel` was called more times than it has responses.

    Attributes:
        scripted: How many responses were scripted.
        calls: How many calls the model received, this one included.

    Example:
        ```python
        model = ScriptedChatModel(responses=["only one"])
        model.invoke("hi")
        try:
            model.invoke("again")
        except ScriptExhausted as exc:
            assert (exc.scripted, exc.calls) == (1, 2)
        ```
    """

    def __init__(self, message: str, *, scripted: int, calls: int) -> None:
        super().__init__(message)
        self.scripted = scripted
        self.calls = calls


def _to_message(response: ScriptedResponse) -> AIMessage:
    if isinstance(response, AIMessage):
        return response
    if isinstance(response, str):
        return AIMessage(content=response)
    if isinstance(response, dict):
        return AIMessage(content=json.dumps(response))
    raise ConfigurationError(
        f"A scripted response must be an AIMessage, a str or a dict, got "
        f"{type(response).__name__}. Wrap other values with json.dumps() or AIMessage()."
    )


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


class ScriptedChatModel(GenericFakeChatModel):
    """A chat model that answers from a script, with realistic usage and metadata.

    Each call takes the next scripted response. The answer is a fresh copy of it with
    ``usage_metadata`` (unless the scripted message already has one) approximated with
    ``count_tokens_approximately``: input tokens from the input messages, output tokens
    from the answer's content and tool calls. ``response_metadata`` names the model
    (``model_name``, ``model_provider``), as ``UsageMetadataCallbackHandler`` and budget
    callbacks need. The provider and model name are also reported to callbacks through
    the LangSmith params (``ls_provider``, ``ls_model_name``) in the run's metadata.

    ``bind_tools`` returns the model itself, so agents written against a real model work
    unchanged. Calls are recorded (``calls``, ``call_count``) under a lock, so the model
    can be shared by parallel branches. The LLM cache is off unless ``cache`` is passed:
    a cache hit would replay an answer without consuming the script or recording a call.

    Streaming splits the content on whitespace, sends tool calls as tool-call chunks and
    puts ``usage_metadata`` and ``response_metadata`` on one final empty chunk, so the
    aggregated stream equals the invoked answer (except ``name``, which chunk
    aggregation drops).

    Args:
        responses: The script, in call order.
        model_name: Reported as ``response_metadata["model_name"]`` and
            ``ls_model_name``.
        provider: Reported as ``response_metadata["model_provider"]`` and
            ``ls_provider``.
        max_tokens: Reported as ``ls_max_tokens`` when set; answers are not truncated.
        cycle: Start over at the first response when the script runs out, instead of
            raising :class:`ScriptExhausted`.
        **kwargs: Other ``BaseChatModel`` fields (``callbacks``, ``tags``, ``cache``...).

    Raises:
        ConfigurationError: A response has an unsupported type, or ``cycle=True`` with
            no responses.

    Example:
        ```python
        model = ScriptedChatModel(responses=["hello", {"status": "success"}])
        assert model.bind_tools([]) is model
        assert model.invoke("hi").content == "hello"
        assert model.invoke("hi").content == '{"status": "success"}'
        assert model.call_count == 2
        ```
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, protected_namespaces=())

    messages: Iterator[AIMessage | str] = Field(
        default_factory=lambda: iter(()), exclude=True, repr=False
    )
    """Unused: the script is ``responses`` (kept for ``GenericFakeChatModel``)."""
    responses: list[AIMessage] = Field(default_factory=list)
    """The script, normalized to AI messages; never mutated."""
    model_name: str = "gpt-4o-mini"
    """The model name reported in response metadata and LangSmith params."""
    provider: str = "openai"
    """The provider reported in response metadata and LangSmith params."""
    max_tokens: int | None = None
    """Reported as ``ls_max_tokens`` when set."""
    cycle: bool = False
    """Repeat the script when it runs out instead of raising ``ScriptExhausted``."""
    keep_calls: bool = True
    """Keep every call's input messages in :attr:`calls`; False counts calls only (for
    long runs, where keeping every input would hold all of them in memory)."""

    _calls: list[list[BaseMessage]] = PrivateAttr(default_factory=list)
    _count: int = PrivateAttr(default=0)
    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)

    def __init__(
        self,
        responses: Sequence[ScriptedResponse] = (),
        *,
        model_name: str = "gpt-4o-mini",
        provider: str = "openai",
        max_tokens: int | None = None,
        cycle: bool = False,
        keep_calls: bool = True,
        **kwargs: Any,
    ) -> None:
        if isinstance(responses, (str, dict, AIMessage)):
            raise ConfigurationError(
                "ScriptedChatModel(responses=...) takes a list of responses, got a single "
                f"{type(responses).__name__}. Wrap it in a list: responses=[...]."
            )
        script = [_to_message(r) for r in responses]
        if cycle and not script:
            raise ConfigurationError(
                "ScriptedChatModel(cycle=True) needs at least one response to repeat. "
                "Pass responses=[...] or drop cycle=True."
            )
        kwargs.setdefault("cache", False)
        # Through a dict: mypy only knows the fields GenericFakeChatModel declares.
        fields: dict[str, Any] = {
            "responses": script,
            "model_name": model_name,
            "provider": provider,
            "max_tokens": max_tokens,
            "cycle": cycle,
            "keep_calls": keep_calls,
        }
        super().__init__(**fields, **kwargs)

    # -- what the script says ---------------------------------------------------------

    @property
    def calls(self) -> list[list[BaseMessage]]:
        """The input messages of every call received, in order (a copy)."""
        with self._lock:
            return [list(c) for c in self._calls]

    @property
    def call_count(self) -> int:
        """How many calls the model received, including one that found the script empty."""
        with self._lock:
            return self._count

    def _next_response(self, messages: list[BaseMessage]) -> AIMessage:
        """Record the call and return a fresh, metadata-complete copy of the next answer."""
        with self._lock:
            if self.keep_calls:
                self._calls.append(list(messages))
            self._count += 1
            n = self._count
            scripted = len(self.responses)
            if self.cycle:
                template = self.responses[(n - 1) % scripted]
            elif n <= scripted:
                template = self.responses[n - 1]
            else:
                raise ScriptExhausted(
                    f"ScriptedChatModel(model_name={self.model_name!r}) was called "
                    f"{_plural(n, 'time')} but "
                    f"{_plural(scripted, 'response')} {'was' if scripted == 1 else 'were'} "
                    "scripted. Script more responses, or pass cycle=True to repeat them.",
                    scripted=scripted,
                    calls=n,
                )
        # A deep copy: LangChain writes ids and metadata into the returned message, and a
        # cycled response must not come back with the id of its first use.
        message = template.model_copy(deep=True)
        message.response_metadata = {
            "model_name": self.model_name,
            "model_provider": self.provider,
            "finish_reason": "tool_calls" if message.tool_calls else "stop",
            **message.response_metadata,
        }
        if message.usage_metadata is None:
            input_tokens = count_tokens_approximately(messages)
            output_tokens = count_tokens_approximately([template])
            # A cast, not a constructor call: langchain-core >= 1.8 is typed for Python
            # 3.11+, and mypy checking for 3.10 reads its NotRequired keys as required.
            message.usage_metadata = cast(
                UsageMetadata,
                {
                    "input_tokens": input_tokens,
                    "output_tokens": output_tokens,
                    "total_tokens": input_tokens + output_tokens,
                },
            )
        return message

    @staticmethod
    def _chunks(message: AIMessage) -> Iterator[ChatGenerationChunk]:
        """Split an answer into stream chunks that aggregate back to it."""
        content = message.content
        if isinstance(content, str):
            for token in _WORDS.split(content):
                if token:
                    yield ChatGenerationChunk(message=AIMessageChunk(content=token, id=message.id))
        elif content:
            yield ChatGenerationChunk(message=AIMessageChunk(content=content, id=message.id))
        if message.additional_kwargs:
            yield ChatGenerationChunk(
                message=AIMessageChunk(
                    content="", additional_kwargs=message.additional_kwargs, id=message.id
                )
            )
        raw: list[ToolCallChunk] = [
            tool_call_chunk(name=tc["name"], args=json.dumps(tc["args"]), id=tc["id"], index=i)
            for i, tc in enumerate(message.tool_calls)
        ]
        raw += [
            tool_call_chunk(name=tc["name"], args=tc["args"], id=tc["id"], index=len(raw) + i)
            for i, tc in enumerate(message.invalid_tool_calls)
        ]
        for tcc in raw:
            yield ChatGenerationChunk(
                message=AIMessageChunk(content="", tool_call_chunks=[tcc], id=message.id)
            )
        # Usage and metadata go on one last chunk, as providers send them: chunk
        # aggregation sums usage and concatenates string metadata, so repeating them
        # on every chunk would multiply the counts and garble the model name.
        yield ChatGenerationChunk(
            message=AIMessageChunk(
                content="" if isinstance(content, str) else [],
                usage_metadata=message.usage_metadata,
                response_metadata=message.response_metadata,
                id=message.id,
                chunk_position="last",
            )
        )

    # -- BaseChatModel hooks ----------------------------------------------------------

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        return ChatResult(generations=[ChatGeneration(message=self._next_response(messages))])

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        # No I/O and a short lock: answering inline beats a thread-pool hop.
        return self._generate(messages, stop)

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        for chunk in self._chunks(self._next_response(messages)):
            if run_manager is not None:
                run_manager.on_llm_new_token(chunk.text, chunk=chunk)
            yield chunk

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        for chunk in self._chunks(self._next_response(messages)):
            if run_manager is not None:
                await run_manager.on_llm_new_token(chunk.text, chunk=chunk)
            yield chunk

    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Callable[..., Any] | BaseTool],
        *,
        tool_choice: str | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        """Return the model itself: the script decides which tools get called.

        Example:
            ```python
            model = ScriptedChatModel(responses=["hi"])
            assert model.bind_tools([some_tool]) is model
            ```
        """
        return self

    @property
    def _llm_type(self) -> str:
        return f"scripted-{self.provider}"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        params: dict[str, Any] = {
            "model": self.model_name,
            "model_name": self.model_name,
            "provider": self.provider,
        }
        if self.max_tokens is not None:
            params["max_tokens"] = self.max_tokens
        return params

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        # The base class derives ls_provider from the class name ("scriptedchatmodel")
        # and reads ls_model_name / ls_max_tokens from model_name / max_tokens.
        params = super()._get_ls_params(stop=stop, **kwargs)
        params["ls_provider"] = self.provider
        return params
