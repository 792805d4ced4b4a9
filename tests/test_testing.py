"""Tests for sanegraph.guards.testing: the scripted model and agents users test with."""

from __future__ import annotations

import json
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from uuid import UUID

import pytest
from langchain_core.callbacks import BaseCallbackHandler, get_usage_metadata_callback
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from langchain_core.outputs import ChatGeneration, LLMResult
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, MessagesState, StateGraph
from pydantic import BaseModel

from sanegraph.guards import testing
from sanegraph.guards.errors import ConfigurationError, SanegraphError
from sanegraph.guards.testing import (
    ScriptedChatModel,
    ScriptExhausted,
    async_scripted_agent,
    envelope_message,
    scripted_agent,
)


def _aggregate(chunks: list[AIMessageChunk]) -> AIMessageChunk:
    total = chunks[0]
    for chunk in chunks[1:]:
        total = total + chunk
    return total


def _tool_reply() -> AIMessage:
    return AIMessage(
        content="Looking it up.",
        tool_calls=[{"name": "search", "args": {"q": "tides"}, "id": "call_1"}],
    )


# -- script ---------------------------------------------------------------------------


def test_responses_come_back_in_order() -> None:
    model = ScriptedChatModel(responses=["first", "second", _tool_reply()])

    replies = [model.invoke("go") for _ in range(3)]

    assert [r.content for r in replies] == ["first", "second", "Looking it up."]
    assert all(isinstance(r, AIMessage) for r in replies)
    assert replies[2].tool_calls == [
        {"name": "search", "args": {"q": "tides"}, "id": "call_1", "type": "tool_call"}
    ]
    assert replies[2].response_metadata["finish_reason"] == "tool_calls"


def test_dict_response_becomes_json_content() -> None:
    model = ScriptedChatModel(responses=[{"status": "success", "result": [1, 2]}])

    reply = model.invoke("go")

    assert isinstance(reply.content, str)
    assert json.loads(reply.content) == {"status": "success", "result": [1, 2]}


def test_scripted_messages_are_not_mutated() -> None:
    scripted = AIMessage(content="same")
    model = ScriptedChatModel(responses=[scripted], cycle=True)

    a, b = model.invoke("go"), model.invoke("go")

    assert scripted.id is None
    assert scripted.usage_metadata is None
    assert scripted.response_metadata == {}
    assert a.id != b.id


def test_positional_responses_and_single_response_mistake() -> None:
    assert ScriptedChatModel(["hi"]).invoke("go").content == "hi"
    with pytest.raises(
        ConfigurationError,
        match=re.escape(
            "ScriptedChatModel(responses=...) takes a list of responses, got a single str. "
            "Wrap it in a list: responses=[...]."
        ),
    ):
        ScriptedChatModel(responses="hi")


def test_unsupported_response_type_is_a_configuration_error() -> None:
    with pytest.raises(
        ConfigurationError,
        match=re.escape(
            "A scripted response must be an AIMessage, a str or a dict, got int. "
            "Wrap other values with json.dumps() or AIMessage()."
        ),
    ):
        ScriptedChatModel(responses=[42])  # type: ignore[list-item]


# -- usage and metadata ---------------------------------------------------------------


def test_usage_metadata_is_realistic() -> None:
    model = ScriptedChatModel(responses=["short answer", "short answer"])

    short = model.invoke([HumanMessage("hi")])
    long = model.invoke([HumanMessage("hi " * 200)])

    for reply in (short, long):
        usage = reply.usage_metadata
        assert usage is not None
        assert usage["input_tokens"] > 0
        assert usage["output_tokens"] > 0
        assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
    assert short.usage_metadata is not None and long.usage_metadata is not None
    assert long.usage_metadata["input_tokens"] > short.usage_metadata["input_tokens"] + 100
    assert long.usage_metadata["output_tokens"] == short.usage_metadata["output_tokens"]


def test_output_tokens_count_content_and_tool_calls() -> None:
    model = ScriptedChatModel(
        responses=[
            "ok",
            "a much longer answer " * 20,
            AIMessage(content="", tool_calls=[{"name": "t", "args": {"x": "y" * 80}, "id": "c"}]),
        ]
    )

    usages = [model.invoke("go").usage_metadata for _ in range(3)]

    assert all(u is not None for u in usages)
    ok, longer, tool = (u["output_tokens"] for u in usages if u is not None)
    assert longer > ok + 50
    assert tool > ok + 15


def test_scripted_usage_metadata_is_kept() -> None:
    usage = {"input_tokens": 1000, "output_tokens": 7, "total_tokens": 1007}
    model = ScriptedChatModel(responses=[AIMessage(content="x", usage_metadata=usage)])

    assert model.invoke("go").usage_metadata == usage


def test_response_metadata_names_the_model() -> None:
    model = ScriptedChatModel(
        responses=["a", AIMessage(content="b", response_metadata={"model_name": "custom"})],
        model_name="claude-sonnet-4-5",
        provider="anthropic",
    )

    first, second = model.invoke("go"), model.invoke("go")

    assert first.response_metadata["model_name"] == "claude-sonnet-4-5"
    assert first.response_metadata["model_provider"] == "anthropic"
    assert second.response_metadata["model_name"] == "custom"


def test_langsmith_params_report_provider_and_model() -> None:
    model = ScriptedChatModel(responses=[], model_name="gpt-4.1", provider="openai")
    capped = ScriptedChatModel(responses=[], max_tokens=256)

    params = model._get_ls_params()

    assert params["ls_provider"] == "openai"
    assert params["ls_model_name"] == "gpt-4.1"
    assert params["ls_model_type"] == "chat"
    assert "ls_max_tokens" not in params
    assert capped._get_ls_params()["ls_max_tokens"] == 256
    assert model._get_ls_params(model="gpt-5")["ls_model_name"] == "gpt-5"
    assert model._identifying_params["model_name"] == "gpt-4.1"
    assert model._identifying_params["provider"] == "openai"
    assert model._llm_type == "scripted-openai"


def test_get_usage_metadata_callback_sees_the_usage() -> None:
    model = ScriptedChatModel(responses=["one", "two"])

    with get_usage_metadata_callback() as cb:
        replies = [model.invoke("go"), model.invoke("go")]

    assert set(cb.usage_metadata) == {"gpt-4o-mini"}
    assert cb.usage_metadata["gpt-4o-mini"]["total_tokens"] == sum(
        r.usage_metadata["total_tokens"] for r in replies if r.usage_metadata
    )


# -- tools, calls, exhaustion ---------------------------------------------------------


def test_bind_tools_returns_the_model() -> None:
    def search(q: str) -> str:
        """Search."""
        return q

    model = ScriptedChatModel(responses=[_tool_reply()])

    bound = model.bind_tools([search], tool_choice="any")

    assert bound is model
    assert bound.invoke("go").tool_calls[0]["name"] == "search"


def test_with_structured_output_reads_the_scripted_tool_call() -> None:
    class Answer(BaseModel):
        value: int

    model = ScriptedChatModel(
        responses=[
            AIMessage(content="", tool_calls=[{"name": "Answer", "args": {"value": 7}, "id": "c1"}])
        ]
    )

    assert model.with_structured_output(Answer).invoke("go") == Answer(value=7)


def test_calls_are_recorded() -> None:
    model = ScriptedChatModel(responses=["a", "b"])
    untouched = ScriptedChatModel(responses=["never"])

    model.invoke([SystemMessage("be brief"), HumanMessage("one")])
    model.invoke("two")

    assert model.call_count == 2
    assert [[(m.type, m.content) for m in call] for call in model.calls] == [
        [("system", "be brief"), ("human", "one")],
        [("human", "two")],
    ]
    assert untouched.call_count == 0
    assert untouched.calls == []


def test_script_exhausted_message() -> None:
    model = ScriptedChatModel(responses=["a", "b"])
    model.invoke("1")
    model.invoke("2")

    with pytest.raises(
        ScriptExhausted,
        match=re.escape(
            "ScriptedChatModel(model_name='gpt-4o-mini') was called 3 times but 2 responses "
            "were scripted. Script more responses, or pass cycle=True to repeat them."
        ),
    ) as info:
        model.invoke("3")

    assert isinstance(info.value, IndexError)
    assert isinstance(info.value, SanegraphError)
    assert (info.value.scripted, info.value.calls) == (2, 3)
    assert model.call_count == 3


@pytest.mark.parametrize(
    ("responses", "expected"),
    [
        ([], "was called 1 time but 0 responses were scripted."),
        (["a"], "was called 2 times but 1 response was scripted."),
    ],
)
def test_script_exhausted_counts_are_spelled_out(responses: list[str], expected: str) -> None:
    model = ScriptedChatModel(responses=responses)
    for _ in responses:
        model.invoke("go")

    with pytest.raises(ScriptExhausted, match=re.escape(expected)):
        model.invoke("go")


def test_cycle_repeats_the_script() -> None:
    model = ScriptedChatModel(responses=["a", "b"], cycle=True)

    assert [model.invoke("go").content for _ in range(5)] == ["a", "b", "a", "b", "a"]
    assert model.call_count == 5


def test_cycle_needs_a_response() -> None:
    with pytest.raises(
        ConfigurationError,
        match=re.escape(
            "ScriptedChatModel(cycle=True) needs at least one response to repeat. "
            "Pass responses=[...] or drop cycle=True."
        ),
    ):
        ScriptedChatModel(responses=[], cycle=True)


def test_parallel_callers_each_get_one_response() -> None:
    model = ScriptedChatModel(responses=[str(i) for i in range(200)])
    start = threading.Barrier(8)

    def worker(_: int) -> list[str]:
        start.wait()
        return [str(model.invoke("go").content) for _ in range(25)]

    with ThreadPoolExecutor(max_workers=8) as pool:
        got = [c for batch in pool.map(worker, range(8)) for c in batch]

    assert sorted(got, key=int) == [str(i) for i in range(200)]
    assert model.call_count == 200


# -- async and streaming --------------------------------------------------------------


async def test_ainvoke() -> None:
    model = ScriptedChatModel(responses=["async hello", {"k": "v"}])

    first = await model.ainvoke("go")
    second = await model.ainvoke([HumanMessage("again")])

    assert (first.content, json.loads(str(second.content))) == ("async hello", {"k": "v"})
    assert first.usage_metadata is not None and first.usage_metadata["output_tokens"] > 0
    assert model.call_count == 2


@pytest.mark.parametrize("response", ["stream  me\nplease", _tool_reply()])
def test_stream_aggregates_to_the_invoked_message(response: str | AIMessage) -> None:
    invoked = ScriptedChatModel(responses=[response]).invoke("go")
    streamed_model = ScriptedChatModel(responses=[response])

    chunks = list(streamed_model.stream("go"))
    streamed = _aggregate(chunks)

    assert len(chunks) > 2
    assert [c.usage_metadata is not None for c in chunks].count(True) == 1
    assert streamed.content == invoked.content
    assert streamed.tool_calls == invoked.tool_calls
    assert streamed.usage_metadata == invoked.usage_metadata
    assert streamed.response_metadata == invoked.response_metadata
    assert streamed_model.call_count == 1


async def test_astream_aggregates_usage_once() -> None:
    model = ScriptedChatModel(responses=["one two three", "one two three"])
    invoked = await model.ainvoke("go")

    chunks = [c async for c in model.astream("go")]

    assert _aggregate(chunks).usage_metadata == invoked.usage_metadata
    assert [c.usage_metadata is not None for c in chunks].count(True) == 1


# -- callbacks ------------------------------------------------------------------------


class Recorder(BaseCallbackHandler):
    """Keeps what a budget callback would see."""

    def __init__(self) -> None:
        self.starts: list[dict[str, Any]] = []
        self.ends: list[LLMResult] = []

    def on_chat_model_start(
        self,
        serialized: dict[str, Any],
        messages: list[list[BaseMessage]],
        *,
        run_id: UUID,
        metadata: dict[str, Any] | None = None,
        invocation_params: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        self.starts.append(
            {"messages": messages, "metadata": metadata, "params": invocation_params}
        )

    def on_llm_end(self, response: LLMResult, *, run_id: UUID, **kwargs: Any) -> None:
        self.ends.append(response)


@pytest.mark.parametrize("mode", ["invoke", "stream"])
def test_callback_sees_the_call_and_the_usage(mode: str) -> None:
    model = ScriptedChatModel(responses=["counted"], model_name="gpt-4.1", provider="openai")
    recorder = Recorder()
    config: Any = {"callbacks": [recorder]}

    if mode == "invoke":
        reply: BaseMessage = model.invoke([HumanMessage("count me")], config)
    else:
        reply = _aggregate(list(model.stream([HumanMessage("count me")], config)))

    (start,) = recorder.starts
    assert [[(m.type, m.content) for m in batch] for batch in start["messages"]] == [
        [("human", "count me")]
    ]
    assert start["metadata"]["ls_provider"] == "openai"
    assert start["metadata"]["ls_model_name"] == "gpt-4.1"
    assert start["params"]["model_name"] == "gpt-4.1"
    (end,) = recorder.ends
    generation = end.generations[0][0]
    assert isinstance(generation, ChatGeneration)
    message = generation.message
    assert isinstance(reply, AIMessage) and isinstance(message, AIMessage)
    assert message.usage_metadata == reply.usage_metadata
    assert message.usage_metadata is not None
    assert message.usage_metadata["input_tokens"] > 0
    assert message.response_metadata["model_name"] == "gpt-4.1"


# -- envelopes ------------------------------------------------------------------------


def test_envelope_message_json() -> None:
    msg = envelope_message("success", {"answer": 42}, confidence=0.9, reason="looked it up")

    assert msg.tool_calls == []
    assert json.loads(str(msg.content)) == {
        "status": "success",
        "result": {"answer": 42},
        "confidence": 0.9,
        "reason": "looked it up",
    }
    assert json.loads(str(envelope_message("failed").content)) == {
        "status": "failed",
        "result": None,
        "confidence": None,
        "reason": "",
    }


def test_envelope_message_tool_call() -> None:
    msg = envelope_message("partial", "which year?", as_tool_call=True)
    other = envelope_message("success", as_tool_call=True, tool_call_id="call_fixed")

    assert msg.content == ""
    (call,) = msg.tool_calls
    assert call["name"] == testing.ENVELOPE_TOOL == "submit_envelope"
    assert call["args"] == {
        "status": "partial",
        "result": "which year?",
        "confidence": None,
        "reason": "",
    }
    assert call["id"] and call["id"].startswith("call_")
    assert other.tool_calls[0]["id"] == "call_fixed"


def test_envelope_tool_call_survives_streaming() -> None:
    model = ScriptedChatModel(responses=[envelope_message("success", [1], as_tool_call=True)])

    streamed = _aggregate(list(model.stream("go")))

    assert streamed.tool_calls[0]["args"]["result"] == [1]


# -- agents ---------------------------------------------------------------------------


def _one_node_graph(node: Any) -> Any:
    builder = StateGraph(MessagesState)
    builder.add_node("agent", node)
    builder.add_edge(START, "agent")
    builder.add_edge("agent", END)
    return builder.compile(checkpointer=InMemorySaver())


def test_scripted_agent_in_a_graph() -> None:
    model = ScriptedChatModel(responses=["first reply", "second reply"])
    agent = scripted_agent(model, name="analyst", prompt="You analyse.")
    graph = _one_node_graph(lambda state: {"messages": [agent(state)]})
    config: Any = {"configurable": {"thread_id": "t1"}}

    graph.invoke({"messages": [HumanMessage("hello")]}, config)
    state = graph.invoke({"messages": [HumanMessage("more")]}, config)

    assert agent.__name__ == "analyst"
    assert [(m.type, m.name, m.content) for m in state["messages"]] == [
        ("human", None, "hello"),
        ("ai", "analyst", "first reply"),
        ("human", None, "more"),
        ("ai", "analyst", "second reply"),
    ]
    assert state["messages"][-1].usage_metadata["total_tokens"] > 0
    # The second call saw the checkpointed history, after the system prompt.
    assert [m.type for m in model.calls[1]] == ["system", "human", "ai", "human"]


def test_scripted_agent_input_when_history_is_empty() -> None:
    model = ScriptedChatModel(responses=["a", "b", "c", "d"])
    agent = scripted_agent(model)
    custom = scripted_agent(model, messages_key="history")

    agent({"task": "plan the trip"})
    agent({"topic": "tides", "messages": []})
    agent({})
    custom({"history": [HumanMessage("from history")], "messages": [HumanMessage("no")]})

    assert [[m.content for m in call] for call in model.calls] == [
        ["plan the trip"],
        ["tides"],
        ["begin"],
        ["from history"],
    ]
    assert agent.__name__ == "agent"


def test_scripted_agent_passes_config_to_callbacks() -> None:
    recorder = Recorder()
    agent = scripted_agent(ScriptedChatModel(responses=["x"]))

    agent({"task": "t"}, {"callbacks": [recorder]})

    assert len(recorder.starts) == len(recorder.ends) == 1


def test_scripted_agent_rejects_non_ai_output() -> None:
    class Echo(ScriptedChatModel):
        def invoke(self, input: Any, config: Any = None, **kwargs: Any) -> Any:
            return ToolMessage(content="x", tool_call_id="1")

    agent = scripted_agent(Echo(responses=[]))

    with pytest.raises(ConfigurationError, match=re.escape("got ToolMessage")):
        agent({"task": "t"})


async def test_async_scripted_agent_in_a_graph() -> None:
    model = ScriptedChatModel(responses=[envelope_message("success", 1)])
    agent = async_scripted_agent(model, name="writer")

    async def node(state: MessagesState) -> dict[str, Any]:
        return {"messages": [await agent(state)]}

    graph = _one_node_graph(node)
    state = await graph.ainvoke({"messages": []}, {"configurable": {"thread_id": "t2"}})

    assert agent.__name__ == "writer"
    assert [(m.type, m.name) for m in state["messages"]] == [("ai", "writer")]
    assert json.loads(state["messages"][-1].content)["status"] == "success"
    assert [[m.content for m in call] for call in model.calls] == [["begin"]]


def test_graph_messages_stream_mode_keeps_usage_once() -> None:
    # stream_mode="messages" makes model.invoke inside the node go through _stream.
    model = ScriptedChatModel(responses=[_tool_reply()])
    plain = ScriptedChatModel(responses=[_tool_reply()])
    agent = scripted_agent(model)
    graph = _one_node_graph(lambda state: {"messages": [agent(state)]})
    config: Any = {"configurable": {"thread_id": "t3"}}

    streamed = list(
        graph.stream({"messages": [HumanMessage("go")]}, config, stream_mode="messages")
    )
    final = graph.get_state(config).values["messages"][-1]
    expected = plain.invoke([HumanMessage("go")])

    assert len(streamed) > 2
    assert final.usage_metadata == expected.usage_metadata
    assert final.tool_calls == expected.tool_calls
    assert final.response_metadata["model_name"] == "gpt-4o-mini"


def test_envelope_messages_read_as_envelopes() -> None:
    from sanegraph.guards.envelope import coerce_envelope

    as_json = envelope_message("success", {"a": 1}, confidence=0.5)
    as_call = envelope_message("partial", 2, reason="half", as_tool_call=True)

    assert coerce_envelope(as_json)[1] is None
    assert coerce_envelope(as_call)[1] is None
    assert coerce_envelope(as_json)[0].model_dump() == json.loads(str(as_json.content))
    assert coerce_envelope(as_call)[0].model_dump() == as_call.tool_calls[0]["args"]
