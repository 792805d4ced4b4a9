"""Subprocess side of the weekend scenario: many conversations on one shared budget.

Run as ``python _weekend_worker.py MODE POOL_DB CHECKPOINT_DB THREADS SYNC_DIR``; prints
one JSON line on stdout. MODE is ``threads`` (a thread pool of sync ``invoke``) or
``asyncio`` (``ainvoke`` under ``asyncio.gather``). Each conversation is a guarded loop
whose researcher asks a scripted gpt-4o for ~$0.25 per call, six steps in all ($1.50),
with ``Budget(on_exhausted="end")`` and ``compile(pool=SharedBudget(...))``. The worker waits for
``SYNC_DIR/go`` so both processes start together, and reports per conversation its
status, its outcome's status, what its ledger says it spent, and the model calls made.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, cast

from langchain_core.messages import AIMessage, HumanMessage
from langchain_core.messages.utils import count_tokens_approximately
from langchain_core.runnables import RunnableConfig
from langgraph.graph import END, START

from sanegraph.checkpoints import SharedBudget, async_sqlite_saver, sqlite_saver
from sanegraph.guards import (
    Budget,
    GuardedState,
    GuardedStateGraph,
    GuardPolicy,
    guard_route,
    guarded,
    read_ledger,
    task_owner,
)
from sanegraph.guards.testing import ScriptedChatModel

PAD = "x" * 80_000
IN = count_tokens_approximately([HumanMessage(f"research topic 0000 {PAD}")])
OUT = MAX = 20_000
"""~$0.25 per call on gpt-4o: a ~20k-token prompt, and answers as long as max_tokens
allows, so the projection (counted input + max_tokens) covers each call exactly."""
STEPS = 6


class State(GuardedState, total=False):
    topic: str


def _model() -> ScriptedChatModel:
    usage = {"input_tokens": IN, "output_tokens": OUT, "total_tokens": IN + OUT}
    reply = AIMessage(content="more", usage_metadata=cast(Any, usage))
    return ScriptedChatModel([reply], model_name="gpt-4o", max_tokens=MAX, cycle=True)


def _graph(model: ScriptedChatModel, pool: SharedBudget, saver: Any, *, is_async: bool) -> Any:
    policy = GuardPolicy(hops=STEPS, budget=Budget(on_exhausted="end"), owner="partial")

    def researcher(state: State, config: RunnableConfig) -> dict[str, Any]:
        model.invoke([HumanMessage(f"research {state['topic']} {PAD}")], config)
        return {"envelope": {"status": "partial", "result": model.call_count}}

    async def aresearcher(state: State, config: RunnableConfig) -> dict[str, Any]:
        await model.ainvoke([HumanMessage(f"research {state['topic']} {PAD}")], config)
        return {"envelope": {"status": "partial", "result": model.call_count}}

    builder = GuardedStateGraph(State)
    builder.add_node("researcher", guarded(aresearcher if is_async else researcher, policy))
    builder.add_node("owner", task_owner(policy), destinations=("researcher", END))
    builder.add_edge(START, "researcher")
    builder.add_conditional_edges("researcher", guard_route("researcher", policy=policy))
    return builder.compile(checkpointer=saver, pool=pool)


def _report(thread: str, values: dict[str, Any], model: ScriptedChatModel) -> dict[str, Any]:
    ledger = read_ledger(values)
    outcome = ledger["outcome"] or {}
    return {
        "thread": thread,
        "status": ledger["status"],
        "outcome": outcome.get("status"),
        "usd_micros": ledger["spent"].get("usd_micros", 0),
        "calls": model.call_count,
        "trip": ledger["trips"][-1]["kind"] if ledger["trips"] else None,
    }


def _wait_for(path: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} never appeared")
        time.sleep(0.005)


def run_threads(pool_db: str, checkpoints: str, n: int, sync_dir: str) -> list[dict[str, Any]]:
    pool = SharedBudget("weekend", path=pool_db)
    with sqlite_saver(checkpoints) as saver:
        (Path(sync_dir) / f"ready-{os.getpid()}").touch()
        _wait_for(Path(sync_dir) / "go")

        def conversation(i: int) -> dict[str, Any]:
            model = _model()
            graph = _graph(model, pool, saver, is_async=False)
            thread = f"t{os.getpid()}-{i}"
            config: RunnableConfig = {"configurable": {"thread_id": thread}}
            try:
                values = graph.invoke({"topic": f"topic {i:04d}"}, config)
            except Exception as exc:
                return {"thread": thread, "status": "crashed", "error": repr(exc)}
            return _report(thread, values, model)

        with ThreadPoolExecutor(max_workers=32) as executor:
            return list(executor.map(conversation, range(n)))


async def run_asyncio(
    pool_db: str, checkpoints: str, n: int, sync_dir: str
) -> list[dict[str, Any]]:
    pool = SharedBudget("weekend", path=pool_db)
    async with async_sqlite_saver(checkpoints) as saver:
        (Path(sync_dir) / f"ready-{os.getpid()}").touch()
        await asyncio.to_thread(_wait_for, Path(sync_dir) / "go")

        async def conversation(i: int) -> dict[str, Any]:
            model = _model()
            graph = _graph(model, pool, saver, is_async=True)
            thread = f"a{os.getpid()}-{i}"
            config: RunnableConfig = {"configurable": {"thread_id": thread}}
            try:
                values = await graph.ainvoke({"topic": f"topic {i:04d}"}, config)
            except Exception as exc:
                return {"thread": thread, "status": "crashed", "error": repr(exc)}
            return _report(thread, values, model)

        return list(await asyncio.gather(*(conversation(i) for i in range(n))))


def main(argv: list[str]) -> None:
    mode, pool_db, checkpoints, n, sync_dir = argv
    if mode == "threads":
        results = run_threads(pool_db, checkpoints, int(n), sync_dir)
    elif mode == "asyncio":
        results = asyncio.run(run_asyncio(pool_db, checkpoints, int(n), sync_dir))
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    print(json.dumps(results), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
