"""Chaos: a few hundred guarded runs with faults injected at random into model calls and
agent steps, random owner policies, the journal on and off. Every run terminates, hop
caps hold exactly, and what the provider billed never passes the budget when every
answer kept within its ``max_tokens``.

Fixed seed: a failure names the run, and rerunning it reproduces it.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import HumanMessage
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START
from langgraph.types import Command

from sanegraph.checkpoints import Journal, sqlite_saver
from sanegraph.guards import (
    Budget,
    GuardedState,
    GuardedStateGraph,
    GuardPolicy,
    GuardTripped,
    guard_route,
    guarded,
    read_ledger,
    task_owner,
)
from sanegraph.guards.testing import FaultyChatModel, ProviderError, envelope_message

SEED = 20261204
RUNS = 240
MAX_TOKENS = 60
ACTIONS = ("partial", "abort", "escalate", "raise")


class State(GuardedState, total=False):
    topic: str


class StepFailed(RuntimeError):
    """An agent step that crashed (after or instead of its call)."""


class Run:
    """One chaos run: its draws, what the provider billed, what happened."""

    def __init__(self, n: int) -> None:
        self.n = n
        rng = self.rng = random.Random(SEED * 1000 + n)
        self.cap = rng.randint(3, 12)
        self.tokens = rng.choice([300, 700, 1500, 4000])
        self.action = rng.choice(ACTIONS)
        self.journal = rng.random() < 0.25
        self.agents = rng.choice([("solo",), ("researcher", "analyst")])
        self.step_faults = rng.choice([0.0, 0.1, 0.25])
        self.model = FaultyChatModel.at_random(
            [
                envelope_message("partial", "a document"),
                envelope_message("partial", "another document"),
                envelope_message("success", "the answer"),
            ],
            seed=rng.randrange(1 << 30),
            rate=rng.choice([0.0, 0.15, 0.35]),
            cycle=True,
            max_tokens=MAX_TOKENS,
            model_name="gpt-4o-mini",
            hang_seconds=0.001,
        )
        self.billed_tokens = 0
        self.overshoot = 0
        self.granted_hops = 0
        self.granted_tokens = 0

    def agent(self, name: str) -> Any:
        def step(state: State, config: RunnableConfig) -> dict[str, Any]:
            fault = self.rng.random() < self.step_faults
            if fault and self.rng.random() < 0.3:
                raise StepFailed(f"{name} crashed before its call")
            reply = self.model.invoke([HumanMessage(f"{name}: {state.get('topic')}")], config)
            usage = reply.usage_metadata or {}
            self.billed_tokens += int(usage.get("input_tokens", 0)) + int(
                usage.get("output_tokens", 0)
            )
            self.overshoot += max(0, int(usage.get("output_tokens", 0)) - MAX_TOKENS)
            if fault:
                if self.rng.random() < 0.5:
                    raise StepFailed(f"{name} crashed after its call")
                return {"envelope": "garbage from a step"}
            return {"envelope": reply}

        step.__name__ = name
        return step

    def graph(self, saver: Any, journal: Any) -> Any:
        policy = GuardPolicy(
            hops=self.cap,
            budget=Budget(tokens=self.tokens, on_exhausted="interrupt"),
            owner=self.action,
        )
        builder = GuardedStateGraph(State)
        for name in self.agents:
            builder.add_node(name, guarded(self.agent(name), policy))
        builder.add_node("owner", task_owner(policy), destinations=(*self.agents, END))
        builder.add_edge(START, self.agents[0])
        ring = [*self.agents[1:], self.agents[0]]
        for here, there in zip(self.agents, ring, strict=True):
            builder.add_conditional_edges(here, guard_route(there, policy=policy))
        return builder.compile(checkpointer=saver, journal=journal)

    def decide(self, kind: str) -> dict[str, Any]:
        """A human's answer to an escalation: sometimes more allowance, sometimes stop."""
        choice = self.rng.random()
        if choice < 0.4:
            if kind == "hop_cap":
                self.granted_hops += 2
                return {"action": "continue", "extra_hops": 2}
            if kind == "budget":
                self.granted_tokens += 200
                return {"action": "continue", "extra_tokens": 200}
            return {"action": "continue"}
        if choice < 0.7:
            return {"action": "accept_partial"}
        return {"action": "abort", "reason": "chaos"}

    def play(self, graph: Any) -> dict[str, Any]:
        """Invoke until the run ends, as an application would: re-invoke after a crash,
        answer escalations, stop on a raised trip. Returns the final ledger."""
        config = {"configurable": {"thread_id": f"chaos-{self.n}"}}
        payload: Any = {"topic": f"run {self.n}"}
        for _ in range(80):
            try:
                out = graph.invoke(payload, config)
            except (StepFailed, ProviderError):
                payload = None  # retry the failed step, as LangGraph resumes it
                continue
            except GuardTripped:
                return read_ledger(graph.get_state(config).values)
            interrupts = out.get("__interrupt__") if isinstance(out, dict) else None
            if interrupts:
                payload = Command(resume=self.decide(interrupts[0].value["kind"]))
                continue
            return read_ledger(out)
        raise AssertionError(f"run {self.n} did not terminate in 80 invocations")


def test_chaos_runs_terminate_and_hold_caps_and_budgets(tmp_path: Path) -> None:
    journaled = 0
    for n in range(RUNS):
        run = Run(n)
        if run.journal:
            journaled += 1
            with sqlite_saver(tmp_path / f"run-{n}.sqlite") as saver, Journal(saver) as journal:
                ledger = run.play(run.graph(saver, journal))
        else:
            ledger = run.play(run.graph(InMemorySaver(), None))
        where = f"run {n} (seed {SEED}): {vars(run)}"
        assert ledger["hops"] <= run.cap + run.granted_hops, where
        spent = ledger["spent"]
        assert spent.get("input_tokens", 0) + spent.get("output_tokens", 0) == run.billed_tokens, (
            where
        )
        # Answers that kept within max_tokens never take the thread past its budget.
        assert run.billed_tokens <= run.tokens + run.granted_tokens + run.overshoot, where
    assert 30 <= journaled <= 90


@pytest.mark.parametrize("n", [3, 17])
def test_a_chaos_run_is_reproducible(n: int) -> None:
    first, second = Run(n), Run(n)
    assert first.model.faults == second.model.faults
    assert (first.cap, first.tokens, first.action) == (second.cap, second.tokens, second.action)
