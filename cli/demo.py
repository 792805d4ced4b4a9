"""The main job: the researcher/analyst incident, unguarded and guarded, on a SQLite file.

Production reports describe an analyst agent that answers "I need more context" to every
draft, and a researcher that fetches another document each time, for as long as the
framework lets them. ``run_demo`` replays that with scripted chat models (no network):

1. unguarded: plain LangGraph, stopped only by a safety ``recursion_limit``;
2. guarded: the same agents in a sanegraph graph with the default policy: loop detection
   sees the analyst ask for "more context" a third time and routes the run to the task
   owner, which keeps the researcher's last document as the partial result;
3. hop cap only: loop detection off, stopped at the hop cap, routed to the owner;
4. escalated: hop cap only, but the owner pauses for a human, who grants more hops once
   and then accepts the partial result;
5. rolled back: the guarded thread forked from its last sane checkpoint with a narrower
   task, and finished by an analyst that now has what it needs.

Everything is persisted to one SQLite file that ``sanegraph runs`` / ``show`` can read.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from langchain_core.messages import AIMessage, AnyMessage
from langgraph.errors import GraphRecursionError
from langgraph.graph import START, StateGraph
from langgraph.types import Command

from sanegraph.checkpoints import open_sqlite_saver, rollback
from sanegraph.graphs import SequentialState, parallel_graph, sequential_graph
from sanegraph.guards import Budget, GuardPolicy, outcome_of, read_ledger
from sanegraph.guards._compat import sqlite_connection
from sanegraph.guards.testing import ScriptedChatModel, envelope_message, scripted_agent

from ._format import table

__all__ = ("DemoReport", "DemoRun", "render", "run_demo")

GraphKind = Literal["sequential", "parallel"]

MODEL = "gpt-4o-mini"
PROVIDER = "openai"
BUDGET = Budget(usd=1)
"""The guarded runs' money limit: far above what they spend; the ledger meters each call,
so ``sanegraph runs`` / ``show`` report what every thread cost."""
SAFETY_CAP = 100
"""The unguarded run's only stop: LangGraph's ``recursion_limit`` (its default is 10,007)."""

_DOCS = [
    "Q3 revenue by region (EMEA up 4%)",
    "Churn interviews, 40 accounts",
    "Competitor pricing sheet",
    "Support ticket themes, Q3",
    "Sales pipeline export",
]


@dataclass(kw_only=True)
class DemoRun:
    """One row of the demo's table."""

    name: str
    thread_id: str
    stopped_by: str
    hops: int
    model_calls: int
    tokens: int
    usd: float
    status: str
    result: Any = None
    notes: list[str] = field(default_factory=list)


@dataclass(kw_only=True)
class DemoReport:
    """What ``sanegraph demo`` found; ``--json`` prints it as one object."""

    db: str
    graph: str
    max_hops: int
    runs: list[DemoRun]
    hints: list[str]

    def to_json(self) -> str:
        """The report as a JSON object."""
        return json.dumps(asdict(self), default=str)


def _usd(input_tokens: int, output_tokens: int) -> float:
    from genai_prices import Usage, calc_price

    price = calc_price(
        Usage(input_tokens=input_tokens, output_tokens=output_tokens),
        model_ref=MODEL,
        provider_id=PROVIDER,
    )
    return float(price.total_price)


def _spend(messages: list[AnyMessage]) -> tuple[int, int, float]:
    calls = inputs = outputs = 0
    for message in messages:
        usage = getattr(message, "usage_metadata", None)
        if isinstance(message, AIMessage) and usage:
            calls += 1
            inputs += usage["input_tokens"]
            outputs += usage["output_tokens"]
    return calls, inputs + outputs, _usd(inputs, outputs)


def _models() -> tuple[ScriptedChatModel, ScriptedChatModel]:
    researcher = ScriptedChatModel(
        [envelope_message("success", doc, confidence=0.8) for doc in _DOCS],
        model_name=MODEL,
        provider=PROVIDER,
        cycle=True,
    )
    stuck = envelope_message("partial", None, confidence=0.2, reason="I need more context")
    analyst = ScriptedChatModel([stuck], model_name=MODEL, provider=PROVIDER, cycle=True)
    return researcher, analyst


def _as_node(model: ScriptedChatModel, name: str) -> Callable[[Any], dict[str, Any]]:
    ask = scripted_agent(model, name=name, prompt=f"You are the {name}.")

    def agent(state: Any) -> dict[str, Any]:
        return {"messages": [ask(state)]}

    agent.__name__ = name
    return agent


def _unguarded(saver: Any) -> DemoRun:
    """Plain LangGraph: the analyst's 'partial' sends the run back to the researcher."""
    researcher, analyst = _models()

    def route(state: Any) -> Literal["researcher", "__end__"]:
        reply = json.loads(state["messages"][-1].content)
        return "researcher" if reply["status"] != "success" else "__end__"

    builder: Any = StateGraph(SequentialState)
    builder.add_node("researcher", _as_node(researcher, "researcher"))
    builder.add_node("analyst", _as_node(analyst, "analyst"))
    builder.add_edge(START, "researcher")
    builder.add_edge("researcher", "analyst")
    builder.add_conditional_edges("analyst", route)
    graph = builder.compile(checkpointer=saver)
    config: Any = {
        "configurable": {"thread_id": f"unguarded-{uuid.uuid4().hex[:8]}"},
        "recursion_limit": SAFETY_CAP,
    }
    stopped_by = "nothing"
    try:
        graph.invoke({"task": "Why did Q3 churn rise?"}, config, durability="sync")
    except GraphRecursionError:
        stopped_by = f"recursion_limit={SAFETY_CAP}"
    values = graph.get_state(config).values
    calls, tokens, usd = _spend(values.get("messages", []))
    return DemoRun(
        name="unguarded",
        thread_id=config["configurable"]["thread_id"],
        stopped_by=stopped_by,
        hops=calls,
        model_calls=calls,
        tokens=tokens,
        usd=usd,
        status="crashed (GraphRecursionError)" if stopped_by != "nothing" else "finished",
        notes=["LangGraph's default recursion_limit (10,007) would have let it run on."],
    )


def _guarded_graph(kind: GraphKind, policy: GuardPolicy, models: tuple[Any, Any]) -> Any:
    researcher, analyst = models
    if kind == "sequential":
        return sequential_graph(
            [
                ("researcher", _as_node(researcher, "researcher")),
                ("analyst", _as_node(analyst, "analyst")),
            ],
            policy=policy,
        )
    return parallel_graph(
        {"researcher": _as_node(researcher, "researcher")},
        ("analyst", _as_node(analyst, "analyst")),
        policy=policy,
        on_incomplete="again",
    )


def _row(name: str, graph: Any, config: Any, notes: list[str]) -> DemoRun:
    # The newest checkpoint of the thread (a forked config names an older one).
    snapshot = graph.get_state({"configurable": {"thread_id": config["configurable"]["thread_id"]}})
    values = snapshot.values
    ledger = read_ledger(values)
    calls, tokens, usd = _spend(values.get("messages", []))
    trip = ledger["trips"][-1]["kind"] if ledger["trips"] else "nothing"
    outcome = outcome_of(values)
    status: str = ledger["status"]
    if snapshot.interrupts:
        status = "paused for a human"
    elif not snapshot.next and status == "running":
        status = "finished"
    return DemoRun(
        name=name,
        thread_id=config["configurable"]["thread_id"],
        stopped_by=trip if status != "finished" else "nothing (finished)",
        hops=ledger["hops"],
        model_calls=calls,
        tokens=tokens,
        usd=usd,
        status=status,
        result=(outcome or {}).get("result"),
        notes=notes,
    )


def run_demo(
    *, db: str | Path = "sanegraph-demo.db", graph: GraphKind = "sequential", max_hops: int = 12
) -> DemoReport:
    """Run the four demo threads on ``db`` and report what each did.

    Args:
        db: The SQLite file (created if missing; threads are added to it).
        graph: Which prebuilt graph the guarded runs use.
        max_hops: The guarded runs' hop cap.

    Returns:
        The report (``DemoReport.to_json()`` for machines).
    """
    path = str(db)
    saver = open_sqlite_saver(path)
    try:
        runs = [_unguarded(saver)]
        task = {"task": "Why did Q3 churn rise?", "tasks": ["churn drivers"]}

        guarded = _guarded_graph(
            graph, GuardPolicy(hops=max_hops, budget=BUDGET), _models()
        ).compile(checkpointer=saver)
        config: Any = {"configurable": {"thread_id": f"guarded-{uuid.uuid4().hex[:8]}"}}
        guarded.invoke(task, config)
        runs.append(
            _row(
                "guarded",
                guarded,
                config,
                [
                    "Loop detection saw the analyst's third identical request; the owner "
                    "kept the researcher's last document."
                ],
            )
        )

        capped = _guarded_graph(
            graph, GuardPolicy(hops=max_hops, budget=BUDGET, loops=False), _models()
        )
        capped_graph = capped.compile(checkpointer=saver)
        cap_config: Any = {"configurable": {"thread_id": f"hop-cap-{uuid.uuid4().hex[:8]}"}}
        capped_graph.invoke(task, cap_config)
        runs.append(
            _row(
                "hop cap only",
                capped_graph,
                cap_config,
                ["Loop detection off (loops=False): the hop cap stopped it."],
            )
        )

        escalating = _guarded_graph(
            graph,
            GuardPolicy(hops=max_hops, budget=BUDGET, owner="escalate", loops=False),
            _models(),
        )
        esc = escalating.compile(checkpointer=saver)
        esc_config: Any = {"configurable": {"thread_id": f"escalated-{uuid.uuid4().hex[:8]}"}}
        esc.invoke(task, esc_config)
        esc.invoke(Command(resume={"action": "continue", "extra_hops": 4}), esc_config)
        esc.invoke(Command(resume={"action": "accept_partial", "note": "good enough"}), esc_config)
        runs.append(
            _row(
                "escalated",
                esc,
                esc_config,
                ["Paused twice: a human granted 4 more hops, then accepted the partial result."],
            )
        )

        # Roll the guarded thread back to its last sane checkpoint with a narrower task;
        # this time the analyst has what it needs.
        researcher, _ = _models()
        fixed_analyst = ScriptedChatModel(
            [envelope_message("success", "Churn rose with the EMEA price change", confidence=0.9)],
            model_name=MODEL,
            provider=PROVIDER,
        )
        fixed = _guarded_graph(
            graph, GuardPolicy(hops=max_hops, budget=BUDGET), (researcher, fixed_analyst)
        )
        fixed_graph = fixed.compile(checkpointer=saver)
        narrower = {"task": "Did the EMEA price change drive churn?"}
        forked = rollback(fixed_graph, config, patch=narrower)
        fixed_graph.invoke(None, forked)
        runs.append(
            _row(
                "rolled back",
                fixed_graph,
                forked,
                [
                    "Forked from the guarded thread's last sane checkpoint (before the "
                    "loop) with a narrower task."
                ],
            )
        )
    finally:
        sqlite_connection(saver).close()
    hints = [
        f"sanegraph runs --db {path}          # every thread in the file, with status and hops",
        f"sanegraph show --db {path} {runs[1].thread_id}   # one thread's ledger and trips",
        "Resume a paused run in code:   "
        "graph.invoke(Command(resume={'action': 'continue', 'extra_hops': 4}), config)",
        "Roll back in code:             "
        "cfg = rollback(graph, config, patch={...}); graph.invoke(None, cfg)",
    ]
    return DemoReport(db=path, graph=graph, max_hops=max_hops, runs=runs, hints=hints)


def render(report: DemoReport) -> str:
    """The report as a short table and next-step hints, for people."""
    head = ("run", "stopped by", "hops", "model calls", "tokens", "cost", "status")
    rows = [
        (
            r.name,
            r.stopped_by,
            str(r.hops),
            str(r.model_calls),
            f"{r.tokens:,}",
            f"${r.usd:.4f}",
            r.status,
        )
        for r in report.runs
    ]
    out = [
        f"sanegraph demo: the researcher/analyst incident ({report.graph} graph, "
        f"max_hops={report.max_hops}, scripted {MODEL})",
        "",
        *table(head, rows, rule=True),
        "",
    ]
    for run in report.runs:
        result = f" Result kept: {run.result!r}." if run.result is not None else ""
        out.append(f"- {run.name} ({run.thread_id}): {' '.join(run.notes)}{result}")
    out += ["", f"Saved to {report.db}. Next:"]
    out += [f"  {hint}" for hint in report.hints]
    return "\n".join(out)
