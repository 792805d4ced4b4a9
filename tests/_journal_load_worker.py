"""Subprocess side of the multi-process load test on one checkpoint file.

Run as ``python _journal_load_worker.py DB SYNC_DIR WORKER THREADS STEPS``; prints one JSON
line on stdout.

It opens the layout of ``examples/budget.py`` on DB: a ``SqliteSaver``, a ``Journal``
through the saver, and the ``SharedBudget`` pool "load" in the same file. It writes
``SYNC_DIR/ready-<WORKER>``, waits for ``SYNC_DIR/go``, then runs THREADS Python threads,
each driving its own LangGraph thread ``w<WORKER>-t<i>`` for STEPS steps with
``durability="sync"``. Each step does what a guarded step does around one model call,
without a model: reserve in the pool, reserve in the journal, settle in the journal,
commit in the pool, journal the step. Every exception a thread meets is reported with the
functions it came through, never raised: the test asserts there is none.
"""

from __future__ import annotations

import json
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any, TypedDict

from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime

from sanegraph.checkpoints import Journal, SharedBudget, TaskKey, sqlite_saver
from sanegraph.guards.budget import Spend

POOL = "load"
POOL_USD = 1_000
PROJECTED = Spend(usd_micros=300, input_tokens=40, output_tokens=64)
ACTUAL = Spend(usd_micros=170, input_tokens=40, output_tokens=25)


class State(TypedDict):
    n: int


def _wait_for(path: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} never appeared")
        time.sleep(0.005)


def _where(error: BaseException) -> str:
    """The error and the sanegraph / LangGraph SQLite functions it came through."""
    frames = [
        f"{Path(frame.filename).parent.name}/{Path(frame.filename).name}:{frame.name}"
        for frame in traceback.extract_tb(error.__traceback__)
        if "sqlite" in frame.filename or "checkpoints" in frame.filename
    ]
    return f"{type(error).__name__}: {error} [{' > '.join(frames[-4:])}]"


def _graph(saver: Any, journal: Journal, pool: SharedBudget, steps: int) -> Any:
    def step(state: State, runtime: Runtime) -> dict[str, int]:
        info = runtime.execution_info
        call = {"index": 0, "agent": "worker", "model": "gpt-4o", "provider": "openai"}
        held = pool.reserve(PROJECTED, key=TaskKey.of(info).call_key(0))
        if held is None:
            raise RuntimeError("the pool refused a reservation")
        journal.reserve_call(info, {**call, **PROJECTED.to_dict()})
        journal.log_call(info, {**call, **ACTUAL.to_dict(), "projected": PROJECTED.to_dict()})
        pool.commit(held, ACTUAL)
        journal.log_step(info, agent="worker", hop=state["n"] + 1, status="success", latency_us=1)
        return {"n": state["n"] + 1}

    def more(state: State) -> str:
        return "step" if state["n"] < steps else END

    builder = StateGraph(State)
    builder.add_node("step", step)
    builder.add_edge(START, "step")
    builder.add_conditional_edges("step", more, ["step", END])
    return builder.compile(checkpointer=saver)


def run(db: str, sync_dir: str, worker: str, threads: int, steps: int) -> dict[str, Any]:
    errors: list[str] = []
    seconds: dict[str, float] = {}
    with (
        sqlite_saver(db) as saver,
        Journal(saver) as journal,
        SharedBudget(POOL, path=db, usd=POOL_USD) as pool,
    ):
        graph = _graph(saver, journal, pool, steps)
        (Path(sync_dir) / f"ready-{worker}").touch()
        _wait_for(Path(sync_dir) / "go")

        def drive(thread_id: str) -> None:
            started = time.perf_counter()
            config: Any = {"configurable": {"thread_id": thread_id}}
            try:
                graph.invoke({"n": 0}, config, durability="sync")
            except Exception as error:
                errors.append(_where(error))
            seconds[thread_id] = round(time.perf_counter() - started, 3)

        started = time.perf_counter()
        runners = [
            threading.Thread(target=drive, args=(f"w{worker}-t{i}",)) for i in range(threads)
        ]
        for runner in runners:
            runner.start()
        for runner in runners:
            runner.join()
        elapsed = time.perf_counter() - started
    return {"errors": errors, "elapsed": round(elapsed, 3), "seconds": seconds}


if __name__ == "__main__":
    db, sync_dir, worker, threads, steps = sys.argv[1:]
    print(json.dumps(run(db, sync_dir, worker, int(threads), int(steps))), flush=True)
