"""Cost per step of loop detection: ``step_entry`` + ``check_loops`` at several window sizes
and history lengths.

For each window size (16, 64, 256), one thread per history length (100, 10,000 steps) is
built by folding that many steps through ``fold_ledger`` as ``guarded()`` does (the step's
window entry in the delta's ``entry``, the window size in ``window_size``), its messages
list growing with the steps' messages. A history shorter than the window is raised to the
window size, so that every thread is timed with a full window. Then the same
``--steps`` steps are timed on every thread, interleaved so that the machine's load
affects each history alike: computing the step's window entry and running every detector
(each step timed ``--repeat`` times, the fastest kept; figures are medians over the
steps). Three workloads:

- ``mixed``: a researcher (a ReAct step with a search tool call and its result), a writer
  and a critic take turns, with varied text;
- ``one_agent``: one agent with varied text, so the near-duplicate detector compares the
  new step with every entry of the window (its worst realistic case);
- ``tiny``: the node of ``bench/overhead.py``, a counter in a bare envelope.

Target (issue 4): the cost is flat in history (``cost@10000 / cost@100`` near 1) and grows
with the window only.

Usage: python bench/loops.py [--steps 400] [--repeat 5] [--windows 16 64 256]
                             [--histories 100 10000] [--json]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from typing import Any

from langchain_core.messages import AIMessage, HumanMessage, ToolMessage

from sanegraph.guards import Ledger
from sanegraph.guards.ledger import new_ledger
from sanegraph.guards.loops import LoopPolicy, check_loops, step_entry
from sanegraph.guards.reducer import fold_ledger

SYLLABLES = ("ka", "lo", "mi", "ne", "ru", "ta", "vo", "zi", "pe", "su", "do", "fa", "gu", "he")
WORDS = tuple(a + b + c for a in SYLLABLES for b in SYLLABLES for c in ("", "n", "r", "st"))
"""A vocabulary of 784 made-up words: texts share words about as much as real prose."""
AGENTS = ("researcher", "writer", "critic")


def sentence(rng: random.Random, n: int = 14) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n)).capitalize() + "."


def make_step(
    workload: str, i: int, rng: random.Random
) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """The i-th step: (agent, envelope, state update)."""
    if workload == "tiny":
        # bench/overhead.py's node: a counter in a bare envelope, no messages.
        return "step", {"status": "success", "result": i, "confidence": None, "reason": ""}, {}
    text = f"{sentence(rng)} {sentence(rng)}"
    agent = "worker" if workload == "one_agent" else AGENTS[i % 3]
    envelope = {"status": "success", "result": text, "confidence": 0.8, "reason": ""}
    messages: list[Any] = []
    if agent == "researcher":
        call_id = f"call-{i}"
        messages = [
            AIMessage(
                "",
                tool_calls=[{"name": "search", "args": {"q": sentence(rng, 4)}, "id": call_id}],
                id=f"ai-{i}",
            ),
            ToolMessage(sentence(rng), tool_call_id=call_id, name="search", id=f"tool-{i}"),
        ]
    messages.append(AIMessage(text, id=f"out-{i}"))
    return agent, envelope, {"messages": messages}


def fold_step(ledger: Ledger, agent: str, envelope: dict[str, Any], entry: list[Any]) -> Ledger:
    """Fold the step as ``guarded()`` does: its window entry goes in through the delta."""
    delta: dict[str, Any] = {
        "agent": agent,
        "hop": 1,
        "entry": entry,
        "envelope": [agent, envelope],
        "sane": True,
        "parent": f"checkpoint-{ledger['hops']}",
    }
    return fold_ledger(ledger, delta)


class Thread:
    """One thread's ledger and messages, and the timings of its timed steps."""

    def __init__(self, workload: str, window: int, history: int) -> None:
        self.policy = LoopPolicy(window=window)
        self.ledger = fold_ledger(new_ledger(), {"window_size": window})
        self.messages: list[Any] = [HumanMessage("Write the market report.", id="human")]
        # A window still filling up would make the short history look cheaper.
        history = max(history, window)
        self.history = history
        self.entry_ns: list[int] = []
        self.check_ns: list[int] = []
        self.trips = 0
        rng = random.Random(f"{workload}-{window}-{history}")
        for i in range(history):
            self.step(make_step(workload, i, rng), timed=0)

    def step(self, step: tuple[str, dict[str, Any], dict[str, Any]], timed: int) -> None:
        agent, envelope, update = step
        ledger, policy = self.ledger, self.policy
        state = {"messages": self.messages, "guard": ledger}
        hop = ledger["hops"] + 1
        window = ledger["window"]
        perf = time.perf_counter_ns
        # Both calls are pure: time a timed step `timed` times and keep the fastest, which
        # filters out the noise of other processes on the machine.
        best_entry = best_check = 1 << 62
        for _ in range(max(timed, 1)):
            t0 = perf()
            entry = step_entry(
                agent, envelope, update=update, state=state, policy=policy, window=window, hop=hop
            )
            t1 = perf()
            trip = check_loops(window, entry, policy=policy, agent=agent, hops=hop)
            t2 = perf()
            best_entry = min(best_entry, t1 - t0)
            best_check = min(best_check, t2 - t1)
        if timed:
            self.entry_ns.append(best_entry)
            self.check_ns.append(best_check)
            self.trips += trip is not None
        self.ledger = fold_step(ledger, agent, envelope, entry)
        self.messages.extend(update.get("messages", ()))


def measure(
    workload: str, window: int, histories: list[int], steps: int, repeat: int
) -> list[dict[str, Any]]:
    """Time the same ``steps`` steps on threads with each history length, interleaved so
    that the machine's load affects every history alike."""
    threads = [Thread(workload, window, history) for history in histories]
    rng = random.Random(f"{workload}-{window}-timed")
    for i in range(steps):
        step = make_step(workload, max(histories) + i, rng)
        for thread in threads:
            thread.step(step, timed=repeat)
    rows = []
    for thread in threads:
        assert len(thread.ledger["window"]) == window, "the ledger keeps window_size entries"
        total = [a + b for a, b in zip(thread.entry_ns, thread.check_ns, strict=True)]
        rows.append(
            {
                "workload": workload,
                "window": window,
                "history": thread.history,
                "messages": len(thread.messages),
                "entry_us": round(statistics.median(thread.entry_ns) / 1000, 1),
                "check_us": round(statistics.median(thread.check_ns) / 1000, 1),
                "total_us": round(statistics.median(total) / 1000, 1),
                "p90_us": round(sorted(total)[int(len(total) * 0.9)] / 1000, 1),
                "trips": thread.trips,
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=400, help="timed steps per configuration")
    parser.add_argument("--repeat", type=int, default=5, help="timings per step (fastest kept)")
    parser.add_argument("--windows", type=int, nargs="+", default=[16, 64, 256])
    parser.add_argument("--histories", type=int, nargs="+", default=[100, 10_000])
    parser.add_argument("--json", action="store_true", help="last line: one JSON object")
    args = parser.parse_args()

    results = []
    print(
        f"{'workload':<10} {'window':>6} {'history':>8} {'entry µs':>9} {'check µs':>9} "
        f"{'total µs':>9} {'p90 µs':>8} {'trips':>6}"
    )
    for workload in ("mixed", "one_agent", "tiny"):
        for window in args.windows:
            for row in measure(workload, window, args.histories, args.steps, args.repeat):
                results.append(row)
                print(
                    f"{workload:<10} {window:>6} {row['history']:>8} {row['entry_us']:>9} "
                    f"{row['check_us']:>9} {row['total_us']:>9} {row['p90_us']:>8} "
                    f"{row['trips']:>6}"
                )
    low, high = min(args.histories), max(args.histories)
    ratios: dict[str, dict[str, float]] = {}
    for workload, window in {(r["workload"], r["window"]): None for r in results}:
        rows = [r for r in results if r["workload"] == workload and r["window"] == window]
        shortest = min(rows, key=lambda r: r["history"])
        longest = max(rows, key=lambda r: r["history"])
        ratios.setdefault(workload, {})[str(window)] = round(
            longest["total_us"] / shortest["total_us"], 2
        )
    print(f"\ncost@{high} / cost@max({low}, window) (median total per step), by window:")
    for workload, by_window in ratios.items():
        shown = ", ".join(f"window {w}: {r}" for w, r in by_window.items())
        print(f"  {workload}: {shown}")
    if args.json:
        print(
            json.dumps(
                {
                    "unit": "microseconds per step (median)",
                    "steps": args.steps,
                    "results": results,
                    "history_ratio": ratios,
                }
            )
        )


if __name__ == "__main__":
    main()
