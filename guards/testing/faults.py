"""Fault injection for chaos tests of guarded graphs: a chat model that misbehaves on a
schedule, the way providers and models do.

:class:`FaultyChatModel` is a :class:`~.models.ScriptedChatModel` that, on the calls its
schedule names, raises (the provider failed: nothing billed), hangs (answers late),
answers garbage (no envelope), repeats its previous answer word for word, or overspends
(reports far more output tokens than its ``max_tokens``, as a model that ignores it).
Faults apply to ``invoke`` and ``ainvoke`` (streamed calls answer from the script).
:meth:`FaultyChatModel.at_random` draws a reproducible schedule from a seed.

Example:
    ```python
    model = FaultyChatModel(
        [envelope_message("partial", "a document")], cycle=True, max_tokens=256,
        faults={2: "raise", 5: "garbage", 9: "overspend"},
    )
    ```
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Mapping, Sequence
from typing import Any, Literal, cast

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.messages import AIMessage, BaseMessage, UsageMetadata
from langchain_core.outputs import ChatGeneration, ChatResult
from pydantic import Field, PrivateAttr

from ..errors import ConfigurationError
from .models import ScriptedChatModel, ScriptedResponse

__all__ = ("FAULTS", "Fault", "FaultyChatModel", "ProviderError")

Fault = Literal["raise", "hang", "garbage", "repeat", "overspend"]
"""What a faulty call does.

- ``"raise"``: raises :class:`ProviderError` before answering (the provider failed; a
  failed call is not billed).
- ``"hang"``: answers after ``hang_seconds`` (a slow provider).
- ``"garbage"``: answers text that is no envelope.
- ``"repeat"``: answers exactly what it answered the call before.
- ``"overspend"``: answers the scripted response, but reports ``overspend_factor`` times
  its ``max_tokens`` in output tokens (a model that ignores ``max_tokens``).
"""

FAULTS: tuple[Fault, ...] = ("raise", "hang", "garbage", "repeat", "overspend")
"""Every kind of fault, in a fixed order."""


class ProviderError(ConnectionError):
    """The scripted provider failed a call (raised by a ``"raise"`` fault).

    A ``ConnectionError``: LangGraph's default ``RetryPolicy`` retries it.
    """


class FaultyChatModel(ScriptedChatModel):
    """A scripted chat model whose calls fail on a schedule (see :data:`Fault`).

    Args:
        responses: The script, as :class:`~.models.ScriptedChatModel` takes it.
        faults: Call number (1-based, as :attr:`call_count` counts) -> the fault of that
            call; calls not named answer from the script.
        hang_seconds: How long a ``"hang"`` call takes.
        overspend_factor: How many times ``max_tokens`` an ``"overspend"`` call reports.
        **kwargs: As :class:`~.models.ScriptedChatModel` (``model_name``, ``max_tokens``,
            ``cycle``...).
    """

    faults: Mapping[int, Fault] = Field(default_factory=dict)
    """Call number (1-based) -> fault."""
    hang_seconds: float = 0.05
    """How long a ``"hang"`` call takes."""
    overspend_factor: int = 10
    """How many times ``max_tokens`` an ``"overspend"`` call reports as output."""

    _previous: AIMessage | None = PrivateAttr(default=None)
    _faulted: list[tuple[int, Fault]] = PrivateAttr(default_factory=list)

    def __init__(
        self,
        responses: Sequence[ScriptedResponse] = (),
        *,
        faults: Mapping[int, Fault] | None = None,
        hang_seconds: float = 0.05,
        overspend_factor: int = 10,
        **kwargs: Any,
    ) -> None:
        for call, fault in (faults or {}).items():
            if fault not in FAULTS:
                raise ConfigurationError(
                    f"FaultyChatModel(faults=...) call {call} has an unknown fault {fault!r}. "
                    f"Use one of {', '.join(map(repr, FAULTS))}."
                )
        fields: dict[str, Any] = {
            "faults": dict(faults or {}),
            "hang_seconds": hang_seconds,
            "overspend_factor": overspend_factor,
        }
        super().__init__(responses, **fields, **kwargs)

    @classmethod
    def at_random(
        cls,
        responses: Sequence[ScriptedResponse],
        *,
        seed: int,
        rate: float = 0.2,
        calls: int = 200,
        kinds: Sequence[Fault] = FAULTS,
        **kwargs: Any,
    ) -> FaultyChatModel:
        """A model whose first ``calls`` calls each fail with probability ``rate``, with a
        fault drawn from ``kinds``: the same seed gives the same schedule."""
        rng = random.Random(seed)
        faults = {n: rng.choice(list(kinds)) for n in range(1, calls + 1) if rng.random() < rate}
        return cls(responses, faults=faults, **kwargs)

    @property
    def faulted(self) -> list[tuple[int, Fault]]:
        """The calls that failed so far, as ``(call number, fault)``."""
        with self._lock:
            return list(self._faulted)

    def _fault(self) -> Fault | None:
        """The fault of the call about to be answered (the next call number)."""
        with self._lock:
            fault = self.faults.get(self._count + 1)
            if fault is not None:
                self._faulted.append((self._count + 1, fault))
            return fault

    def _answer(self, messages: list[BaseMessage], fault: Fault | None) -> AIMessage:
        if fault == "raise":
            with self._lock:
                self._count += 1  # the provider saw the call, and failed it
            raise ProviderError("the scripted provider failed this call")
        if fault == "repeat" and self._previous is not None:
            with self._lock:
                self._count += 1
            message = self._previous.model_copy(deep=True)
            message.id = None
        else:
            message = self._next_response(messages)
        if fault == "garbage":
            message = message.model_copy(update={"content": "lorem ipsum, no envelope"})
            message.tool_calls = []
        if fault == "overspend" and self.max_tokens:
            usage: dict[str, Any] = dict(message.usage_metadata or {})
            output = self.max_tokens * self.overspend_factor
            usage["output_tokens"] = output
            usage["total_tokens"] = int(usage.get("input_tokens") or 0) + output
            message.usage_metadata = cast(UsageMetadata, usage)
        self._previous = message
        return message

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        fault = self._fault()
        if fault == "hang":
            time.sleep(self.hang_seconds)
        return ChatResult(generations=[ChatGeneration(message=self._answer(messages, fault))])

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        fault = self._fault()
        if fault == "hang":
            await asyncio.sleep(self.hang_seconds)
        return ChatResult(generations=[ChatGeneration(message=self._answer(messages, fault))])
