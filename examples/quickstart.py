"""Quickstart: a researcher/analyst loop caught by loop detection and handed to a human.

Run: ``python examples/quickstart.py [checkpoints.sqlite]`` (offline: the agents are
scripted chat models; without an argument the file goes in a temporary folder).
The part between the ``--- quickstart ---`` and ``--- end ---`` markers is the README's.
"""

# --- quickstart ---
import sys
import tempfile
from pathlib import Path

from langgraph.graph import END, START
from langgraph.types import Command

from sanegraph.checkpoints import open_sqlite_saver
from sanegraph.guards import (
    Escalation,
    GuardedState,
    GuardedStateGraph,
    GuardPolicy,
    guard_route,
    guarded,
    outcome_of,
    task_owner,
)
from sanegraph.guards.testing import ScriptedChatModel, envelope_message, scripted_agent

db = sys.argv[1] if len(sys.argv) > 1 else Path(tempfile.mkdtemp()) / "quickstart.sqlite"


class State(GuardedState, total=False):
    topic: str


# Scripted stand-ins for chat models: the analyst always asks for "more context".
researcher = ScriptedChatModel([envelope_message("success", "40 churn interviews")], cycle=True)
analyst = ScriptedChatModel([envelope_message("partial", reason="I need more context")], cycle=True)

policy = GuardPolicy(hops=12, owner="escalate")  # loops and 12+ steps go to a human
builder = GuardedStateGraph(State)
builder.add_node("researcher", guarded(scripted_agent(researcher), policy))
builder.add_node("analyst", guarded(scripted_agent(analyst), policy))
builder.add_node("owner", task_owner(policy), destinations=("researcher", "analyst", END))
builder.add_edge(START, "researcher")
builder.add_conditional_edges("researcher", guard_route("analyst"))  # tripped: to "owner"
builder.add_conditional_edges("analyst", guard_route("researcher"))

graph = builder.compile(checkpointer=open_sqlite_saver(db))
config = {"configurable": {"thread_id": "quickstart"}}
state = graph.invoke({"topic": "Why did Q3 churn rise?"}, config)  # paused: a loop
print("Escalation:", Escalation.model_validate(state["__interrupt__"][0].value).message)
state = graph.invoke(Command(resume={"action": "continue"}), config)  # let it try again
state = graph.invoke(Command(resume={"action": "accept_partial"}), config)
print("Outcome:", outcome_of(state))
# --- end ---
