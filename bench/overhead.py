"""Per-step cost of guarding: a 1,000-step graph, plain vs with ``guarded`` nodes.

Both graphs loop one node 1,000 times. The plain node returns its state update; the
guarded node wraps the same work and also returns an envelope, and its edge is a
``guard_route``. Each configuration runs ``--rounds`` pairs of runs (one plain, one
guarded, back to back); the figures are the median per-step times and the median of the
pairs' guarded / plain ratios. Both use ``durability="sync"`` with SqliteSaver (the
guarded default), on a file in the system's temporary folder.

Targets (issue 2): guarded/plain <= 1.10 without a checkpointer, <= 1.05 with SqliteSaver.

``--instructions`` counts CPU instructions per step instead (valgrind's callgrind, two
child runs per configuration; see ``bench/_instructions.py``): exact where time is noisy,
but not time.

Usage: python bench/overhead.py [--steps 1000] [--rounds 7] [--instructions] [--json]
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Literal, TypedDict

from _instructions import add_flag, child_units, per_unit, require_valgrind
from langgraph.checkpoint.sqlite import SqliteSaver
from langgraph.graph import END, START, StateGraph

from sanegraph.guards import (
    GuardedState,
    GuardedStateGraph,
    GuardPolicy,
    guard_route,
    guarded,
    task_owner,
)

KINDS = ("plain", "guarded")
SAVERS = ("none", "sqlite")
TARGETS = {"none": 1.10, "sqlite": 1.05}


class PlainState(TypedDict):
    n: int


class GuardedLoopState(GuardedState, total=False):
    n: int


def build(kind: str, steps: int, saver: Any) -> Any:
    def again(state: Any) -> Literal["step", "__end__"]:
        return "step" if state["n"] < steps else END

    if kind == "plain":

        def step(state: PlainState) -> dict[str, Any]:
            return {"n": state["n"] + 1}

        builder: Any = StateGraph(PlainState)
        builder.add_node("step", step)
        builder.add_conditional_edges("step", again)
    else:

        def work(state: GuardedLoopState) -> dict[str, Any]:
            n = state["n"] + 1
            return {"n": n, "envelope": {"status": "success", "result": n}}

        policy = GuardPolicy(hops=steps + 1)
        builder = GuardedStateGraph(GuardedLoopState)
        builder.add_node("step", guarded(work, policy, name="step"))
        builder.add_node("owner", task_owner(policy), destinations=(END,))
        builder.add_conditional_edges("step", guard_route(again))
    builder.add_edge(START, "step")
    return builder.compile(checkpointer=saver)


def per_step_us(kind: str, steps: int, saver_kind: str, folder: Path, round_no: int) -> float:
    saver = None
    conn = None
    if saver_kind == "sqlite":
        conn = sqlite3.connect(folder / f"{kind}-{round_no}.db", check_same_thread=False)
        saver = SqliteSaver(conn)
    graph = build(kind, steps, saver)
    config: dict[str, Any] = {"configurable": {"thread_id": "bench"}, "recursion_limit": steps + 10}
    options = {"durability": "sync"} if saver is not None else {}
    start = time.perf_counter()
    out = graph.invoke({"n": 0}, config, **options)
    elapsed = time.perf_counter() - start
    if out["n"] != steps:
        # Timing (or counting) a run that stopped early would flatter it.
        raise AssertionError(f"{kind} ran {out['n']} of {steps} steps")
    if conn is not None:
        conn.close()
    return elapsed / steps * 1e6


def child(kind: str, saver_kind: str, steps: int) -> None:
    """A ``--child`` run for ``--instructions``: warm up, then one run of ``steps`` steps."""
    with tempfile.TemporaryDirectory() as tmp:
        per_step_us(kind, 20, saver_kind, Path(tmp), -1)
        per_step_us(kind, steps, saver_kind, Path(tmp), 0)


def instructions(steps: int) -> dict[str, Any]:
    """Instructions per step of each configuration, and the guarded / plain ratios."""
    require_valgrind()
    script = Path(__file__)
    small = max(steps // 4, 50)
    figures: dict[str, Any] = {"steps": steps, "unit": "instructions per step"}
    for saver_kind in SAVERS:
        counts = {kind: per_unit(script, [kind, saver_kind], small, steps) for kind in KINDS}
        figures[saver_kind] = {
            "plain_instructions_per_step": round(counts["plain"]),
            "guarded_instructions_per_step": round(counts["guarded"]),
            "ratio": round(counts["guarded"] / counts["plain"], 3),
        }
    return figures


def main() -> None:
    run = child_units(sys.argv)
    if run is not None:
        (kind, saver_kind), units = run
        child(kind, saver_kind, units)
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=7)
    add_flag(parser, per="step")
    parser.add_argument(
        "--json", action="store_true", help="print one JSON object as the last line"
    )
    args = parser.parse_args()
    if args.instructions:
        counted = instructions(args.steps)
        print(f"{'checkpointer':<14}{'plain instr/step':>18}{'guarded instr/step':>20}{'ratio':>8}")
        for saver_kind, label in (("none", "none"), ("sqlite", "SqliteSaver")):
            f = counted[saver_kind]
            print(
                f"{label:<14}{f['plain_instructions_per_step']:>18,}"
                f"{f['guarded_instructions_per_step']:>20,}{f['ratio']:>8}"
            )
        if args.json:
            print(json.dumps(counted))
        return

    figures: dict[str, Any] = {"steps": args.steps, "rounds": args.rounds}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for saver_kind in SAVERS:
            samples: dict[str, list[float]] = {kind: [] for kind in KINDS}
            ratios: list[float] = []
            per_step_us("plain", 50, saver_kind, folder, -1)  # warm imports and caches
            per_step_us("guarded", 50, saver_kind, folder, -2)
            for round_no in range(args.rounds):
                # Each round pairs one plain and one guarded run, back to back and in
                # alternating order: the ratio of a pair is immune to slow drifts in
                # machine load, and the median of the pairs to the odd disturbed run.
                order = ("plain", "guarded") if round_no % 2 == 0 else ("guarded", "plain")
                pair = {}
                for kind in order:
                    pair[kind] = per_step_us(kind, args.steps, saver_kind, folder, round_no)
                    samples[kind].append(pair[kind])
                ratios.append(pair["guarded"] / pair["plain"])
            figures[saver_kind] = {
                "plain_us_per_step": round(statistics.median(samples["plain"]), 1),
                "guarded_us_per_step": round(statistics.median(samples["guarded"]), 1),
                "ratio": round(statistics.median(ratios), 3),
            }

    targets = TARGETS
    print(
        f"{'checkpointer':<14}{'plain µs/step':>15}{'guarded µs/step':>17}{'ratio':>8}{'target':>8}"
    )
    for saver_kind, label in (("none", "none"), ("sqlite", "SqliteSaver")):
        f = figures[saver_kind]
        print(
            f"{label:<14}{f['plain_us_per_step']:>15}{f['guarded_us_per_step']:>17}"
            f"{f['ratio']:>8}{'<= ' + str(targets[saver_kind]):>8}"
        )
    if args.json:
        print(json.dumps(figures))


if __name__ == "__main__":
    main()
