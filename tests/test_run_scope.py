"""State that decides a cap or a budget lives in the run's scope, not in the process.

Parallel branches see each other's hops and spend through objects made per run and per
superstep (``guards/_scope.py``), never through process-wide caches that many concurrent
threads could evict; the token counter holds no message. Tests at the scale the issue
names: 300 threads fanning out at once, and 10,000 metered calls with 200 KB messages.
"""

from __future__ import annotations

import gc
import threading
import tracemalloc
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal, cast

from langchain_core.messages import AIMessage, HumanMessage
from langchain_core.messages.utils import count_tokens_approximately
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START
from langgraph.types import Send

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
from sanegraph.guards.budget import BudgetMeter, metering
from sanegraph.guards.budget.pricing import price_call
from sanegraph.guards.budget.tokens import TokenCounter
from sanegraph.guards.testing import ScriptedChatModel

THREADS = 300


class Work(GuardedState, total=False):
    task: str
    turns: int


class Outer(GuardedState, total=False):
    topic: str


def _looping_subgraph(policy: GuardPolicy, ran: Counter[str]) -> Any:
    def work(state: Work, config: RunnableConfig) -> dict[str, Any]:
        n = state.get("turns", 0) + 1
        ran[config["configurable"]["thread_id"]] += 1
        return {"envelope": {"status": "success", "result": f"step {n}"}, "turns": n}

    def more(state: Work) -> Literal["work", "__end__"]:
        return "work" if state.get("turns", 0) < 5 else END

    builder = GuardedStateGraph(Work)
    builder.add_node("work", guarded(work, policy))
    builder.add_edge(START, "work")
    builder.add_conditional_edges("work", guard_route(more, owner=END))
    return builder.compile()


def _run_all(invoke: Any) -> list[Any]:
    """Invoke on THREADS threads at once (a barrier releases them together)."""
    barrier = threading.Barrier(THREADS)

    def one(i: int) -> Any:
        barrier.wait()
        return invoke(f"t{i}")

    with ThreadPoolExecutor(max_workers=THREADS) as pool:
        return list(pool.map(one, range(THREADS)))


def test_300_threads_fanning_out_at_once_keep_the_hop_cap_exact() -> None:
    """Two subgraph branches per thread, each wanting 5 steps, under max_hops=7: every
    thread stops at exactly 7 hops, whatever the 299 others do at the same moment."""
    ran: Counter[str] = Counter()
    policy = GuardPolicy(hops=7, owner="partial", loops=False)
    builder = GuardedStateGraph(Outer)
    builder.add_node(
        "lead", guarded(lambda s: {"status": "success", "result": "go"}, policy, name="lead")
    )
    builder.add_node("left", _looping_subgraph(policy, ran))
    builder.add_node("right", _looping_subgraph(policy, ran))
    builder.add_node("owner", task_owner(policy), destinations=(END,))
    builder.add_edge(START, "lead")
    builder.add_edge("lead", "left")
    builder.add_edge("lead", "right")
    builder.add_conditional_edges("left", guard_route(END))
    builder.add_conditional_edges("right", guard_route(END))
    graph = builder.compile(checkpointer=InMemorySaver())

    outs = _run_all(lambda t: graph.invoke({"topic": t}, {"configurable": {"thread_id": t}}))

    assert [read_ledger(out)["hops"] for out in outs] == [7] * THREADS
    assert set(ran.values()) == {6}  # one lead step, six branch steps: in every thread


def test_300_threads_fanning_out_at_once_keep_the_budget_exact() -> None:
    """Five branches per thread, one model call each, under a budget that fits three
    calls: every thread makes exactly three, its two other branches refused before their
    call, whatever the 299 others spend at the same moment."""
    prompt = [HumanMessage("x" * 180)]
    counted = count_tokens_approximately(prompt)
    # Each call uses what it was projected to (its input, and all of max_tokens): three
    # fit however the branches interleave, and never a fourth.
    usage = {"input_tokens": counted, "output_tokens": 100, "total_tokens": counted + 100}
    reply = AIMessage("ok", usage_metadata=cast(Any, usage))
    model = ScriptedChatModel(
        [reply], model_name="gpt-4o", max_tokens=100, cycle=True, keep_calls=False
    )
    projected = price_call("gpt-4o", usage, provider="openai")
    policy = GuardPolicy(
        hops=20, budget=Budget(usd=3.5 * projected / 1_000_000, on_exhausted="end"), loops=False
    )
    calls: Counter[str] = Counter()
    lock = threading.Lock()

    def worker(state: Work, config: RunnableConfig) -> dict[str, Any]:
        model.invoke(prompt, config)
        with lock:
            calls[config["configurable"]["thread_id"]] += 1
        return {"envelope": {"status": "success", "result": state["task"]}}

    builder = GuardedStateGraph(Work)
    builder.add_node("worker", guarded(worker, policy))
    builder.add_node("owner", task_owner(policy), destinations=(END,))
    builder.add_conditional_edges(
        START,
        lambda s: guard_sends(s, [Send("worker", {"task": f"{s['task']}-{i}"}) for i in range(5)]),
        ["worker"],
    )
    builder.add_conditional_edges("worker", guard_route(END))
    graph = builder.compile(checkpointer=InMemorySaver())

    outs = _run_all(lambda t: graph.invoke({"task": t}, {"configurable": {"thread_id": t}}))

    assert set(calls.values()) == {3} and len(calls) == THREADS
    assert {read_ledger(out)["spent"]["output_tokens"] for out in outs} == {300}
    assert {read_ledger(out)["status"] for out in outs} == {"done"}


def test_10_000_metered_calls_with_200_kb_messages_keep_memory_flat() -> None:
    """A run's token counter keeps each message's count, never the message: 10,000 calls,
    each sending a new 200 KB message, hold no more memory at the end than after 1,000."""
    reply = AIMessage(
        "ok", usage_metadata={"input_tokens": 50_000, "output_tokens": 1, "total_tokens": 50_001}
    )
    model = ScriptedChatModel(
        [reply], model_name="gpt-4o", max_tokens=1, cycle=True, keep_calls=False
    )
    tokens = TokenCounter()  # what a run shares between its meters
    budget = Budget(usd=1_000_000)

    def calls(n: int) -> None:
        for _ in range(n):
            meter = BudgetMeter(budget, agent="a", tokens=tokens)
            with metering(meter):
                model.invoke([HumanMessage("y" * 200_000)])

    calls(200)  # warm up: caches of LangChain, pricing, pydantic
    gc.collect()
    tracemalloc.start()
    try:
        calls(1_000)
        gc.collect()
        after_1k = tracemalloc.get_traced_memory()[0]
        calls(9_000)
        gc.collect()
        after_10k = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    # One 200 KB message kept alive would be 200 KB; the old cache kept 4,096 of them.
    assert after_10k - after_1k < 200_000, (after_1k, after_10k)
    assert model.call_count == 10_200
