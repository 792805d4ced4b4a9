"""Three workers fan out over two regions; one fails, and the aggregate says so.

``parallel_graph`` sends every (worker, task) pair to its own guarded branch, keeps each
branch's envelope under its own key, and runs the aggregate once all branches are done.
The aggregate reads them with ``branch_envelopes``, failed ones included, and reports the
failures as data (a ``partial`` envelope) instead of raising.

Run: ``python examples/parallel.py [checkpoints.sqlite]`` (offline, scripted models).
"""

import json
import sys
import tempfile
from pathlib import Path

from sanegraph.checkpoints import sqlite_saver
from sanegraph.graphs import branch_envelopes, parallel_graph
from sanegraph.guards import GuardPolicy, envelopes_of, read_ledger
from sanegraph.guards.testing import ScriptedChatModel, envelope_message, scripted_agent

db = sys.argv[1] if len(sys.argv) > 1 else Path(tempfile.mkdtemp()) / "parallel.sqlite"
answers = {
    "web": envelope_message("success", "pricing complaints up", confidence=0.8),
    "tickets": envelope_message("success", "onboarding tickets doubled", confidence=0.7),
    "crm": envelope_message("failed", reason="CRM export timed out"),
}
workers = {
    name: scripted_agent(ScriptedChatModel([says], cycle=True), name=name)
    for name, says in answers.items()
}


def aggregate(state):
    """Combine what the branches found; list the failed branches and why."""
    branches = branch_envelopes(state)
    found = {key: e.result for key, e in branches.items() if e.status == "success"}
    failed = {key: e.reason for key, e in branches.items() if e.status == "failed"}
    status = "partial" if failed and found else "failed" if failed else "success"
    reason = f"{len(failed)} of {len(branches)} branches failed" if failed else ""
    return {"status": status, "result": {"found": found, "failed": failed}, "reason": reason}


builder = parallel_graph(workers, aggregate, policy=GuardPolicy(hops=12))
with sqlite_saver(db) as saver:
    graph = builder.compile(checkpointer=saver)
    config = {"configurable": {"thread_id": "parallel"}}
    state = graph.invoke({"tasks": ["EMEA", "APAC"]}, config)
    print(f"hops={read_ledger(state)['hops']} (6 branches + the aggregate)")
    print("aggregate envelope:")
    print(json.dumps(envelopes_of(state)["aggregate"], indent=2))
