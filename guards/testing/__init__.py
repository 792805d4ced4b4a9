"""Scripted chat models and agents for testing guarded graphs offline.

:class:`ScriptedChatModel` answers from a script instead of a provider: every answer
carries realistic ``usage_metadata`` and ``response_metadata["model_name"]``, and the
model records every call, so a test can assert that a guard kept a model from being
called. :func:`envelope_message` builds the AI message a worker sends back, and
:func:`scripted_agent` / :func:`async_scripted_agent` turn a model into an agent that a
node (or :func:`~sanegraph.guards.guarded`) can call.

Example:
    ```python
    from sanegraph.guards.testing import ScriptedChatModel, envelope_message

    model = ScriptedChatModel(responses=[envelope_message("success", {"answer": 42})])
    reply = model.invoke("What is the answer?")
    assert reply.usage_metadata["output_tokens"] > 0
    assert model.call_count == 1
    ```
"""

from .agents import async_scripted_agent, envelope_message, scripted_agent
from .faults import FAULTS, Fault, FaultyChatModel, ProviderError
from .models import ENVELOPE_TOOL, ScriptedChatModel, ScriptedResponse, ScriptExhausted

__all__ = (
    "ENVELOPE_TOOL",
    "FAULTS",
    "Fault",
    "FaultyChatModel",
    "ProviderError",
    "ScriptExhausted",
    "ScriptedChatModel",
    "ScriptedResponse",
    "async_scripted_agent",
    "envelope_message",
    "scripted_agent",
)
