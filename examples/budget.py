"""A runaway researcher stopped by a $1 budget before the bill, topped up once by a human.

The researcher asks its model again and again (each call ~$0.22 on gpt-4o, priced by
genai-prices). The intake check blocks the call that would pass $1 before it is made; the
owner pauses the run; a human grants $0.50 more, and at the next stop accepts the partial
result. The thread also draws on a shared pool (every thread of "tenant acme" today), and
each call is journaled in the checkpoints' file.

Run: ``python examples/budget.py [checkpoints.sqlite]`` (offline, scripted models).
"""

import sys
import tempfile
from pathlib import Path

from langchain_core.messages import AIMessage, HumanMessage
from langgraph.graph import END, START
from langgraph.types import Command

from sanegraph.checkpoints import Journal, SharedBudget, sqlite_saver
from sanegraph.guards import (
    Budget,
    Escalation,
    GuardedState,
    GuardedStateGraph,
    GuardPolicy,
    guard_route,
    guarded,
    outcome_of,
    read_ledger,
    task_owner,
)
from sanegraph.guards.testing import ScriptedChatModel

db = sys.argv[1] if len(sys.argv) > 1 else Path(tempfile.mkdtemp()) / "budget.sqlite"
prompt = "Find everything about Q3 churn. " + "(the conversation so far) " * 1_500
usage = {"input_tokens": 10_000, "output_tokens": 19_000, "total_tokens": 29_000}
model = ScriptedChatModel(
    [AIMessage("another document", usage_metadata=usage)],
    model_name="gpt-4o",
    max_tokens=20_000,  # known max_tokens: spend never passes a limit
    cycle=True,
)


class State(GuardedState, total=False):
    notes: list[str]


def researcher(state, config):
    model.invoke([HumanMessage(prompt)], config)
    notes = [*state.get("notes", []), f"document {len(state.get('notes', [])) + 1}"]
    return {"notes": notes, "envelope": {"status": "partial", "result": notes[-1]}}


with sqlite_saver(db) as saver, Journal(saver) as journal:
    pool = SharedBudget("tenant acme, today", path=db, usd=20)
    policy = GuardPolicy(hops=100, budget=Budget(usd=1))
    builder = GuardedStateGraph(State)
    builder.add_node("researcher", guarded(researcher, policy))
    builder.add_node("owner", task_owner(policy), destinations=("researcher", END))
    builder.add_edge(START, "researcher")
    builder.add_conditional_edges("researcher", guard_route("researcher", policy=policy))
    graph = builder.compile(checkpointer=saver, journal=journal, pool=pool)
    config = {"configurable": {"thread_id": "runaway"}}

    state = graph.invoke({}, config)
    escalation = Escalation.model_validate(state["__interrupt__"][0].value)
    print(f"1. paused after {model.call_count} calls: {escalation.message}")
    state = graph.invoke(Command(resume={"action": "continue", "extra_usd": 0.5}), config)
    print(f"2. topped up by $0.50, paused again after {model.call_count} calls")
    state = graph.invoke(Command(resume={"action": "accept_partial"}), config)
    spent = read_ledger(state)["spent"]["usd_micros"] / 1e6
    print(f"3. {read_ledger(state)['status']}: kept {outcome_of(state)['result']!r}")
    print(f"   spent ${spent:.4f} (ledger) = ${journal.thread_spend('runaway').usd:.4f} (journal)")
    print(f"   pool: ${pool.status()['spent']['usd_micros'] / 1e6:.4f} of $20 spent today")
    pool.close()
