"""A researcher -> analyst -> writer pipeline that loops, trips, and is rolled back.

The analyst answers "I need more context" every time, so ``sequential_graph`` sends the
run back to the researcher, until loop detection sees the analyst's third identical
answer (``loop_repeat``); the owner ("partial") ends the run with the researcher's notes.
Then ``rollback`` forks the thread from its last sane checkpoint (before the loop) with
a narrower task, and a graph with a fixed analyst finishes it.

Run: ``python examples/sequential.py [checkpoints.sqlite]`` (offline, scripted models).
"""

import sys
import tempfile
from pathlib import Path

from sanegraph.checkpoints import rollback, sqlite_saver
from sanegraph.graphs import sequential_graph
from sanegraph.guards import GuardPolicy, envelopes_of, outcome_of, read_ledger
from sanegraph.guards.testing import ScriptedChatModel, envelope_message, scripted_agent

db = sys.argv[1] if len(sys.argv) > 1 else Path(tempfile.mkdtemp()) / "sequential.sqlite"
stuck = envelope_message("partial", reason="I need more context")
fixed = envelope_message("success", "Churn follows the EMEA price change", confidence=0.9)


def build(analyst_says, max_hops):
    """The pipeline; every stage is a scripted chat model."""
    docs = [envelope_message("success", f"source #{i}", confidence=0.8) for i in range(1, 9)]
    stages = {
        "researcher": ScriptedChatModel(docs),
        "analyst": ScriptedChatModel([analyst_says], cycle=True),
        "writer": ScriptedChatModel([envelope_message("success", "Report: churn is pricing")]),
    }
    agents = {name: scripted_agent(model, name=name) for name, model in stages.items()}
    return sequential_graph(agents, policy=GuardPolicy(hops=max_hops, owner="partial"))


with sqlite_saver(db) as saver:
    config = {"configurable": {"thread_id": "sequential"}}
    looping = build(stuck, max_hops=8).compile(checkpointer=saver)
    state = looping.invoke({"task": "Why did Q3 churn rise?"}, config)
    ledger = read_ledger(state)
    print(f"1. looped: status={ledger['status']}, hops={ledger['hops']}, {ledger['by_agent']}")
    print(f"   owner kept: {outcome_of(state)['result']!r} ({ledger['trips'][-1]['kind']})")

    # Same thread, fixed analyst, forked from the last sane checkpoint with a narrower task.
    fixed_graph = build(fixed, max_hops=8).compile(checkpointer=saver)
    narrower = {"task": "Did the EMEA price change drive churn?"}
    forked = rollback(fixed_graph, config, patch=narrower)
    state = fixed_graph.invoke(None, forked)
    ledger = read_ledger(state)
    # A run that reached END on its own has no next node and no owner outcome.
    done = not fixed_graph.get_state(config).next and outcome_of(state) is None
    verdict = "finished" if done else "NOT finished"
    print(f"2. after rollback: {verdict}, hops={ledger['hops']}, rollbacks={ledger['rollbacks']}")
    print(f"   task: {state['task']!r} -> writer: {envelopes_of(state)['writer']['result']!r}")
