"""Budgets in guarded graphs: the intake check stops a run before the bill, the owner
receives the trip, and a human can top the budget up and resume.

Graph tier, with real LangGraph, real checkpointers and scripted chat models priced by
genai-prices (no hand-written price anywhere). Scenarios of issue 3: the runaway session,
and the interrupt-and-top-up cycle resumed twice.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from typing import Annotated, Any, cast

import pytest
from langchain_core.messages import AIMessage, AnyMessage, HumanMessage
from langchain_core.messages.utils import count_tokens_approximately
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.graph import END, START
from langgraph.graph.message import add_messages
from langgraph.types import Command, Send

from sanegraph.guards import (
    Budget,
    BudgetExceeded,
    ConfigurationError,
    Escalation,
    GuardedState,
    GuardedStateGraph,
    GuardPolicy,
    InvalidDecision,
    OwnerPolicy,
    envelopes_of,
    guard_route,
    guard_sends,
    guarded,
    outcome_of,
    read_ledger,
    task_owner,
)
from sanegraph.guards.budget import Spend, price_call
from sanegraph.guards.testing import ScriptedChatModel

MODEL = "gpt-4o"
"""A model genai-prices knows: every amount below is priced by it."""

PROMPT = "research the tides " + "x" * 40_000
IN = count_tokens_approximately([HumanMessage(PROMPT)])
OUT, MAX = 19_000, 20_000
"""Each call sends a ~10k-token prompt and is answered with 19k tokens (~$0.215 on
gpt-4o); the model sets max_tokens=20k, so the intake check projects every call from it."""


class State(GuardedState, total=False):
    topic: str
    notes: list[str]


def _reply() -> AIMessage:
    usage = {"input_tokens": IN, "output_tokens": OUT, "total_tokens": IN + OUT}
    return AIMessage(content="another document", usage_metadata=cast(Any, usage))


def _model(**kwargs: Any) -> ScriptedChatModel:
    kwargs.setdefault("max_tokens", MAX)
    return ScriptedChatModel([_reply()], model_name=MODEL, cycle=True, **kwargs)


CALL = price_call(MODEL, {"input_tokens": IN, "output_tokens": OUT}, provider="openai")
"""What one answered call costs, in micro-dollars."""
PROJECTED = Spend(
    usd_micros=price_call(MODEL, {"input_tokens": IN, "output_tokens": MAX}, provider="openai"),
    input_tokens=IN,
    output_tokens=MAX,
)
"""What the intake check projects for the next call."""


def _calls_within(usd: float) -> int:
    """How many calls fit: the n-th is made when (n-1) calls + its projection fit."""
    n = 0
    while n * CALL + PROJECTED.usd_micros <= round(usd * 1_000_000):
        n += 1
    return n


def _researcher(model: ScriptedChatModel, calls_per_step: int = 1) -> Callable[..., Any]:
    """An agent that asks the model ``calls_per_step`` times per step, and never stops."""

    def researcher(state: State, config: RunnableConfig) -> dict[str, Any]:
        for _ in range(calls_per_step):
            model.invoke([HumanMessage(PROMPT)], config)
        notes = [*state.get("notes", []), "doc"]
        return {"notes": notes, "envelope": {"status": "partial", "result": len(notes)}}

    return researcher


def _loop_graph(agent: Any, policy: GuardPolicy, saver: Any, **resources: Any) -> Any:
    builder = GuardedStateGraph(State)
    builder.add_node("researcher", guarded(agent, policy))
    builder.add_node("owner", task_owner(policy), destinations=("researcher", END))
    builder.add_edge(START, "researcher")
    builder.add_conditional_edges("researcher", guard_route("researcher", policy=policy))
    return builder.compile(checkpointer=saver, **resources)


# -- the runaway session ------------------------------------------------------------------


def test_the_arithmetic_of_the_runaway_scenario() -> None:
    # Unguarded, the session would run ~186 calls: $40. With $5, 23 calls fit.
    assert 39_000_000 < 186 * CALL < 41_000_000
    assert _calls_within(5) == 23
    assert 23 * CALL + PROJECTED.usd_micros > 5_000_000


@pytest.mark.parametrize("on_exhausted", ["end", "interrupt", "raise"])
def test_the_runaway_session_stops_within_five_dollars(
    saver: BaseCheckpointSaver[Any], config: dict[str, Any], on_exhausted: str
) -> None:
    model = _model()
    policy = GuardPolicy(hops=186, budget=Budget(usd=5, on_exhausted=on_exhausted))  # type: ignore[arg-type]
    graph = _loop_graph(_researcher(model), policy, saver)

    if on_exhausted == "raise":
        with pytest.raises(BudgetExceeded) as caught:
            graph.invoke({"topic": "tides"}, config)
        assert caught.value.trip["limit_key"] == "usd"
    else:
        graph.invoke({"topic": "tides"}, config)

    state = graph.get_state(config)
    ledger = read_ledger(state.values)
    # The 24th call was never made: it would have exceeded $5.
    assert model.call_count == 23
    assert ledger["spent"] == {
        "usd_micros": 23 * CALL,
        "input_tokens": 23 * IN,
        "output_tokens": 23 * OUT,
    }
    assert ledger["spent_by_agent"] == {"researcher": ledger["spent"]}
    assert ledger["hops"] == 23  # the stopped step is not a hop
    assert ledger["warned"] == ["usd"]
    trip = ledger["trips"][-1]
    assert (trip["kind"], trip["limit_key"], trip["agent"], trip["node"]) == (
        "budget",
        "usd",
        "researcher",
        "researcher",
    )
    assert trip["projected"] == PROJECTED.to_dict()
    assert trip["limit"] == 5
    assert trip["observed"] == round((23 * CALL + PROJECTED.usd_micros) / 1e6, 6)
    assert "Budget.usd=5" in trip["message"]
    assert ledger["step_sane"] is False
    if on_exhausted == "interrupt":
        assert state.next == ("owner",)
        escalation = Escalation.model_validate(state.interrupts[0].value)
        assert (escalation.kind, escalation.limit_key, escalation.limit) == ("budget", "usd", 5)
        assert escalation.spent == ledger["spent"]
        assert escalation.spent_by_agent == {"researcher": ledger["spent"]}
        assert escalation.projected == PROJECTED.to_dict()
        assert escalation.options[0] == "{'action': 'continue', 'extra_usd': D}"
    elif on_exhausted == "end":
        outcome = outcome_of(state.values)
        assert outcome is not None
        assert (outcome["status"], outcome["result"]) == ("partial", 23)
        assert ledger["status"] == "done"
    else:
        assert state.next == ("owner",)  # the checkpoint before the owner is kept


def test_a_runaway_inside_one_step_is_stopped_at_the_call(
    saver: BaseCheckpointSaver[Any], config: dict[str, Any]
) -> None:
    # One step that would make 200 calls (an agent's own inner loop).
    model = _model()
    policy = GuardPolicy(budget=Budget(usd=5, on_exhausted="end"))
    graph = _loop_graph(_researcher(model, calls_per_step=200), policy, saver)

    graph.invoke({"topic": "tides"}, config)

    ledger = read_ledger(graph.get_state(config).values)
    assert model.call_count == 23
    assert ledger["spent"]["usd_micros"] == 23 * CALL <= 5_000_000
    assert ledger["hops"] == 0
    assert ledger["trips"][-1]["kind"] == "budget"
    assert ledger["latency_us"]["researcher"] > 0


def test_an_agent_that_swallows_the_trip_is_still_stopped(
    saver: BaseCheckpointSaver[Any], config: dict[str, Any]
) -> None:
    model = _model()

    def stubborn(state: State, config: RunnableConfig) -> dict[str, Any]:
        answered = 0
        for _ in range(100):
            try:
                model.invoke([HumanMessage(PROMPT)], config)
                answered += 1
            except Exception:
                continue
        return {"envelope": {"status": "success", "result": answered}}

    policy = GuardPolicy(budget=Budget(usd=5, on_exhausted="end"))
    graph = _loop_graph(stubborn, policy, saver)
    graph.invoke({"topic": "tides"}, config)

    ledger = read_ledger(graph.get_state(config).values)
    assert model.call_count == 23  # every later attempt was blocked at intake
    assert ledger["trips"][-1]["kind"] == "budget"
    assert ledger["status"] == "done"
    # The step did finish: its envelope and hop count, and the budget still stopped the run.
    assert ledger["hops"] == 1
    assert envelopes_of(graph.get_state(config).values)["researcher"]["result"] == 23


async def test_async_agents_are_metered_and_stopped(
    async_saver: BaseCheckpointSaver[Any], config: dict[str, Any]
) -> None:
    model = _model()

    async def researcher(state: State, config: RunnableConfig) -> dict[str, Any]:
        await model.ainvoke([HumanMessage(PROMPT)], config)
        return {"envelope": {"status": "partial", "result": model.call_count}}

    policy = GuardPolicy(hops=100, budget=Budget(usd=5, on_exhausted="end"))
    graph = _loop_graph(researcher, policy, async_saver)
    await graph.ainvoke({"topic": "tides"}, config)

    ledger = read_ledger((await graph.aget_state(config)).values)
    assert model.call_count == 23
    assert ledger["spent"]["usd_micros"] == 23 * CALL
    assert ledger["trips"][-1]["limit_key"] == "usd"


def test_token_limits_and_per_agent_limits_name_what_tripped(
    saver: BaseCheckpointSaver[Any], config: dict[str, Any]
) -> None:
    model = _model()
    budget = Budget(per_agent={"researcher": {"tokens": 100_000}}, on_exhausted="end")
    graph = _loop_graph(_researcher(model), GuardPolicy(budget=budget), saver)
    graph.invoke({"topic": "tides"}, config)

    ledger = read_ledger(graph.get_state(config).values)
    # 29k tokens per call; the 4th would be 87k spent + ~20k projected > 100k.
    assert model.call_count == 3
    trip = ledger["trips"][-1]
    assert (trip["limit_key"], trip["scope"], trip["limit"]) == (
        "tokens:researcher",
        "agent",
        100_000,
    )
    assert ledger["warned"] == ["tokens:researcher"]


def test_a_budget_without_money_or_token_limits_does_not_meter(
    saver: BaseCheckpointSaver[Any], config: dict[str, Any]
) -> None:
    # A model genai-prices does not know would be a ConfigurationError if metered.
    model = ScriptedChatModel([_reply()], model_name="in-house-model", cycle=True)
    graph = _loop_graph(_researcher(model), GuardPolicy(hops=3, budget=Budget(seconds=60)), saver)
    graph.invoke({"topic": "tides"}, config)

    ledger = read_ledger(graph.get_state(config).values)
    assert (model.call_count, ledger["spent"]) == (3, {})


def test_an_unpriced_model_is_a_configuration_error_at_its_first_call(
    saver: BaseCheckpointSaver[Any], config: dict[str, Any]
) -> None:
    model = ScriptedChatModel([_reply()], model_name="in-house-model", cycle=True)
    graph = _loop_graph(_researcher(model), GuardPolicy(budget=Budget(usd=5)), saver)
    with pytest.raises(ConfigurationError, match="in-house-model"):
        graph.invoke({"topic": "tides"}, config)
    assert model.call_count == 0


def test_a_budget_warning_is_logged_once_per_limit(
    saver: BaseCheckpointSaver[Any], config: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    model = _model()
    policy = GuardPolicy(budget=Budget(usd=5, on_exhausted="end"), hops=186)
    graph = _loop_graph(_researcher(model), policy, saver)
    with caplog.at_level(logging.WARNING, logger="sanegraph"):
        graph.invoke({"topic": "tides"}, config)
    warnings = [r for r in caplog.records if "Budget warning" in r.getMessage()]
    assert len(warnings) == 1
    assert "75%" in warnings[0].getMessage()


# -- parallel branches share one budget -----------------------------------------------------


class Fan(GuardedState, total=False):
    tasks: list[str]


def test_parallel_branches_draw_on_one_budget(
    saver: BaseCheckpointSaver[Any], config: dict[str, Any]
) -> None:
    model = _model()

    def worker(state: dict[str, Any], config: RunnableConfig) -> dict[str, Any]:
        model.invoke([HumanMessage(PROMPT)], config)
        return {"envelope": {"status": "success", "result": state["task"]}}

    policy = GuardPolicy(hops=100, budget=Budget(usd=1, on_exhausted="end"))
    builder = GuardedStateGraph(Fan)
    builder.add_node("worker", guarded(worker, policy))
    builder.add_node("owner", task_owner(policy), destinations=(END,))

    def fan(state: Fan) -> list[Send]:
        return guard_sends(
            state,
            [Send("worker", {"task": t, "sanegraph_branch": t}) for t in state["tasks"]],
        )

    builder.add_conditional_edges(START, fan, ["worker"])
    builder.add_conditional_edges("worker", guard_route(END, policy=policy))
    graph = builder.compile(checkpointer=saver)

    # Round one: 3 branches of ~$0.225 projected each fit in $1, and run: $0.645.
    graph.invoke({"tasks": ["a", "b", "c"]}, config)
    ledger = read_ledger(graph.get_state(config).values)
    assert ledger["spent"]["usd_micros"] == 3 * CALL
    # Round two: the branches start from the same ledger ($0.645), and each would fit
    # alone; they count each other's calls, so only one runs.
    graph.invoke({"tasks": ["d", "e", "f"]}, config)
    ledger = read_ledger(graph.get_state(config).values)
    assert ledger["spent"]["usd_micros"] == 4 * CALL <= 1_000_000
    assert [t["kind"] for t in ledger["trips"]] == ["budget", "budget"]
    statuses = {k: v["status"] for k, v in envelopes_of(graph.get_state(config).values).items()}
    assert [statuses[k] for k in "abc"] == ["success"] * 3
    assert sorted(statuses[k] for k in "def") == ["failed", "failed", "success"]
    assert model.call_count == 4


# -- interrupt and top up ---------------------------------------------------------------------


def test_an_interrupt_and_top_up_cycle_resumed_twice(
    saver: BaseCheckpointSaver[Any], config: dict[str, Any]
) -> None:
    model = _model()
    policy = GuardPolicy(hops=40, budget=Budget(usd=1))  # on_exhausted="interrupt"
    graph = _loop_graph(_researcher(model), policy, saver)

    graph.invoke({"topic": "tides"}, config)
    assert graph.get_state(config).next == ("owner",)
    first = read_ledger(graph.get_state(config).values)
    assert model.call_count == _calls_within(1) == 4
    assert first["spent"]["usd_micros"] == 4 * CALL

    # Top up by $1: the run continues at the researcher and stops again at $2.
    graph.invoke(Command(resume={"action": "continue", "extra_usd": 1}), config)
    second = read_ledger(graph.get_state(config).values)
    assert model.call_count == _calls_within(2) == 9
    assert second["grants"] == {"usd": 1}
    assert second["spent"]["usd_micros"] == 9 * CALL
    escalation = Escalation.model_validate(graph.get_state(config).interrupts[0].value)
    assert escalation.limit == 2
    assert escalation.spent == second["spent"]

    # Top up by $0.50 more, then accept the partial result at the next stop.
    graph.invoke(Command(resume={"action": "continue", "extra_usd": 0.5}), config)
    third = read_ledger(graph.get_state(config).values)
    assert model.call_count == _calls_within(2.5) == 11
    assert third["grants"] == {"usd": 1.5}
    assert third["spent"]["usd_micros"] == 11 * CALL <= 2_500_000
    graph.invoke(Command(resume={"action": "accept_partial"}), config)
    final = graph.get_state(config)
    assert read_ledger(final.values)["status"] == "done"
    assert outcome_of(final.values)["result"] == 11  # type: ignore[index]
    assert read_ledger(final.values)["trip_count"] == 3


def test_a_top_up_must_add_what_ran_out(
    saver: BaseCheckpointSaver[Any], config: dict[str, Any]
) -> None:
    model = _model()
    graph = _loop_graph(_researcher(model), GuardPolicy(budget=Budget(usd=1)), saver)
    graph.invoke({"topic": "tides"}, config)

    for wrong in (
        {"action": "continue"},
        {"action": "continue", "extra_tokens": 50_000},
        {"action": "continue", "extra_usd": -1},
    ):
        with pytest.raises(InvalidDecision, match=r"extra_usd") as caught:
            graph.invoke(Command(resume=wrong), config)
        assert "still paused" in str(caught.value)
    # Nothing was lost: the same escalation is still waiting, and a valid answer works.
    assert graph.get_state(config).next == ("owner",)
    assert model.call_count == 4
    graph.invoke(Command(resume={"action": "abort", "reason": "too dear"}), config)
    assert read_ledger(graph.get_state(config).values)["status"] == "aborted"


def test_a_token_top_up_grants_the_limit_that_tripped(
    saver: BaseCheckpointSaver[Any], config: dict[str, Any]
) -> None:
    model = _model()
    budget = Budget(per_agent={"researcher": {"output_tokens": 40_000}})
    graph = _loop_graph(_researcher(model), GuardPolicy(budget=budget), saver)
    graph.invoke({"topic": "tides"}, config)
    assert model.call_count == 2  # 19k + 19k; a third projects 20k more: 58k > 40k

    graph.invoke(Command(resume={"action": "continue", "extra_tokens": 19_000}), config)
    ledger = read_ledger(graph.get_state(config).values)
    assert ledger["grants"] == {"output_tokens:researcher": 19_000}
    assert model.call_count == 3


def test_by_kind_overrides_on_exhausted(
    saver: BaseCheckpointSaver[Any], config: dict[str, Any]
) -> None:
    model = _model()
    policy = GuardPolicy(budget=Budget(usd=1), owner=OwnerPolicy(by_kind={"budget": "abort"}))
    graph = _loop_graph(_researcher(model), policy, saver)
    graph.invoke({"topic": "tides"}, config)
    assert read_ledger(graph.get_state(config).values)["status"] == "aborted"


def test_raise_keeps_the_trip_and_the_checkpoint(
    saver: BaseCheckpointSaver[Any], config: dict[str, Any]
) -> None:
    model = _model()
    graph = _loop_graph(
        _researcher(model), GuardPolicy(budget=Budget(usd=1, on_exhausted="raise")), saver
    )
    with pytest.raises(BudgetExceeded) as caught:
        graph.invoke({"topic": "tides"}, config)
    assert isinstance(caught.value, RuntimeError)
    assert caught.value.trip["projected"] == PROJECTED.to_dict()
    assert caught.value.limit == 1
    assert read_ledger(graph.get_state(config).values)["spent"]["usd_micros"] == 4 * CALL


async def test_async_top_up(async_saver: BaseCheckpointSaver[Any], config: dict[str, Any]) -> None:
    model = _model()

    async def researcher(state: State, config: RunnableConfig) -> dict[str, Any]:
        await model.ainvoke([HumanMessage(PROMPT)], config)
        return {"envelope": {"status": "partial", "result": model.call_count}}

    graph = _loop_graph(researcher, GuardPolicy(hops=40, budget=Budget(usd=1)), async_saver)
    await graph.ainvoke({"topic": "tides"}, config)
    await graph.ainvoke(Command(resume={"action": "continue", "extra_usd": 1}), config)
    ledger = read_ledger((await graph.aget_state(config)).values)
    assert model.call_count == 9
    assert ledger["spent"]["usd_micros"] == 9 * CALL
    assert ledger["grants"] == {"usd": 1}


def test_a_blocked_call_is_not_logged_as_a_callback_error(
    saver: BaseCheckpointSaver[Any], config: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    graph = _loop_graph(
        _researcher(_model()), GuardPolicy(budget=Budget(usd=1, on_exhausted="end")), saver
    )
    with caplog.at_level(logging.WARNING):
        graph.invoke({"topic": "tides"}, config)
    assert read_ledger(graph.get_state(config).values)["trips"][-1]["kind"] == "budget"
    assert not [r for r in caplog.records if "Error in BudgetMeter" in r.getMessage()]

    # Other callback errors still show: an unpriced model is a mistake to fix.
    unpriced = ScriptedChatModel([_reply()], model_name="in-house-model", cycle=True)
    other = _loop_graph(_researcher(unpriced), GuardPolicy(budget=Budget(usd=1)), saver)
    with caplog.at_level(logging.WARNING), pytest.raises(ConfigurationError):
        other.invoke({"topic": "tides"}, {"configurable": {"thread_id": "unpriced"}})
    assert [r for r in caplog.records if "Error in BudgetMeter" in r.getMessage()]


# -- shared pools and journals: resources, given to compile ----------------------------------


def test_pool_and_journal_must_be_what_they_say() -> None:
    builder = GuardedStateGraph(State)
    builder.add_node("researcher", lambda state: {})
    builder.add_edge(START, "researcher")
    with pytest.raises(ConfigurationError, match=r"compile\(pool=...\) must be a shared pool"):
        builder.compile(pool=object())  # type: ignore[arg-type]
    with pytest.raises(
        ConfigurationError, match=r"compile\(journal=...\) must have thread_paid/prior_calls"
    ):
        builder.compile(journal="runs/journal.sqlite")  # type: ignore[arg-type]


def test_pool_and_journal_in_a_policy_say_where_they_moved() -> None:
    with pytest.raises(ConfigurationError, match=re.escape("Budget(pool=...) moved")):
        Budget(pool=_MemoryPool(1))
    with pytest.raises(ConfigurationError, match=re.escape("GuardPolicy(journal=...) moved")):
        GuardPolicy(journal="runs/journal.sqlite")


class _MemoryPool:
    """A one-process pool (the SpendPool protocol), in micro-dollars."""

    def __init__(self, usd: float) -> None:
        self.left = round(usd * 1_000_000)

    def reserve(self, amount: Spend, *, key: str) -> Spend | None:
        if amount.usd_micros > self.left:
            return None
        self.left -= amount.usd_micros
        return amount

    def commit(self, reservation: Spend, actual: Spend) -> None:
        self.left += reservation.usd_micros - actual.usd_micros

    def release(self, reservation: Spend) -> None:
        self.left += reservation.usd_micros


def test_a_pool_trip_is_resumed_after_the_pool_is_raised(
    saver: BaseCheckpointSaver[Any], config: dict[str, Any]
) -> None:
    model, pool = _model(), _MemoryPool(1)
    graph = _loop_graph(_researcher(model), GuardPolicy(hops=40, budget=Budget()), saver, pool=pool)
    graph.invoke({"topic": "tides"}, config)
    assert model.call_count == 4
    escalation = Escalation.model_validate(graph.get_state(config).interrupts[0].value)
    assert (escalation.limit_key, escalation.projected) == ("pool", None)
    assert escalation.options[0] == "{'action': 'continue'} (after raising the pool's limit)"

    with pytest.raises(InvalidDecision, match=r"set_limits"):
        graph.invoke(Command(resume={"action": "continue", "extra_usd": 1}), config)
    pool.left += 1_000_000  # what SharedBudget.set_limits does for every holder
    graph.invoke(Command(resume={"action": "continue"}), config)
    # The pool had $0.14 left over (calls commit what they cost, not their projection):
    # $1.14 fits five more calls.
    assert model.call_count == 9
    assert read_ledger(graph.get_state(config).values)["spent"]["usd_micros"] == 9 * CALL


# -- calls made indirectly: a LangChain agent (a compiled subgraph) as the guarded agent -----


class Chat(GuardedState, total=False):
    messages: Annotated[list[AnyMessage], add_messages]


def test_calls_inside_a_langchain_agent_are_metered_and_blocked(
    saver: BaseCheckpointSaver[Any], config: dict[str, Any]
) -> None:
    from langchain.agents import create_agent
    from langchain_core.tools import tool

    @tool
    def fetch(query: str) -> str:
        """Fetch one more document."""
        return "a document " + "y" * 40_000  # the context grows with every fetch

    def calls_fetch(i: int) -> AIMessage:
        call = {"name": "fetch", "args": {"query": f"q{i}"}, "id": f"call_{i}", "type": "tool_call"}
        return AIMessage(content="", tool_calls=[call])  # type: ignore[list-item]

    model = ScriptedChatModel(
        [calls_fetch(i) for i in range(50)], model_name=MODEL, max_tokens=2_000
    )
    agent = create_agent(model, tools=[fetch])

    policy = GuardPolicy(budget=Budget(usd=0.2, on_exhausted="end"))
    builder = GuardedStateGraph(Chat)
    builder.add_node("researcher", guarded(agent, policy, name="researcher"))
    builder.add_node("owner", task_owner(policy), destinations=(END,))
    builder.add_edge(START, "researcher")
    builder.add_conditional_edges("researcher", guard_route(END, policy=policy))
    graph = builder.compile(checkpointer=saver)
    graph.invoke({"messages": [HumanMessage("find everything about tides")]}, config)

    ledger = read_ledger(graph.get_state(config).values)
    # Each turn re-sends the growing context (~10k tokens more per fetch): the calls get
    # dearer, and the agent's own loop is stopped before the one that would pass $0.20.
    assert model.call_count == 4  # inputs of ~0, 10k, 20k, 30k tokens; a 5th would be ~40k
    assert 0 < ledger["spent"]["usd_micros"] <= 200_000
    trip = ledger["trips"][-1]
    assert (trip["kind"], trip["agent"]) == ("budget", "researcher")
    assert ledger["spent"]["usd_micros"] + trip["projected"]["usd_micros"] > 200_000  # type: ignore[index]
    assert ledger["spent"]["input_tokens"] == sum(
        count_tokens_approximately(messages) for messages in model.calls
    )


def test_a_journal_records_every_guarded_step(tmp_path: Any, config: dict[str, Any]) -> None:
    from sanegraph.checkpoints import Journal, sqlite_saver

    model = _model()
    with sqlite_saver(tmp_path / "runs.sqlite") as saver, Journal(saver) as journal:
        policy = GuardPolicy(hops=3)  # no budget: steps only
        graph = _loop_graph(_researcher(model), policy, saver, journal=journal)
        graph.invoke({"topic": "tides"}, config)
        steps = journal.steps(config["configurable"]["thread_id"])
        assert journal.calls(config["configurable"]["thread_id"]) == []

    # Three steps ran; the fourth was refused by the hop cap and journaled as not run.
    assert [(s["agent"], s["hop"], s["status"], s["tripped"]) for s in steps] == [
        ("researcher", 1, "partial", None),
        ("researcher", 2, "partial", None),
        ("researcher", 3, "partial", None),
        ("researcher", 3, "not_run", "hop_cap"),
    ]
    assert all(s["latency_us"] > 0 for s in steps[:3])
