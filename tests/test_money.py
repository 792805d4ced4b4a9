"""Money that holds: spend is paid, never lost, double-counted or rolled back.

Graph tier, one test per case of the money issue: a step that raises after its calls, a
retried step, rollback, parallel subgraph branches, concurrent calls without
``max_tokens``. Each asserts that what the scripted provider billed (every answered
call, counted by the model itself) and what the ledger, the trip and the pool say agree,
and that the budget held.
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest
from langchain_core.messages import AIMessage, HumanMessage
from langchain_core.messages.utils import count_tokens_approximately
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START
from langgraph.types import RetryPolicy, Send

from sanegraph.checkpoints import rollback
from sanegraph.guards import (
    Budget,
    GuardedState,
    GuardedStateGraph,
    GuardPolicy,
    guard_route,
    guard_sends,
    guarded,
    read_ledger,
    task_owner,
)
from sanegraph.guards.budget import Spend, price_call
from sanegraph.guards.testing import ScriptedChatModel

PROMPT = [HumanMessage("x" * 176)]
IN = count_tokens_approximately(PROMPT)  # 48 tokens
MAX = 50
USAGE = {"input_tokens": IN, "output_tokens": MAX - 3, "total_tokens": IN + MAX - 3}
"""Each call answers with 3 tokens fewer than max_tokens: a call never overshoots."""
TOKENS = IN + MAX - 3
CALL = price_call("gpt-4o", USAGE, provider="openai")


class State(GuardedState, total=False):
    topic: str
    attempt: int


def _model(**kwargs: Any) -> ScriptedChatModel:
    reply = AIMessage("ok", usage_metadata=cast(Any, USAGE))
    kwargs.setdefault("max_tokens", MAX)
    return ScriptedChatModel([reply], model_name="gpt-4o", cycle=True, **kwargs)


def _one_node(agent: Any, policy: GuardPolicy, saver: Any, **compile: Any) -> Any:
    builder = GuardedStateGraph(State)
    builder.add_node("agent", guarded(agent, policy), retry_policy=compile.pop("retry", None))
    builder.add_node("owner", task_owner(policy), destinations=("agent", END))
    builder.add_edge(START, "agent")
    builder.add_conditional_edges("agent", guard_route(END, policy=policy))
    return builder.compile(checkpointer=saver, **compile)


class Flaky(RuntimeError):
    """What a step raises after its model call."""


# -- 1. a step that raises after its calls ----------------------------------------------


def test_a_step_that_raises_after_its_calls_keeps_their_spend(
    saver: BaseCheckpointSaver[Any], config: dict[str, Any]
) -> None:
    """The agent calls the model, then raises; the thread is invoked again and again. Every
    billed call counts: the budget stops the fifth call before it is made, and the ledger
    and the trip agree with what the provider billed."""
    model = _model()
    policy = GuardPolicy(budget=Budget(tokens=400, on_exhausted="end"))

    def agent(state: State, config: RunnableConfig) -> dict[str, Any]:
        model.invoke(PROMPT, config)
        raise Flaky("the parser choked on the answer")

    graph = _one_node(agent, policy, saver)
    for _ in range(6):
        try:
            graph.invoke({"topic": "tides"} if model.call_count == 0 else None, config)
        except Flaky:
            continue
        break
    ledger = read_ledger(graph.get_state(config).values)
    billed = model.call_count
    assert billed == 4  # 4 * 95 tokens = 380; a fifth (projected 98 more) would pass 400
    assert ledger["spent"]["input_tokens"] + ledger["spent"]["output_tokens"] == 4 * TOKENS
    (trip,) = ledger["trips"]
    assert trip["kind"] == "budget" and trip["observed"] == 4 * TOKENS + IN + MAX
    assert ledger["status"] == "done"


# -- 2. retries count each real call once -------------------------------------------------


def test_a_retried_step_counts_each_real_call_once(
    saver: BaseCheckpointSaver[Any], config: dict[str, Any]
) -> None:
    model = _model()
    attempts: list[int] = []

    def agent(state: State, config: RunnableConfig) -> dict[str, Any]:
        model.invoke(PROMPT, config)
        attempts.append(1)
        if len(attempts) < 3:
            raise ConnectionError("the provider dropped the connection")  # retried
        return {"envelope": {"status": "success", "result": "done"}}

    policy = GuardPolicy(budget=Budget(tokens=10_000))
    retry = RetryPolicy(max_attempts=3, initial_interval=0.0, jitter=False)
    graph = _one_node(agent, policy, saver, retry=retry)
    graph.invoke({"topic": "tides"}, config)

    ledger = read_ledger(graph.get_state(config).values)
    assert model.call_count == 3
    assert ledger["spent"] == {
        "usd_micros": 3 * CALL,
        "input_tokens": 3 * IN,
        "output_tokens": 3 * (MAX - 3),
    }
    assert ledger["spent_by_agent"]["agent"]["usd_micros"] == 3 * CALL


class MemoryPool:
    """A one-process pool that remembers every key it committed."""

    def __init__(self, usd_micros: int) -> None:
        self.left = usd_micros
        self.committed: dict[str, int] = {}

    def reserve(self, amount: Spend, *, key: str) -> object | None:
        if amount.usd_micros > self.left:
            return None
        self.left -= amount.usd_micros
        return (key, amount)

    def commit(self, reservation: Any, actual: Spend) -> None:
        key, amount = reservation
        self.left += amount.usd_micros - actual.usd_micros
        assert key not in self.committed, f"committed twice under {key!r}"
        self.committed[key] = actual.usd_micros

    def release(self, reservation: Any) -> None:
        self.left += reservation[1].usd_micros


def test_a_pool_counts_each_retry_under_its_own_key(
    saver: BaseCheckpointSaver[Any], config: dict[str, Any]
) -> None:
    model = _model()
    pool = MemoryPool(1_000_000)
    attempts: list[int] = []

    def agent(state: State, config: RunnableConfig) -> dict[str, Any]:
        model.invoke(PROMPT, config)
        attempts.append(1)
        if len(attempts) < 4:
            raise ConnectionError("retry me")
        return {"envelope": {"status": "success", "result": "done"}}

    retry = RetryPolicy(max_attempts=4, initial_interval=0.0, jitter=False)
    graph = _one_node(agent, GuardPolicy(), saver, retry=retry, pool=pool)
    graph.invoke({"topic": "tides"}, config)

    assert model.call_count == 4
    assert sorted(pool.committed.values()) == [CALL] * 4
    assert [k.rsplit("|", 1)[1] for k in sorted(pool.committed)] == ["0", "1", "2", "3"]
    assert pool.left == 1_000_000 - 4 * CALL


# -- 3. rollback keeps counting what the thread paid ------------------------------------


def test_rolled_back_rounds_keep_counting_what_the_thread_paid(
    saver: BaseCheckpointSaver[Any], config: dict[str, Any]
) -> None:
    """Rounds of (a step that answers garbage, rollback, resume): every round's calls
    stay counted, and the budget trips when the thread's real spend reaches it."""
    model = _model()
    policy = GuardPolicy(budget=Budget(tokens=2000, on_exhausted="end"), owner="partial")

    def agent(state: State, config: RunnableConfig) -> dict[str, Any]:
        model.invoke(PROMPT, config)
        n = state.get("attempt", 0) + 1
        if n == 1:
            return {"attempt": n, "envelope": {"status": "success", "result": "sane"}}
        return {"attempt": n, "envelope": "garbage"}  # invalid: trips, ends at the owner

    builder = GuardedStateGraph(State)
    builder.add_node("agent", guarded(agent, policy))
    builder.add_node("owner", task_owner(policy), destinations=("agent", END))
    builder.add_edge(START, "agent")
    builder.add_conditional_edges(
        "agent", guard_route(lambda s: "agent", destinations=["agent"], policy=policy)
    )
    graph = builder.compile(checkpointer=saver)
    graph.invoke({"topic": "tides"}, config)
    rounds = 0
    while read_ledger(graph.get_state(config).values)["trips"][-1]["kind"] != "budget":
        graph.invoke(None, rollback(graph, config))
        rounds += 1
        assert rounds < 40
    ledger = read_ledger(graph.get_state(config).values)
    billed = model.call_count * TOKENS
    assert billed <= 2000 < billed + IN + MAX  # stopped by the thread's real spend
    assert ledger["spent"]["input_tokens"] + ledger["spent"]["output_tokens"] == billed
    assert ledger["rollbacks"] == rounds


# -- 5. parallel subgraph branches draw on one budget -------------------------------------


class Branch(GuardedState, total=False):
    task: str


def _fan_out_graph(model: ScriptedChatModel, policy: GuardPolicy, is_async: bool) -> Any:
    def work(state: Branch, config: RunnableConfig) -> dict[str, Any]:
        model.invoke(PROMPT, config)
        return {"envelope": {"status": "success", "result": state["task"]}}

    async def awork(state: Branch, config: RunnableConfig) -> dict[str, Any]:
        await model.ainvoke(PROMPT, config)
        return {"envelope": {"status": "success", "result": state["task"]}}

    sub = GuardedStateGraph(Branch)
    sub.add_node("work", guarded(awork if is_async else work, policy))
    sub.add_edge(START, "work")
    sub.add_conditional_edges("work", guard_route(END, owner=END))
    builder = GuardedStateGraph(State)
    builder.add_node("branch", sub.compile())
    builder.add_node("owner", task_owner(policy), destinations=(END,))
    builder.add_conditional_edges(
        START,
        lambda s: guard_sends(s, [Send("branch", {"task": f"t{i}"}) for i in range(20)]),
        ["branch"],
    )
    builder.add_edge("branch", END)
    return builder.compile(checkpointer=InMemorySaver())


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
def test_parallel_subgraph_branches_draw_on_one_budget(is_async: bool) -> None:
    """20 branches, each a subgraph with one guarded step and one call: under a budget
    that fits 5 calls made one after another, at most 5 are made and the budget holds,
    whatever order the branches run in. (Run at once, calls in flight hold their
    projection, a little more than they cost: then 4 may be all that fit.)"""
    model = _model()
    projected = price_call("gpt-4o", {"input_tokens": IN, "output_tokens": MAX}, provider="openai")
    fits = 5
    usd = ((fits - 1) * CALL + projected) / 1_000_000
    policy = GuardPolicy(budget=Budget(usd=usd, on_exhausted="end"), loops=False)
    graph = _fan_out_graph(model, policy, is_async)
    config = {"configurable": {"thread_id": "fan"}}
    out = (
        asyncio.run(graph.ainvoke({"topic": "t"}, config))
        if is_async
        else graph.invoke({"topic": "t"}, config)
    )

    at_once = round(usd * 1_000_000) // projected  # all in flight together
    assert at_once == fits - 1
    assert at_once <= model.call_count <= fits
    ledger = read_ledger(out)
    assert ledger["spent"]["usd_micros"] == model.call_count * CALL <= round(usd * 1_000_000)


# -- 6. concurrent calls without max_tokens -----------------------------------------------


def test_concurrent_calls_without_max_tokens_cannot_all_pass_on_the_same_headroom() -> None:
    """50 async branches, one call each, models setting no max_tokens: each call reserves
    Budget.assume_output_tokens. Calls that answer within it never overshoot the budget."""
    answer = 200
    usage = {"input_tokens": IN, "output_tokens": answer, "total_tokens": IN + answer}
    reply = AIMessage("ok", usage_metadata=cast(Any, usage))
    model = ScriptedChatModel([reply], model_name="gpt-4o", cycle=True)  # no max_tokens
    budget = Budget(tokens=10 * (IN + answer), assume_output_tokens=answer, on_exhausted="end")
    policy = GuardPolicy(budget=budget, loops=False)

    async def work(state: Branch, config: RunnableConfig) -> dict[str, Any]:
        await asyncio.sleep(0.01)  # every branch is in flight at once
        await model.ainvoke(PROMPT, config)
        return {"envelope": {"status": "success", "result": state["task"]}}

    builder = GuardedStateGraph(State)
    builder.add_node("work", guarded(work, policy))
    builder.add_node("owner", task_owner(policy), destinations=(END,))
    builder.add_conditional_edges(
        START,
        lambda s: guard_sends(s, [Send("work", {"task": f"t{i}"}) for i in range(50)]),
        ["work"],
    )
    builder.add_conditional_edges("work", guard_route(END))
    graph = builder.compile(checkpointer=InMemorySaver())
    out = asyncio.run(graph.ainvoke({"topic": "t"}, {"configurable": {"thread_id": "c"}}))

    spent = read_ledger(out)["spent"]
    assert model.call_count == 10
    assert spent["input_tokens"] + spent["output_tokens"] == 10 * (IN + answer) <= budget.tokens
