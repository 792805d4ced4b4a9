"""Loop detection at the graph tier: the issue's incidents reproduced in real LangGraph graphs
with scripted models and real checkpointers, each stopped by a loop detector and ended by the
task owner; and loops that look alike but make progress, which must not trip.

The unit tier (hand-built windows) is tests/test_loops.py.
"""

from __future__ import annotations

import itertools
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

import pytest
from langchain.agents import create_agent
from langchain_core.messages import AIMessage, AnyMessage, HumanMessage
from langchain_core.messages.tool import tool_call
from langchain_core.tools import ToolException, tool
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.graph import END, START
from langgraph.graph.message import add_messages
from langgraph.prebuilt import ToolNode
from langgraph.types import Command

from sanegraph.graphs import add_task_owner, branch_envelopes, parallel_graph, sequential_graph
from sanegraph.guards import (
    Escalation,
    GuardedState,
    GuardedStateGraph,
    GuardPolicy,
    LoopDetected,
    LoopPolicy,
    OwnerPolicy,
    guard_route,
    guarded,
    outcome_of,
    read_ledger,
)
from sanegraph.guards.testing import (
    ScriptedChatModel,
    async_scripted_agent,
    envelope_message,
    scripted_agent,
)
from sanegraph.guards.trips import LOOP_KINDS

sys.path.insert(0, str(Path(__file__).parent))
from _texts import ASKS, DRAFTS


class State(GuardedState, total=False):
    """State of the hand-built graphs."""

    task: str
    messages: Annotated[list[AnyMessage], add_messages]
    answer: str


def last_trip(state: dict[str, Any]) -> dict[str, Any]:
    """The newest trip, with the keys a loop trip adds."""
    return dict(read_ledger(state)["trips"][-1])


def steps_of(trip: dict[str, Any]) -> list[tuple[str, int]]:
    return [(s["agent"], s["hop"]) for s in trip["steps"]]


def loop_trips(state: dict[str, Any]) -> list[str]:
    return [t["kind"] for t in read_ledger(state)["trips"] if t["kind"] in LOOP_KINDS]


def talking(model: ScriptedChatModel, name: str) -> Callable[..., Any]:
    """An agent that keeps its reply in ``messages`` (the next agent reads it there)."""
    agent = scripted_agent(model, name=name)
    return lambda state: {"messages": [agent(state)]}


def envelope(status: str, result: Any = None, reason: str = "") -> str:
    """An envelope as the JSON content of an AI message."""
    return json.dumps({"status": status, "result": result, "confidence": None, "reason": reason})


# -- 1. the 47-loop: "I need more context" ------------------------------------------------

NEED_MORE = "I need more context"
DOCS = [
    f"Document {i}: Q3 revenue in region {i} grew {i + 2}% on new enterprise accounts."
    for i in range(1, 60)
]
"""The researcher fetches another document every time it is asked."""

REPEAT_6 = (
    "'analyst' repeated the same action 3 times, reaching LoopPolicy.max_repeats=3 (hops 2, "
    "4, 6: 'I need more context'). Let the task owner re-plan; if the repetition is "
    "legitimate, fingerprint more of the step with LoopPolicy.fingerprint_per_agent"
    "['analyst'] (e.g. ('output', 'request')) or raise max_repeats."
)


class Incident:
    """The 47-loop's two agents, on scripted models that could go on for 59 rounds."""

    def __init__(self, *, reworded: bool = False, asynchronous: bool = False) -> None:
        self.researcher_model = ScriptedChatModel(
            [envelope_message("success", doc, confidence=0.8) for doc in DOCS]
        )
        asks = [ASKS[i % len(ASKS)] if reworded else NEED_MORE for i in range(59)]
        self.analyst_model = ScriptedChatModel(
            [envelope_message("partial", None, reason=ask) for ask in asks]
        )
        make = async_scripted_agent if asynchronous else scripted_agent
        self.stages = [
            ("researcher", make(self.researcher_model, name="researcher")),
            ("analyst", make(self.analyst_model, name="analyst")),
        ]

    def graph(self, policy: GuardPolicy, saver: BaseCheckpointSaver[Any]) -> Any:
        return sequential_graph(self.stages, policy=policy).compile(checkpointer=saver)

    @property
    def calls(self) -> tuple[int, int]:
        return self.researcher_model.call_count, self.analyst_model.call_count


def test_the_47_loop_stops_at_the_analysts_third_request(
    saver: BaseCheckpointSaver[Any], config: dict[str, Any]
) -> None:
    incident = Incident()
    graph = incident.graph(GuardPolicy(hops=50), saver)

    state = graph.invoke({"task": "Why did Q3 sales drop?"}, config)

    trip = last_trip(state)
    assert (trip["kind"], trip["detector"], trip["agent"], trip["hop"]) == (
        "loop_repeat",
        "repeat",
        "analyst",
        6,
    )
    assert trip["message"] == REPEAT_6
    assert steps_of(trip) == [("analyst", 2), ("analyst", 4), ("analyst", 6)]
    assert {s["text"] for s in trip["steps"]} == {NEED_MORE}
    # Stopped: neither model was called after the sixth hop.
    assert incident.calls == (3, 3)
    ledger = read_ledger(state)
    assert (ledger["hops"], ledger["status"], ledger["trip_count"]) == (6, "done", 1)
    # The owner keeps the researcher's last document.
    assert outcome_of(state) == {
        "status": "partial",
        "result": DOCS[2],
        "confidence": 0.8,
        "reason": f"loop_repeat: {REPEAT_6} (best partial result kept)",
        "source": "researcher",
    }
    assert graph.get_state(config).next == ()


def test_the_47_loop_in_other_words_stops_as_near_duplicates(
    saver: BaseCheckpointSaver[Any], config: dict[str, Any]
) -> None:
    incident = Incident(reworded=True)
    graph = incident.graph(GuardPolicy(hops=50), saver)

    state = graph.invoke({"task": "Why did Q3 sales drop?"}, config)

    trip = last_trip(state)
    assert (trip["kind"], trip["detector"], trip["hop"]) == (
        "loop_near_duplicate",
        "near_duplicate",
        6,
    )
    assert steps_of(trip) == [("analyst", 2), ("analyst", 4), ("analyst", 6)]
    assert [s["text"] for s in trip["steps"]] == ASKS[:3]
    assert len({s["fp"] for s in trip["steps"]}) == 3  # no two requests were the same
    assert incident.calls == (3, 3)
    outcome = outcome_of(state)
    assert outcome is not None
    assert (outcome["status"], outcome["result"], outcome["source"]) == (
        "partial",
        DOCS[2],
        "researcher",
    )


def test_the_47_loop_in_other_words_with_envelopes_as_tool_calls(
    saver: BaseCheckpointSaver[Any], config: dict[str, Any]
) -> None:
    # Agents that answer with an envelope tool call and keep their replies in "messages":
    # the envelope call is not a tool call, so the rewordings are still near-duplicates.
    researcher_model = ScriptedChatModel(
        [envelope_message("success", doc, confidence=0.8, as_tool_call=True) for doc in DOCS]
    )
    analyst_model = ScriptedChatModel(
        [envelope_message("partial", reason=ASKS[i % 4], as_tool_call=True) for i in range(59)]
    )

    stages = [
        ("researcher", talking(researcher_model, "researcher")),
        ("analyst", talking(analyst_model, "analyst")),
    ]
    graph = sequential_graph(stages, policy=GuardPolicy(hops=50)).compile(checkpointer=saver)

    state = graph.invoke({"task": "Why did Q3 sales drop?"}, config)

    trip = last_trip(state)
    assert (trip["detector"], trip["hop"]) == ("near_duplicate", 6)
    assert {e[5] for e in read_ledger(state)["window"]} == {""}  # no tool calls seen
    assert (researcher_model.call_count, analyst_model.call_count) == (3, 3)
    outcome = outcome_of(state)
    assert outcome is not None
    assert (outcome["status"], outcome["result"]) == ("partial", DOCS[2])


def test_the_47_loop_escalated_continue_clears_the_window_then_accept_partial(
    saver: BaseCheckpointSaver[Any], config: dict[str, Any]
) -> None:
    incident = Incident()
    graph = incident.graph(GuardPolicy(hops=50, owner="escalate"), saver)

    graph.invoke({"task": "Why did Q3 sales drop?"}, config)

    snapshot = graph.get_state(config)
    assert snapshot.next == ("owner",)
    escalation = Escalation.model_validate(snapshot.interrupts[0].value)
    assert (escalation.kind, escalation.detector, escalation.agent) == (
        "loop_repeat",
        "repeat",
        "analyst",
    )
    assert escalation.steps is not None
    assert [(s["agent"], s["hop"], s["text"]) for s in escalation.steps] == [
        ("analyst", 2, NEED_MORE),
        ("analyst", 4, NEED_MORE),
        ("analyst", 6, NEED_MORE),
    ]
    assert escalation.options[0] == "{'action': 'continue'} (the loop window starts afresh)"

    # A human lets it go on: the window starts afresh at the analyst (hop 7), so the same
    # request trips again only at its third repetition since then.
    state = graph.invoke(Command(resume={"action": "continue"}), config)

    ledger = read_ledger(state)
    assert [e[2] for e in ledger["window"]] == [7, 8, 9, 10, 11]
    trip = last_trip(state)
    assert (trip["detector"], trip["hop"]) == ("repeat", 11)
    assert steps_of(trip) == [("analyst", 7), ("analyst", 9), ("analyst", 11)]
    assert incident.calls == (5, 6)
    assert graph.get_state(config).next == ("owner",)

    state = graph.invoke(Command(resume={"action": "accept_partial"}), config)

    ledger = read_ledger(state)
    assert (ledger["status"], ledger["hops"], ledger["trip_count"]) == ("done", 11, 2)
    outcome = outcome_of(state)
    assert outcome is not None
    assert (outcome["status"], outcome["result"], outcome["source"]) == (
        "partial",
        DOCS[4],
        "researcher",
    )
    assert outcome["reason"].endswith("(partial result accepted by a human)")
    assert incident.calls == (5, 6)
    assert graph.get_state(config).next == ()


async def test_the_47_loop_async_escalated_and_resumed(
    async_saver: BaseCheckpointSaver[Any], config: dict[str, Any]
) -> None:
    incident = Incident(reworded=True, asynchronous=True)
    graph = incident.graph(GuardPolicy(hops=50, owner="escalate"), async_saver)

    await graph.ainvoke({"task": "Why did Q3 sales drop?"}, config)

    snapshot = await graph.aget_state(config)
    escalation = Escalation.model_validate(snapshot.interrupts[0].value)
    assert (escalation.detector, escalation.hops) == ("near_duplicate", 6)
    assert escalation.steps is not None
    assert [s["hop"] for s in escalation.steps] == [2, 4, 6]
    assert incident.calls == (3, 3)

    state = await graph.ainvoke(Command(resume={"action": "continue"}), config)
    trip = last_trip(state)
    assert (trip["detector"], trip["hop"]) == ("near_duplicate", 11)
    assert steps_of(trip) == [("analyst", 7), ("analyst", 9), ("analyst", 11)]

    state = await graph.ainvoke(Command(resume={"action": "accept_partial"}), config)
    outcome = outcome_of(state)
    assert outcome is not None
    assert (outcome["status"], outcome["result"]) == ("partial", DOCS[4])
    assert read_ledger(state)["status"] == "done"
    assert incident.calls == (5, 6)


def test_without_loop_detection_the_47_loop_runs_to_the_hop_cap(
    saver: BaseCheckpointSaver[Any], config: dict[str, Any]
) -> None:
    incident = Incident()
    graph = incident.graph(GuardPolicy(hops=47, loops=False), saver)

    state = graph.invoke({"task": "Why did Q3 sales drop?"}, config)

    ledger = read_ledger(state)
    assert [t["kind"] for t in ledger["trips"]] == ["hop_cap"]
    assert ledger["hops"] == 47
    assert incident.calls == (24, 23)
    # The window holds bare [agent, fp] pairs: nothing a detector reads.
    assert {len(e) for e in ledger["window"]} == {2}
    outcome = outcome_of(state)
    assert outcome is not None
    assert (outcome["status"], outcome["result"]) == ("partial", DOCS[23])


def test_owner_raise_raises_loop_detected_with_the_steps(
    saver: BaseCheckpointSaver[Any], config: dict[str, Any]
) -> None:
    incident = Incident()
    graph = incident.graph(GuardPolicy(hops=50, owner="raise"), saver)

    with pytest.raises(LoopDetected, match=re.escape(REPEAT_6)) as caught:
        graph.invoke({"task": "Why did Q3 sales drop?"}, config)

    error = caught.value
    assert (error.kind, error.agent, error.limit, error.observed) == (
        "loop_repeat",
        "analyst",
        3,
        3,
    )
    assert [(s["agent"], s["hop"]) for s in error.trip["steps"]] == [
        ("analyst", 2),
        ("analyst", 4),
        ("analyst", 6),
    ]
    assert incident.calls == (3, 3)


def test_a_new_turn_after_the_owner_ended_the_loop_starts_detection_afresh(
    saver: BaseCheckpointSaver[Any], config: dict[str, Any]
) -> None:
    incident = Incident()
    # Turn 2: the analyst asks once, then answers.
    incident.analyst_model = ScriptedChatModel(
        [
            *[envelope_message("partial", None, reason=NEED_MORE)] * 4,
            envelope_message(
                "success", "Q3 dropped with the loss of two accounts.", confidence=0.9
            ),
        ]
    )
    incident.stages[1] = ("analyst", scripted_agent(incident.analyst_model, name="analyst"))
    graph = incident.graph(GuardPolicy(hops=50), saver)
    state = graph.invoke({"task": "Why did Q3 sales drop?"}, config)
    assert (last_trip(state)["hop"], read_ledger(state)["status"]) == (6, "done")

    state = graph.invoke({"task": "Why did Q3 sales drop in EMEA?"}, config)

    ledger = read_ledger(state)
    assert (ledger["trip_count"], ledger["status"], ledger["hops"]) == (1, "running", 10)
    assert ledger["envelopes"]["analyst"]["status"] == "success"


def test_resuming_a_paused_turn_keeps_its_window(
    saver: BaseCheckpointSaver[Any], config: dict[str, Any]
) -> None:
    # Paused after every analyst step and resumed with None: still one turn, so the loop
    # trips at hop 6 as it does in one go (new input would have started a new window).
    incident = Incident()
    graph = sequential_graph(incident.stages, policy=GuardPolicy(hops=50)).compile(
        checkpointer=saver, interrupt_after=["analyst"]
    )
    state = graph.invoke({"task": "Why did Q3 sales drop?"}, config)
    nexts = []
    while graph.get_state(config).next:
        nexts.append(graph.get_state(config).next)
        state = graph.invoke(None, config)

    assert nexts == [("researcher",), ("researcher",), ("owner",)]
    assert steps_of(last_trip(state)) == [("analyst", 2), ("analyst", 4), ("analyst", 6)]
    assert read_ledger(state)["status"] == "done"


# -- 2. the 58-copy chain ------------------------------------------------------------------

SUMMARY = "Summary: the customer wants a refund for order 1182 because it arrived late."


def test_a_58_agent_copy_chain_stops_at_the_third_copy(
    saver: BaseCheckpointSaver[Any], config: dict[str, Any]
) -> None:
    # Each agent reads the conversation and hands the last answer on, token for token.
    models = [
        ScriptedChatModel([envelope_message("success", SUMMARY, confidence=0.9)]) for _ in range(58)
    ]

    stages = [(f"agent_{i}", talking(m, f"agent_{i}")) for i, m in enumerate(models)]
    graph = sequential_graph(stages, policy=GuardPolicy(hops=100)).compile(checkpointer=saver)

    state = graph.invoke({"task": "Summarize ticket 1182."}, config)

    trip = last_trip(state)
    assert (trip["kind"], trip["detector"], trip["hop"], trip["observed"]) == (
        "loop_copy",
        "copy",
        3,
        3,
    )
    assert steps_of(trip) == [("agent_0", 1), ("agent_1", 2), ("agent_2", 3)]
    # What agent_1 and agent_2 were handed is what they passed on.
    assert [m.calls[0][-1].content for m in models[1:3]] == [
        json.dumps({"status": "success", "result": SUMMARY, "confidence": 0.9, "reason": ""})
    ] * 2
    assert [m.call_count for m in models] == [1, 1, 1] + [0] * 55
    outcome = outcome_of(state)
    assert outcome is not None
    assert (outcome["status"], outcome["result"], outcome["source"]) == (
        "partial",
        SUMMARY,
        "agent_2",
    )
    assert outcome["reason"].startswith(
        "loop_copy: The same result was passed on unchanged 3 times (by 'agent_0', "
        "'agent_1', 'agent_2'), reaching LoopPolicy.max_copies=3"
    )


# -- 3. the tool-error loop -------------------------------------------------------------------


class Weather:
    """A weather tool whose service is down: every call raises, and is recorded."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

        @tool
        def weather(city: str, attempt: int = 0) -> str:
            """The weather in a city."""
            self.calls.append({"city": city, "attempt": attempt})
            raise ToolException("weather service unavailable (503)")

        weather.handle_tool_error = True
        self.tool = weather


def react_graph(
    model: ScriptedChatModel, tools: list[Any], policy: GuardPolicy, saver: BaseCheckpointSaver[Any]
) -> Any:
    """agent -> tools -> agent until the agent answers without a tool call."""

    def agent(state: dict[str, Any]) -> dict[str, Any]:
        return {"messages": [model.invoke(state["messages"])]}

    def route(state: dict[str, Any]) -> Literal["tools", "__end__"]:
        return "tools" if getattr(state["messages"][-1], "tool_calls", None) else END

    builder = GuardedStateGraph(State)
    builder.add_node("agent", guarded(agent, policy))
    builder.add_node("tools", ToolNode(tools))
    builder.add_edge(START, "agent")
    builder.add_conditional_edges("agent", guard_route(route, policy=policy))
    builder.add_edge("tools", "agent")
    add_task_owner(builder, policy)
    return builder.compile(checkpointer=saver)


def calling(
    name: str, args_of: Callable[[int], dict[str, Any]], reason: str, result: Any = None
) -> list[AIMessage]:
    """A model that calls the tool again and again, each call with a fresh id."""
    return [
        AIMessage(
            envelope("partial", result, reason),
            tool_calls=[tool_call(name=name, args=args_of(i), id=f"call_{i}")],
        )
        for i in range(1, 40)
    ]


def test_a_tool_error_loop_stops_at_max_tool_repeats(
    saver: BaseCheckpointSaver[Any], config: dict[str, Any]
) -> None:
    weather = Weather()
    model = ScriptedChatModel(calling("weather", lambda i: {"city": "Paris"}, "checking Paris"))
    graph = react_graph(model, [weather.tool], GuardPolicy(hops=40), saver)

    state = graph.invoke({"messages": [HumanMessage("What is the weather in Paris?")]}, config)

    trip = last_trip(state)
    assert (trip["kind"], trip["detector"], trip["hop"]) == ("tool_repeat", "tool_repeat", 4)
    assert (trip["limit"], trip["observed"]) == (3, 4)
    assert trip["message"].startswith(
        "Tool 'weather' was called 4 times with the same arguments and the same result, "
        "more than LoopPolicy.max_tool_repeats=3 (agent='agent', hops 2, 3, 4)."
    )
    assert [s["text"] for s in trip["steps"]] == ["weather -> error"] * 3 + ["weather -> pending"]
    # The fourth call was asked for but never ran.
    assert len(weather.calls) == 3
    assert model.call_count == 4
    # The owner ends the run and answers the call that never ran, so that the thread's
    # next turn does not send a provider an open tool call.
    assert [(m.type, getattr(m, "status", None)) for m in state["messages"]] == [
        ("human", None),
        *[("ai", None), ("tool", "error")] * 4,
    ]
    answer = state["messages"][-1]
    assert (answer.tool_call_id, answer.name) == ("call_4", "weather")
    assert answer.content == (
        "Not run: tool_repeat stopped the run before this tool call (the run ended, best "
        "partial result kept)."
    )
    # The agent never had a result: the owner ends the run with none.
    outcome = outcome_of(state)
    assert outcome is not None
    assert (outcome["status"], outcome["result"], outcome["source"]) == ("failed", None, None)
    assert read_ledger(state)["status"] == "done"


def test_continue_after_a_tool_loop_answers_the_call_the_trip_kept_from_running(
    saver: BaseCheckpointSaver[Any], config: dict[str, Any]
) -> None:
    """The agent's step asked for a tool and tripped; continuing goes back to the agent,
    which must not be sent its own tool call unanswered (providers reject that)."""
    weather = Weather()
    answer = AIMessage(envelope("success", "No forecast today: the service is down."))
    model = ScriptedChatModel(
        [*calling("weather", lambda i: {"city": "Paris"}, "checking")[:4], answer]
    )
    graph = react_graph(model, [weather.tool], GuardPolicy(hops=40, owner="escalate"), saver)

    graph.invoke({"messages": [HumanMessage("What is the weather in Paris?")]}, config)
    escalation = Escalation.model_validate(graph.get_state(config).interrupts[0].value)
    assert escalation.kind == "tool_repeat"
    assert len(weather.calls) == 3

    state = graph.invoke(Command(resume={"action": "continue"}), config)

    # The agent's fifth call saw call_4 answered as not run, and the tool never ran it.
    sent = model.calls[4]
    asked = [c["id"] for m in sent if isinstance(m, AIMessage) for c in m.tool_calls]
    answered = [m.tool_call_id for m in sent if m.type == "tool"]
    assert asked == answered == ["call_1", "call_2", "call_3", "call_4"]
    assert sent[-1].content == (
        "Not run: tool_repeat stopped the run before this tool call (a human let the run "
        "continue; call the tool again if needed)."
    )
    assert len(weather.calls) == 3
    assert read_ledger(state)["status"] == "running"
    assert state["messages"][-1].content == answer.content
    assert graph.get_state(config).next == ()


def test_a_tool_error_loop_with_changing_arguments_stops_at_max_tool_errors(
    saver: BaseCheckpointSaver[Any], config: dict[str, Any]
) -> None:
    weather = Weather()
    cached = "Paris: 14 degrees and cloudy, from the cache of an hour ago."
    model = ScriptedChatModel(
        calling("weather", lambda i: {"city": "Paris", "attempt": i}, "retrying", cached)
    )
    policy = GuardPolicy(hops=40, owner=OwnerPolicy(by_kind={"tool_errors": "escalate"}))
    graph = react_graph(model, [weather.tool], policy, saver)

    state = graph.invoke({"messages": [HumanMessage("What is the weather in Paris?")]}, config)

    trip = last_trip(state)
    assert (trip["kind"], trip["detector"], trip["hop"]) == ("tool_errors", "tool_errors", 5)
    assert (trip["limit"], trip["observed"]) == (3, 4)
    assert [s["hop"] for s in trip["steps"]] == [2, 3, 4, 5]
    assert [c["attempt"] for c in weather.calls] == [1, 2, 3, 4]
    assert model.call_count == 5
    escalation = Escalation.model_validate(graph.get_state(config).interrupts[0].value)
    assert (escalation.detector, escalation.observed) == ("tool_errors", 4)

    # A human sees the service is down and aborts; the outcome keeps the cached answer.
    state = graph.invoke(Command(resume={"action": "abort", "reason": "service down"}), config)

    assert read_ledger(state)["status"] == "aborted"
    outcome = outcome_of(state)
    assert outcome is not None
    assert (outcome["status"], outcome["result"], outcome["source"]) == ("failed", cached, "agent")
    assert outcome["reason"].endswith("(aborted by a human: service down)")
    assert len(weather.calls) == 4


def test_a_langchain_agents_own_tool_error_loop_is_caught_after_its_step(
    saver: BaseCheckpointSaver[Any], config: dict[str, Any]
) -> None:
    # create_agent runs its ReAct loop inside one guarded step (a subgraph): the detector
    # sees the step's five failed calls when it returns, and the planner, which would send
    # it back to try again, never runs a second time.
    weather = Weather()
    agent_model = ScriptedChatModel(
        [
            *[
                AIMessage(
                    "", tool_calls=[tool_call(name="weather", args={"city": "Paris"}, id=f"c{i}")]
                )
                for i in range(1, 6)
            ],
            envelope_message("failed", None, reason="the weather service is down"),
        ]
    )
    planner_model = ScriptedChatModel(
        [envelope_message("success", f"Plan {i}: ask the weather agent for Paris.") for i in (1, 2)]
    )
    stages = [
        ("planner", scripted_agent(planner_model, name="planner")),
        ("weather_agent", create_agent(agent_model, tools=[weather.tool])),
    ]
    graph = sequential_graph(stages, policy=GuardPolicy(hops=20)).compile(checkpointer=saver)

    state = graph.invoke({"messages": [HumanMessage("What is the weather in Paris?")]}, config)

    trip = last_trip(state)
    assert (trip["detector"], trip["agent"], trip["hop"], trip["observed"]) == (
        "tool_repeat",
        "weather_agent",
        2,
        5,
    )
    assert len(weather.calls) == 5
    assert (planner_model.call_count, agent_model.call_count) == (1, 6)
    outcome = outcome_of(state)
    assert outcome is not None
    assert (outcome["status"], outcome["result"], outcome["source"]) == (
        "partial",
        "Plan 1: ask the weather agent for Paris.",
        "planner",
    )


# -- 4. the non-converging manager ------------------------------------------------------------

PLANS = [
    f"Plan {i}: {p}"
    for i, p in enumerate(
        [
            "split the question by region and ask the worker for each one.",
            "start from the churn report instead and look for the cause there.",
            "compare the pricing change against the sales calendar for the quarter.",
            "interview the account managers of the largest customers.",
            "rebuild the revenue model from raw invoices.",
            "check whether a competitor launched something in the same weeks.",
        ]
        * 5,
        1,
    )
]
ATTEMPTS = [
    f"Attempt {i}: {a}"
    for i, a in enumerate(
        [
            "the regional split shows no single region to blame.",
            "the churn report is inconclusive on its own.",
            "prices and the calendar line up only partly.",
            "the account managers disagree with each other.",
            "the invoices match the reported revenue.",
            "no competitor launch lines up with the drop.",
        ]
        * 5,
        1,
    )
]
"""Every plan and attempt is new (numbered), but none of them sets ``answer``."""


def manager_graph(policy: GuardPolicy, saver: BaseCheckpointSaver[Any]) -> tuple[Any, list[Any]]:
    """A manager that re-plans after every attempt until ``answer`` is set, which the worker
    never does."""
    manager_model = ScriptedChatModel(
        [envelope_message("partial", {"plan": p}, reason="re-planning") for p in PLANS]
    )
    worker_model = ScriptedChatModel(
        [envelope_message("partial", a, reason="no answer yet") for a in ATTEMPTS]
    )
    manager = scripted_agent(manager_model, name="manager")
    worker = scripted_agent(worker_model, name="worker")

    def next_step(state: dict[str, Any]) -> Literal["worker", "__end__"]:
        return END if state.get("answer") else "worker"

    builder = GuardedStateGraph(State)
    builder.add_node(
        "manager", guarded(lambda s: {"messages": [manager(s)]}, policy, name="manager")
    )
    builder.add_node("worker", guarded(lambda s: {"messages": [worker(s)]}, policy, name="worker"))
    builder.add_edge(START, "manager")
    builder.add_conditional_edges("manager", guard_route(next_step, policy=policy))
    builder.add_conditional_edges("worker", guard_route("manager", policy=policy))
    add_task_owner(builder, policy)
    return builder.compile(checkpointer=saver), [manager_model, worker_model]


def test_a_non_converging_manager_stops_at_max_stalls(
    saver: BaseCheckpointSaver[Any], config: dict[str, Any]
) -> None:
    policy = GuardPolicy(
        hops=60,
        loops=LoopPolicy(watch=("answer",)),
        owner=OwnerPolicy(by_kind={"no_progress": "abort"}),
    )
    graph, models = manager_graph(policy, saver)

    state = graph.invoke({"task": "Why did Q3 sales drop?"}, config)

    trip = last_trip(state)
    assert (trip["kind"], trip["detector"], trip["hop"], trip["observed"]) == (
        "no_progress",
        "no_progress",
        4,
        4,
    )
    assert trip["message"].startswith("No progress in watch=('answer',) for 4 steps")
    assert steps_of(trip) == [("manager", 1), ("worker", 2), ("manager", 3), ("worker", 4)]
    assert [m.call_count for m in models] == [2, 2]
    assert "answer" not in state
    # The owner aborts; the outcome still carries the last attempt for a human to read.
    ledger = read_ledger(state)
    assert ledger["status"] == "aborted"
    outcome = outcome_of(state)
    assert outcome is not None
    assert (outcome["status"], outcome["result"], outcome["source"]) == (
        "failed",
        ATTEMPTS[1],
        "worker",
    )
    assert outcome["reason"].endswith("(aborted by policy)")


def test_the_manager_without_watch_sees_new_results_as_progress(
    saver: BaseCheckpointSaver[Any], config: dict[str, Any]
) -> None:
    # Without watch, every new plan and attempt is progress: nothing but the hop cap stops it.
    graph, models = manager_graph(GuardPolicy(hops=20), saver)

    state = graph.invoke({"task": "Why did Q3 sales drop?"}, config)

    assert [t["kind"] for t in read_ledger(state)["trips"]] == ["hop_cap"]
    assert [m.call_count for m in models] == [10, 10]


# -- false positives: loops that make progress ------------------------------------------------


def test_pagination_with_the_same_call_and_new_pages_does_not_trip(
    saver: BaseCheckpointSaver[Any], config: dict[str, Any]
) -> None:
    pages = iter([*(f"orders {n}..{n + 19}" for n in range(1, 240, 20)), "no more orders"])

    @tool
    def next_page() -> str:
        """The next page of orders."""
        return next(pages)

    replies = [
        AIMessage(
            envelope("partial", f"{20 * i} orders read", "reading the next page"),
            tool_calls=[tool_call(name="next_page", args={}, id=f"call_{i}")],
        )
        for i in range(13)
    ]
    replies.append(envelope_message("success", "260 orders read", confidence=0.9))
    model = ScriptedChatModel(replies)
    graph = react_graph(model, [next_page], GuardPolicy(hops=30), saver)

    state = graph.invoke({"messages": [HumanMessage("List every order.")]}, config)

    ledger = read_ledger(state)
    assert (ledger["trips"], ledger["hops"]) == ([], 14)
    assert ledger["envelopes"]["agent"]["result"] == "260 orders read"
    assert graph.get_state(config).next == ()


def test_polling_a_job_whose_status_changes_does_not_trip(
    saver: BaseCheckpointSaver[Any], config: dict[str, Any]
) -> None:
    statuses = iter([*(f"job j1 running: {p}% done" for p in range(5, 100, 10)), "job j1 done"])

    @tool
    def job_status(job_id: str) -> str:
        """The status of a job."""
        return next(statuses)

    # The poller says the same thing every time; the tool's answers are what change.
    replies = [
        AIMessage(
            envelope("partial", None, "waiting for job j1"),
            tool_calls=[tool_call(name="job_status", args={"job_id": "j1"}, id=f"call_{i}")],
        )
        for i in range(11)
    ]
    replies.append(envelope_message("success", "job j1 finished", confidence=0.9))
    model = ScriptedChatModel(replies)
    graph = react_graph(model, [job_status], GuardPolicy(hops=30), saver)

    state = graph.invoke({"messages": [HumanMessage("Wait for job j1.")]}, config)

    assert read_ledger(state)["trips"] == []
    assert model.call_count == 12
    assert graph.get_state(config).next == ()


def test_polling_a_job_stuck_on_the_same_status_still_trips(
    saver: BaseCheckpointSaver[Any], config: dict[str, Any]
) -> None:
    # The counterpart: once the answers stop changing, the poll is a loop again.
    statuses = itertools.chain(
        ["job j1 running: 5% done", "job j1 running: 15% done"],
        itertools.repeat("job j1 running: 25% done"),
    )
    runs: list[str] = []

    @tool
    def job_status(job_id: str) -> str:
        """The status of a job."""
        runs.append(job_id)
        return next(statuses)

    replies = [
        AIMessage(
            envelope("partial", None, "waiting for job j1"),
            tool_calls=[tool_call(name="job_status", args={"job_id": "j1"}, id=f"call_{i}")],
        )
        for i in range(30)
    ]
    model = ScriptedChatModel(replies)
    graph = react_graph(model, [job_status], GuardPolicy(hops=30), saver)

    state = graph.invoke({"messages": [HumanMessage("Wait for job j1.")]}, config)

    trip = last_trip(state)
    assert (trip["detector"], trip["hop"], trip["observed"]) == ("tool_repeat", 6, 4)
    assert [s["text"] for s in trip["steps"]][-1] == "job_status -> pending"
    assert len(runs) == 5
    assert read_ledger(state)["status"] == "done"


CRITIQUES = [
    "Too vague: say who it is for and what it saves.",
    "Name the product and give the setup time.",
    "Mention which code hosts it supports.",
    "Give team sizes and the price.",
    "Add a call to action, like the free trial.",
]


def test_a_writer_who_really_improves_the_draft_does_not_trip(
    saver: BaseCheckpointSaver[Any], config: dict[str, Any]
) -> None:
    writer_model = ScriptedChatModel(
        [envelope_message("success", d, confidence=0.8) for d in DRAFTS]
    )
    critic_model = ScriptedChatModel(
        [
            *(envelope_message("partial", None, reason=c) for c in CRITIQUES),
            envelope_message("success", "Approved.", confidence=0.9),
        ]
    )
    stages = [
        ("writer", scripted_agent(writer_model, name="writer")),
        ("critic", scripted_agent(critic_model, name="critic")),
    ]
    graph = sequential_graph(stages, policy=GuardPolicy(hops=20)).compile(checkpointer=saver)

    state = graph.invoke({"task": "Write the product blurb."}, config)

    ledger = read_ledger(state)
    assert ledger["trips"] == []
    assert (ledger["hops"], writer_model.call_count, critic_model.call_count) == (12, 6, 6)
    assert ledger["envelopes"]["writer"]["result"] == DRAFTS[-1]


def test_two_agents_alternating_with_progress_run_to_the_hop_cap(
    saver: BaseCheckpointSaver[Any], config: dict[str, Any]
) -> None:
    researcher_model = ScriptedChatModel(
        [
            envelope_message("success", f"Finding {i}: market {i} grew {i * 3 % 17}% last year.")
            for i in range(30)
        ]
    )
    writer_model = ScriptedChatModel(
        [
            envelope_message("partial", f"Section {i} now covers market {i}.", reason="next market")
            for i in range(30)
        ]
    )
    stages = [
        ("researcher", scripted_agent(researcher_model, name="researcher")),
        ("writer", scripted_agent(writer_model, name="writer")),
    ]
    graph = sequential_graph(stages, policy=GuardPolicy(hops=40)).compile(checkpointer=saver)

    state = graph.invoke({"task": "Write the market report."}, config)

    ledger = read_ledger(state)
    assert [t["kind"] for t in ledger["trips"]] == ["hop_cap"]
    assert (researcher_model.call_count, writer_model.call_count) == (20, 20)
    assert loop_trips(state) == []


def test_a_classifier_answering_the_same_for_new_requests_does_not_trip_with_request_covered(
    saver: BaseCheckpointSaver[Any], config: dict[str, Any]
) -> None:
    # A chat thread: every turn the classifier rightly says "billing". Its output alone
    # repeats; covering what it was asked tells the turns apart.
    questions = [
        "Why was I charged twice?",
        "Can I get an invoice for March?",
        "How do I change my card?",
        "Refund my last payment, please.",
        "Which plan am I on?",
    ]

    def stages() -> list[tuple[str, Any]]:
        classifier_model = ScriptedChatModel(
            [envelope_message("success", "billing", confidence=0.9)], cycle=True
        )
        billing_model = ScriptedChatModel(
            [envelope_message("success", f"Answered: {q}", confidence=0.9) for q in questions]
        )
        return [
            ("classifier", talking(classifier_model, "classifier")),
            ("billing", talking(billing_model, "billing")),
        ]

    covered = LoopPolicy(fingerprint_per_agent={"classifier": ("output", "request")})
    graph = sequential_graph(stages(), policy=GuardPolicy(hops=50, loops=covered)).compile(
        checkpointer=saver
    )

    for question in questions:
        state = graph.invoke({"messages": [HumanMessage(question)]}, config)

    ledger = read_ledger(state)
    assert (ledger["trips"], ledger["hops"], ledger["status"]) == ([], 10, "running")

    # Without it, the turns are still told apart: each new input starts a new window
    # (before, the third "billing" was a repeat: hops 1, 3, 5).
    graph = sequential_graph(stages(), policy=GuardPolicy(hops=50)).compile(checkpointer=saver)
    other = {"configurable": {"thread_id": config["configurable"]["thread_id"] + "-bare"}}
    for turn, question in enumerate(questions, 1):
        state = graph.invoke({"messages": [HumanMessage(question)]}, other)
        ledger = read_ledger(state)
        assert (ledger["trips"], ledger["hops"], ledger["status"]) == ([], 2 * turn, "running")
        assert [e[0] for e in ledger["window"]] == ["classifier", "billing"]


async def test_each_new_input_is_a_new_turn_async(
    async_saver: BaseCheckpointSaver[Any], config: dict[str, Any]
) -> None:
    classifier = ScriptedChatModel([envelope_message("success", "billing")], cycle=True)
    billing = ScriptedChatModel([envelope_message("success", f"Answer {i}") for i in range(4)])
    stages = [
        ("classifier", async_scripted_agent(classifier, name="classifier")),
        ("billing", async_scripted_agent(billing, name="billing")),
    ]
    graph = sequential_graph(stages, policy=GuardPolicy(hops=50)).compile(checkpointer=async_saver)

    for turn in range(1, 5):
        state = await graph.ainvoke({"task": f"Question {turn}"}, config)
        ledger = read_ledger(state)
        assert (ledger["trips"], ledger["hops"]) == ([], 2 * turn)
        assert [e[0] for e in ledger["window"]] == ["classifier", "billing"]


VERDICT = "No problems found in this section of the contract."


def test_parallel_reviewers_agreeing_in_two_rounds_do_not_trip(
    saver: BaseCheckpointSaver[Any], config: dict[str, Any]
) -> None:
    # Two reviewers read two sections each, in one superstep, and find nothing; the
    # aggregate asks for a second pass. Two rounds are not three repetitions.
    rounds = itertools.count(1)

    def reviewer(state: dict[str, Any]) -> dict[str, Any]:
        return {"status": "success", "result": VERDICT, "confidence": 0.9, "reason": ""}

    def combine(state: dict[str, Any]) -> dict[str, Any]:
        n = next(rounds)
        found = branch_envelopes(state)
        return {
            "status": "success" if n == 2 else "partial",
            "result": f"round {n}: {len(found)} sections clean",
            "confidence": 0.9,
            "reason": "" if n == 2 else "second pass needed",
        }

    builder = parallel_graph(
        {"legal": reviewer, "finance": reviewer},
        combine,
        policy=GuardPolicy(hops=30),
        on_incomplete="again",
    )
    state = builder.compile(checkpointer=saver).invoke({"tasks": ["s1", "s2"]}, config)

    assert read_ledger(state)["trips"] == []
