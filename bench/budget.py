"""Per-model-call cost of budget metering, next to LangChain's ``ModelCallLimitMiddleware``.

One agent, built with ``langchain.agents.create_agent`` (a ``lookup`` tool) around a
``ScriptedChatModel`` (``gpt-4o-mini`` from ``openai``, ``max_tokens=256``, realistic
``usage_metadata``), is invoked with the conversation a tool-calling loop holds at its next
model call: a question, then ``--tool-calls`` AI tool calls, each followed by its tool
result (by default 9: 19 input messages, the loop's 10th call). The model answers: each
invoke is one model call. Variants of the same agent:

- ``plain``: no middleware, no metering;
- ``theirs``: ``ModelCallLimitMiddleware(run_limit=<never reached>)``, which counts calls
  in graph state with ``before_model`` / ``after_model`` nodes;
- ``ours``: the plain agent invoked inside ``with metering(BudgetMeter(Budget(...)))``, a
  fresh meter per invoke (a guarded step making one call): the call is projected
  (``count_tokens_approximately`` on its input plus ``max_tokens``, priced with
  genai-prices), checked against the budget before the model runs, then priced and
  recorded from its ``usage_metadata``;
- ``handler``: the plain agent with a callback handler that does nothing, attached the way
  ``metering`` attaches the meter: what LangChain's callback machinery costs any handler
  (the floor under ``ours``), for reference.

With ``--loop`` the agent runs its own tool-calling loop instead: the model answers the
question with ``--tool-calls`` tool calls, one per turn, then the summary, so one invoke
is ``--tool-calls + 1`` model calls (10 by default) as a user's agent makes them, and
``ours`` is one meter for the whole invoke (a guarded step running the agent); figures
are per model call.

No limit ever trips. By default no checkpointer is used: the setting most favourable to
``theirs``, whose two extra nodes per call each write a checkpoint when there is one
(``--checkpointer memory`` compiles every agent with an ``InMemorySaver``; its figures
are noisier). Invokes are interleaved (one of each variant, back to back, in a rotating
order) to cancel drifts in machine speed, and each invoke is timed in CPU time
(``time.process_time``: the work, all threads, without the time this shared machine's
scheduler gives to others). A
round runs ``--calls`` calls per variant on fresh agents; the figures are the medians
over ``--rounds`` of the rounds' mean times per call. The overhead of a variant is its
time minus plain's; the ratio is ours' overhead / theirs' (the median of the rounds'
ratios is printed too).

Target (issue 3): ours_overhead / theirs_overhead <= 0.2.

``--instructions`` counts CPU instructions per model call instead (valgrind's callgrind,
two child runs per variant; see ``bench/_instructions.py``): exact where time is noisy,
but not time.

Usage: python bench/budget.py [--calls 800] [--rounds 7] [--tool-calls 9] [--loop]
       [--checkpointer none|memory] [--instructions] [--json]
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import statistics
import sys
import time
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _instructions import add_flag, child_units, per_unit, require_valgrind
from langchain.agents import create_agent
from langchain.agents.middleware import ModelCallLimitMiddleware
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage
from langchain_core.tools import tool
from langchain_core.tracers.context import register_configure_hook
from langgraph.checkpoint.memory import InMemorySaver

from sanegraph.guards import Budget
from sanegraph.guards.budget import BudgetMeter, metering
from sanegraph.guards.testing import ScriptedChatModel

KINDS = ("plain", "theirs", "ours", "handler")
TARGET = 0.2
NEVER = 10**9
"""A limit no bench run comes near."""


@tool
def lookup(query: str) -> str:
    """Look a query up (the bench's trivial tool)."""
    return f"Found 3 results for {query!r}."


class NoopHandler(BaseCallbackHandler):
    """Receives model-call events and does nothing, attached like the meter (and ignoring
    the same events, with the same class attributes)."""

    raise_error = True
    run_inline = True
    ignore_chain = True
    ignore_agent = True
    ignore_retriever = True
    ignore_retry = True
    ignore_custom_event = True
    ignore_llm = False
    ignore_chat_model = False

    def on_chat_model_start(self, *args: Any, **kwargs: Any) -> None:
        pass

    def on_llm_end(self, *args: Any, **kwargs: Any) -> None:
        pass


_NOOP: ContextVar[NoopHandler | None] = ContextVar("bench_noop_handler", default=None)
register_configure_hook(_NOOP, inheritable=True)


def conversation(tool_calls: int) -> list[BaseMessage]:
    """A question, then ``tool_calls`` AI tool calls, each followed by its result."""
    messages: list[BaseMessage] = [
        HumanMessage("Summarize what is known about the topics.", id="question")
    ]
    for i in range(tool_calls):
        call = {"name": "lookup", "args": {"query": f"topic {i}"}, "id": f"call_{i}"}
        messages.append(AIMessage("Let me look that up.", tool_calls=[call], id=f"ai_{i}"))
        result = f"Found 3 results for 'topic {i}'."
        messages.append(
            ToolMessage(result, tool_call_id=f"call_{i}", name="lookup", id=f"tool_{i}")
        )
    return messages


def check_metering(workload: Workload) -> None:
    """The meter runs for real: each call is projected with max_tokens and priced."""
    meter = BudgetMeter(Budget(usd=NEVER, tokens=NEVER), agent="bench")
    with metering(meter):
        build("plain", "none", workload).invoke({"messages": workload.messages})
    if len(meter.calls) != workload.calls:
        raise AssertionError(f"metered {len(meter.calls)} calls, expected {workload.calls}")
    for record in meter.calls:
        if record["max_tokens"] != 256 or record["projected"]["output_tokens"] != 256:
            raise AssertionError(f"the call was not projected with max_tokens: {record}")
        if record["usd_micros"] <= 0 or record["projected"]["usd_micros"] <= 0:
            raise AssertionError(f"the call was not priced: {record}")


@dataclass(frozen=True)
class Workload:
    """What each invoke sends and what the scripted model answers."""

    messages: list[BaseMessage]
    script: list[AIMessage]

    @property
    def calls(self) -> int:
        """Model calls per invoke."""
        return len(self.script)


def workload(tool_calls: int, loop: bool) -> Workload:
    answer = AIMessage("Here is the summary of what I found.")
    if not loop:
        return Workload(conversation(tool_calls), [answer])
    turns = [
        AIMessage(
            "Let me look that up.",
            tool_calls=[{"name": "lookup", "args": {"query": f"topic {i}"}, "id": f"call_{i}"}],
        )
        for i in range(tool_calls)
    ]
    return Workload(conversation(0), [*turns, answer])


def build(kind: str, checkpointer: str, work: Workload) -> Any:
    model = ScriptedChatModel(
        work.script,
        model_name="gpt-4o-mini",
        provider="openai",
        max_tokens=256,
        cycle=True,
    )
    middleware = [ModelCallLimitMiddleware(run_limit=NEVER)] if kind == "theirs" else []
    saver = InMemorySaver() if checkpointer == "memory" else None
    return create_agent(model, tools=[lookup], middleware=middleware, checkpointer=saver)


def caller(kind: str, agent: Any, work: Workload) -> Callable[[], float]:
    """One timed invoke of a variant; returns its seconds."""
    budget = Budget(usd=NEVER, tokens=NEVER)
    state = {"messages": work.messages}
    calls = work.calls
    clock = time.process_time
    threads = itertools.count()

    def config() -> dict[str, Any]:
        # A thread per invoke: with a checkpointer, a thread would otherwise grow.
        return {"configurable": {"thread_id": f"{kind}-{next(threads)}"}}

    def plain() -> float:
        cfg = config()
        start = clock()
        agent.invoke(state, cfg)
        return clock() - start

    def ours() -> float:
        cfg = config()
        start = clock()
        meter = BudgetMeter(budget, agent="bench")
        with metering(meter):
            agent.invoke(state, cfg)
        elapsed = clock() - start
        if len(meter.calls) != calls:
            raise AssertionError(f"metered {len(meter.calls)} calls, expected {calls}")
        return elapsed

    def handler() -> float:
        cfg = config()
        start = clock()
        token = _NOOP.set(NoopHandler())
        try:
            agent.invoke(state, cfg)
        finally:
            _NOOP.reset(token)
        return clock() - start

    return {"ours": ours, "handler": handler}.get(kind, plain)


def one_round(calls: int, work: Workload, shift: int, checkpointer: str) -> dict[str, float]:
    """Mean µs per model call of each variant, over ``calls`` interleaved model calls."""
    # Fresh agents each round: the scripted model keeps every call's input, and a heap
    # growing across rounds would slow the later ones (more for the GC to walk).
    runs = {kind: caller(kind, build(kind, checkpointer, work), work) for kind in KINDS}
    for run in runs.values():
        run()  # compile-time caches, first-call work
    total = dict.fromkeys(KINDS, 0.0)
    invokes = max(1, calls // work.calls)
    gc.collect()
    for i in range(invokes):
        start = (i + shift) % len(KINDS)
        for kind in KINDS[start:] + KINDS[:start]:
            total[kind] += runs[kind]()
    return {kind: total[kind] / (invokes * work.calls) * 1e6 for kind in KINDS}


def child(kind: str, tool_calls: int, loop: bool, checkpointer: str, invokes: int) -> None:
    """A ``--child`` run for ``--instructions``: warm up, then ``invokes`` invokes."""
    work = workload(tool_calls, loop)
    run = caller(kind, build(kind, checkpointer, work), work)
    for _ in range(20):
        run()
    for _ in range(invokes):
        run()


def instructions(calls: int, tool_calls: int, loop: bool, checkpointer: str) -> dict[str, Any]:
    """Instructions per model call of each variant, the overheads and ours / theirs."""
    require_valgrind()
    work = workload(tool_calls, loop)
    invokes = max(calls // work.calls, 4)
    flags = [str(tool_calls), "loop" if loop else "call", checkpointer]
    per_call = {
        kind: per_unit(Path(__file__), [kind, *flags], invokes // 4, invokes) / work.calls
        for kind in KINDS
    }
    overhead = {kind: per_call[kind] - per_call["plain"] for kind in KINDS}
    ratio = overhead["ours"] / overhead["theirs"] if overhead["theirs"] > 0 else None
    return {
        "scenario": "loop" if loop else "call",
        "model_calls_per_invoke": work.calls,
        "checkpointer": checkpointer,
        "unit": "instructions per model call",
        **{f"{kind}_instructions_per_call": round(per_call[kind]) for kind in KINDS},
        **{f"{kind}_overhead_instructions": round(overhead[kind]) for kind in KINDS[1:]},
        "ratio": None if ratio is None else round(ratio, 3),
        "target": TARGET,
    }


def main() -> None:
    run = child_units(sys.argv)
    if run is not None:
        (kind, tool_calls, scenario, checkpointer), units = run
        child(kind, int(tool_calls), scenario == "loop", checkpointer, units)
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=800, help="model calls per variant per round")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument(
        "--tool-calls",
        type=int,
        default=9,
        help="tool calls already in the conversation (with --loop: made by the agent)",
    )
    parser.add_argument(
        "--loop",
        action="store_true",
        help="the agent runs its tool loop: tool-calls + 1 model calls per invoke, one meter",
    )
    parser.add_argument(
        "--checkpointer",
        choices=("none", "memory"),
        default="none",
        help="compile the agents with no checkpointer or an InMemorySaver",
    )
    add_flag(parser, per="model call")
    parser.add_argument(
        "--json", action="store_true", help="print one JSON object as the last line"
    )
    args = parser.parse_args()
    if args.calls < 1 or args.rounds < 1 or args.tool_calls < 0:
        parser.error("--calls and --rounds must be >= 1, --tool-calls >= 0")
    if args.instructions:
        counted = instructions(args.calls, args.tool_calls, args.loop, args.checkpointer)
        print(f"{'variant':<10}{'instr/call':>14}{'overhead instr/call':>22}")
        for kind in KINDS:
            extra = "" if kind == "plain" else f"{counted[f'{kind}_overhead_instructions']:+,}"
            print(f"{kind:<10}{counted[f'{kind}_instructions_per_call']:>14,}{extra:>22}")
        print(f"ours/theirs overhead in instructions: {counted['ratio']} (target <= {TARGET})")
        if args.json:
            print(json.dumps(counted))
        return

    work = workload(args.tool_calls, args.loop)
    check_metering(work)
    one_round(50, work, 0, args.checkpointer)  # warm imports, genai-prices' data and caches

    samples: dict[str, list[float]] = {kind: [] for kind in KINDS}
    ratios: list[float] = []
    for round_no in range(args.rounds):
        sample = one_round(args.calls, work, round_no, args.checkpointer)
        for kind in KINDS:
            samples[kind].append(sample[kind])
        theirs = sample["theirs"] - sample["plain"]
        if theirs > 0:
            ratios.append((sample["ours"] - sample["plain"]) / theirs)

    per_call = {kind: statistics.median(samples[kind]) for kind in KINDS}
    overhead = {kind: per_call[kind] - per_call["plain"] for kind in KINDS}
    ratio = overhead["ours"] / overhead["theirs"] if overhead["theirs"] > 0 else None
    figures: dict[str, Any] = {
        "scenario": "loop" if args.loop else "call",
        "model_calls_per_invoke": work.calls,
        "input_messages": len(work.messages),
        "checkpointer": args.checkpointer,
        "calls": args.calls,
        "rounds": args.rounds,
        **{f"{kind}_us_per_call": round(per_call[kind], 1) for kind in KINDS},
        **{
            f"{kind}_overhead_us_per_call": round(overhead[kind], 1)
            for kind in KINDS
            if kind != "plain"
        },
        "ratio": None if ratio is None else round(ratio, 3),
        "median_round_ratio": round(statistics.median(ratios), 3) if ratios else None,
        "handler_share_of_ours": (
            round(overhead["handler"] / overhead["ours"], 3) if overhead["ours"] > 0 else None
        ),
        "target": TARGET,
        "target_met": ratio is not None and ratio <= TARGET,
    }

    print(
        (
            f"the agent's tool loop, {work.calls} model calls per invoke (one meter)"
            if args.loop
            else f"one model call per invoke, {len(work.messages)} input messages"
        )
        + f", checkpointer "
        f"{args.checkpointer}, "
        f"{args.calls} calls x {args.rounds} rounds per variant"
    )
    print(f"{'variant':<10}{'µs/call':>10}{'overhead µs/call':>18}")
    for kind in KINDS:
        extra = "" if kind == "plain" else f"{figures[f'{kind}_overhead_us_per_call']:+.1f}"
        print(f"{kind:<10}{figures[f'{kind}_us_per_call']:>10}{extra:>18}")
    print(
        f"ours/theirs overhead: {figures['ratio']} (median of rounds "
        f"{figures['median_round_ratio']}), target <= {TARGET}: "
        f"{'met' if figures['target_met'] else 'NOT met'}"
    )
    if args.json:
        print(json.dumps(figures))


if __name__ == "__main__":
    main()
