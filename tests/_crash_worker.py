"""Subprocess side of the crash-exactness test of budgets (issue 3).

Run as ``python _crash_worker.py MODE DB BILL``; MODE ``run`` or ``resume``.

One guarded researcher step asks a scripted gpt-4o up to ten times in a loop (an agent's
own runaway), under ``Budget(usd=1, on_exhausted="end")`` with a ``Journal`` in the
checkpoints' file. After every answered call it appends a line to BILL: the provider's
bill, kept outside sanegraph, against which the test checks the ledger.

- ``run``: after the 2nd answered call the agent writes ``BILL.spent`` and sleeps; the test
  kills the process with SIGKILL, mid-node, after spending.
- ``resume``: a new process resumes the thread (``invoke(None, config)``), LangGraph re-runs
  the interrupted task, and the worker prints the ledger's spend and the journal's.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, cast

from langchain_core.messages import AIMessage, HumanMessage
from langchain_core.messages.utils import count_tokens_approximately
from langchain_core.runnables import RunnableConfig
from langgraph.graph import END, START

from sanegraph.checkpoints import Journal, sqlite_saver
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

PROMPT = "research the tides " + "x" * 40_000
IN = count_tokens_approximately([HumanMessage(PROMPT)])
OUT, MAX = 19_000, 20_000
THREAD = "crash-1"


class State(GuardedState, total=False):
    topic: str


def _graph(saver: Any, journal: Journal, bill: Path, *, crash_after: int | None) -> Any:
    usage = {"input_tokens": IN, "output_tokens": OUT, "total_tokens": IN + OUT}
    reply = AIMessage(content="doc", usage_metadata=cast(Any, usage))
    model = ScriptedChatModel([reply], model_name="gpt-4o", max_tokens=MAX, cycle=True)
    policy = GuardPolicy(budget=Budget(usd=1, on_exhausted="end"))

    def researcher(state: State, config: RunnableConfig) -> dict[str, Any]:
        for n in range(1, 11):
            model.invoke([HumanMessage(PROMPT)], config)
            with bill.open("a") as f:
                f.write("call\n")
            if crash_after is not None and n == crash_after:
                bill.with_suffix(".spent").touch()
                time.sleep(120)  # killed here
        return {"envelope": {"status": "success", "result": "ten documents"}}

    builder = GuardedStateGraph(State)
    builder.add_node("researcher", guarded(researcher, policy))
    builder.add_node("owner", task_owner(policy), destinations=("researcher", END))
    builder.add_edge(START, "researcher")
    builder.add_conditional_edges("researcher", guard_route(END, policy=policy))
    return builder.compile(checkpointer=saver, journal=journal)


def main(argv: list[str]) -> None:
    mode, db, bill_path = argv
    bill = Path(bill_path)
    config: RunnableConfig = {"configurable": {"thread_id": THREAD}}
    with sqlite_saver(db) as saver, Journal(saver) as journal:
        if mode == "run":
            _graph(saver, journal, bill, crash_after=2).invoke({"topic": "tides"}, config)
            raise SystemExit("the run should have been killed")
        graph = _graph(saver, journal, bill, crash_after=None)
        values = graph.invoke(None, config)
        ledger = read_ledger(values)
        print(
            json.dumps(
                {
                    "spent": ledger["spent"],
                    "journal": journal.thread_spend(THREAD).to_dict(),
                    "calls": len(journal.calls(THREAD)),
                    "hops": ledger["hops"],
                    "status": ledger["status"],
                    "trip": ledger["trips"][-1] if ledger["trips"] else None,
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main(sys.argv[1:])
