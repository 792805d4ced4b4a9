"""One guarded step: the checks before the agent runs, the meter while it runs, and the
ledger delta after. The sync and async node shells in :mod:`.node` share all of it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from functools import partial
from typing import Any

from langchain_core.messages import AIMessage
from langchain_core.runnables import RunnableConfig
from langgraph.types import Command
from pydantic_core import PydanticSerializationError

from . import _compat
from ._fingerprint import digest
from ._scope import SCOPE_KEY, Branch, RunScope, scope_of
from ._spending import JournalHooks, athread_of, call_key_prefix, thread_of
from .budget.meter import AsyncBudgetMeter, BudgetMeter, metering
from .budget.policy import Budget
from .budget.spend import AsyncSpendJournal, Spend
from .checks import check_deadline, check_envelope, check_hops
from .envelope import Envelope, coerce_envelope, envelope_to_dict, plain_envelope_dict
from .errors import BudgetExceeded, GuardTripped
from .ledger import (
    BRANCH_KEY,
    FANOUT_HOPS,
    EnvelopeRecord,
    Ledger,
    StepDelta,
    StepWrite,
    read_ledger,
)
from .loops.detectors import check_loops
from .loops.entry import step_entry
from .policy import GuardPolicy
from .reducer import fold_ledger
from .trips import Trip

__all__ = ("Guard", "Metered", "StepRun")

_NOTHING = Spend()
_NO_LIMITS = Budget()
_ENVELOPE_KEYS = frozenset(("status", "result", "confidence", "reason"))
_MISSING: Any = object()
_NO_ENVELOPE = (
    "the agent returned a state update with no envelope; add it under 'envelope', or put "
    "an AIMessage carrying it last in 'messages'"
)


def _split(output: Any) -> tuple[Any, dict[str, Any], Command[Any] | None]:
    """Separate an agent's output into (envelope source, state update, command)."""
    if isinstance(output, Command):
        update = output.update
        if isinstance(update, Mapping):
            source, rest, _ = _split(dict(update))
        else:
            source, rest = _MISSING, {}
        return source, rest, output
    if isinstance(output, dict):
        if "status" in output and output.keys() <= _ENVELOPE_KEYS:
            return output, {}, None
        if "parsed" in output and "raw" in output:
            return output, {}, None
        update = dict(output)
        if "envelope" in update:
            return update.pop("envelope"), update, None
        messages = update.get("messages")
        if isinstance(messages, list) and messages and isinstance(messages[-1], AIMessage):
            return messages[-1], update, None
        if isinstance(messages, AIMessage):
            return messages, update, None
        return _MISSING, update, None
    return output, {}, None


class Metered:
    """Runs an agent under its step's budget meter: a call the meter blocked ends the
    step (``stopped``) instead of raising out of the node; the meter is always closed."""

    __slots__ = ("_metering", "meter", "stopped")

    def __init__(self, meter: BudgetMeter) -> None:
        self.meter = meter
        self.stopped = False
        self._metering = metering(meter)

    def __enter__(self) -> Metered:
        self._metering.__enter__()
        return self

    def __exit__(self, kind: Any, error: BaseException | None, tb: Any) -> bool:
        try:
            self._metering.__exit__(kind, error, tb)
        finally:
            self.meter.close()
        # A BudgetExceeded this meter did not raise (a subgraph's owner raising it) goes on.
        self.stopped = isinstance(error, BudgetExceeded) and self.meter.trip is not None
        return self.stopped


class StepRun:
    """What one run of a guarded step knows: its inputs, the ledger it started from, the
    delta it is building, and its place among parallel branches."""

    __slots__ = (
        "agent",
        "branch",
        "config",
        "delta",
        "info",
        "is_async",
        "ledger",
        "meter",
        "scope",
        "state",
    )

    def __init__(
        self, state: Any, config: RunnableConfig, runtime: Any, agent: str, is_async: bool
    ) -> None:
        self.is_async = is_async
        self.state = state
        self.config = config
        self.info = getattr(runtime, "execution_info", None)
        self.agent = agent
        self.ledger: Ledger = read_ledger(state)
        scope = (config.get("configurable") or {}).get(SCOPE_KEY)
        self.scope: RunScope = scope if scope is not None else scope_of(config, node=agent)
        self.delta: StepDelta = {}
        self.branch: Branch | None = None
        self.meter: BudgetMeter | None = None

    def locate(self, trip: Trip) -> None:
        """Record where a trip happened: the node, and the namespace path to it."""
        trip["node"] = self.config["metadata"].get("langgraph_node")
        trip["ns"] = self.info.checkpoint_ns if self.info is not None else None

    def release_hop(self) -> None:
        """Give back the hop claimed among parallel branches: the step took none."""
        if self.branch is not None:
            self.branch.release(self.agent)


class Guard:
    """The shared before/after logic of a guarded node (sync and async shells in node.py)."""

    __slots__ = ("call", "name", "policy", "result_type")

    def __init__(self, policy: GuardPolicy, name: str | None, result_type: Any, call: Any) -> None:
        self.policy = policy
        self.name = name
        self.result_type = result_type
        self.call = call

    def before(
        self, state: Any, config: RunnableConfig, runtime: Any, *, is_async: bool = False
    ) -> tuple[StepRun, bool]:
        """Start a step: ``(step, go)``; ``go`` is False when a cap refused it."""
        agent = self.name or config["metadata"]["langgraph_node"]
        step = StepRun(state, config, runtime, agent, is_async)
        ledger = step.ledger
        status = ledger["status"]
        if status == "tripped":
            self._unrouted(ledger, agent)
        info = step.info
        parent: str | None = info.checkpoint_id if info is not None else None
        now = time.time()
        delta: StepDelta = StepWrite(agent=agent, now=now, parent=parent)  # type: ignore[assignment]
        step.delta = delta
        if status != "running":
            # The owner finished an earlier run of this thread and new input arrived: a
            # new turn starts, with every count carried over (the caps still hold).
            delta["status"] = "running"
            delta["outcome"] = None
            # The loops of the finished run are not this turn's.
            delta["reset_window"] = True
        # The parent checkpoint holds the state the last (sane) superstep produced. A
        # subgraph's checkpoints are not the thread's rollback targets.
        nested = info is None or _compat.task_depth(info.checkpoint_ns) > 0
        if parent and not nested and ledger["step_sane"] and ledger["hops"]:
            delta["last_sane"] = parent
        policy = self.policy
        cap = policy.hops
        branch = step.scope.branch_of(ledger, info, config)
        if branch is None:
            trip = check_hops(ledger, cap, agent=agent)
        else:
            # A step of one of parallel branches: its siblings' hops so far count too.
            trip = branch.claim(
                agent,
                lambda hops, of_agent: check_hops(
                    ledger, cap, agent=agent, siblings=hops, agent_siblings=of_agent
                ),
            )
            step.branch = branch
        if trip is None and policy.budget is not None:
            trip = check_deadline(ledger, policy.budget, agent=agent, now=now)
            if trip is not None:
                step.release_hop()
        if trip is not None:
            step.locate(trip)
            delta["trip"] = trip
            delta["sane"] = False
            return step, False
        return step, True

    def _budget(self, step: StepRun) -> Budget | None:
        """The budget the step's calls are metered under, or None when nothing needs
        metering (no money or token limit, no pool)."""
        budget = self.policy.budget
        if step.scope.pool is None and (budget is None or not budget.has_spend_limits):
            return None
        return budget if budget is not None else _NO_LIMITS  # the run's pool alone

    def _new_meter(self, step: StepRun, budget: Budget, thread: Any, first: int) -> Any:
        ledger, info, scope = step.ledger, step.info, step.scope
        journal = scope.journal
        hooks = JournalHooks(journal, info, step.agent) if journal is not None and info else None
        meter_type = AsyncBudgetMeter if step.is_async else BudgetMeter
        step.meter = meter_type(
            budget,
            agent=step.agent,
            thread=thread,
            key=call_key_prefix(info) if info is not None else None,
            first_call=first,
            pool=scope.pool,
            hooks=hooks,
            grants=ledger["grants"],
            warned=ledger["warned"],
            hops=ledger["hops"],
            tokens=scope.tokens,
            refused=scope.refused_models,
        )
        return step.meter

    def meter(self, step: StepRun) -> BudgetMeter | None:
        """The step's budget meter, or None when nothing needs metering.

        Its checks and reservations go to the thread's spend (the run's spend log, read
        from the journal the first time this process meets the thread): what earlier
        attempts of the task, and every other step of the thread, paid counts.
        """
        budget = self._budget(step)
        if budget is None:
            return None
        thread, first = thread_of(step.scope, step.info, step.ledger)
        return self._new_meter(step, budget, thread, first)  # type: ignore[no-any-return]

    async def ameter(self, step: StepRun) -> BudgetMeter | None:
        """:meth:`meter` for an async step: its journal and pool I/O stay off the loop."""
        budget = self._budget(step)
        if budget is None:
            return None
        thread, first = await athread_of(step.scope, step.info, step.ledger)
        return self._new_meter(step, budget, thread, first)  # type: ignore[no-any-return]

    @staticmethod
    def metered(step: StepRun) -> None:
        """Add what the thread has paid (a copy for the ledger), and the step's new
        warnings, to its delta."""
        meter, delta = step.meter, step.delta
        if meter is None:
            return
        delta["paid"] = meter.account.thread.paid().to_delta()
        if meter.warnings:
            delta["warn"] = meter.warnings

    def stopped(self, step: StepRun, latency: float) -> dict[str, Any]:
        """The step a budget stopped mid-way: no hop, its spend, and the trip."""
        meter = step.meter
        assert meter is not None and meter.trip is not None
        trip = meter.trip
        step.release_hop()
        step.locate(trip)
        self.metered(step)
        delta = step.delta
        delta["latency"] = latency
        delta["trip"] = trip
        delta["sane"] = False
        return self.refused(step)

    @staticmethod
    def _step_row(step: StepRun) -> dict[str, Any]:
        delta = step.delta
        record = delta.get("record")
        trip = delta.get("trip")
        return {
            "agent": delta.get("agent") or "",
            "hop": step.ledger["hops"] + delta.get("hop", 0),
            "status": record["status"] if record is not None else "not_run",
            "latency_us": round(delta.get("latency", 0.0) * 1e6),
            "tripped": trip["kind"] if trip is not None else None,
        }

    def finish(self, step: StepRun, result: Any) -> Any:
        """The step ended (ran, was refused or stopped): its task's call numbering is
        done with, and the step is journaled when the run has a journal."""
        meter = step.meter
        if meter is not None and meter.key is not None:
            meter.account.thread.task_done(meter.key)
        journal = step.scope.journal
        if journal is not None and step.info is not None:
            journal.log_step(step.info, **self._step_row(step))
        return result

    async def afinish(self, step: StepRun, result: Any) -> Any:
        """:meth:`finish` for an async step: the journal write runs off the event loop."""
        meter = step.meter
        if meter is not None and meter.key is not None:
            meter.account.thread.task_done(meter.key)
        journal = step.scope.journal
        if journal is not None and step.info is not None:
            row = self._step_row(step)
            if isinstance(journal, AsyncSpendJournal):
                await journal.alog_step(step.info, **row)
            else:
                await asyncio.to_thread(partial(journal.log_step, step.info, **row))
        return result

    def _unrouted(self, ledger: Ledger, agent: str) -> None:
        trip = dict(ledger["trips"][-1]) if ledger["trips"] else {"kind": "guard", "message": ""}
        trip["message"] = (
            f"{trip['message']} The trip was not routed to the task owner, so {agent!r} ran "
            "after it: use guard_route(...) on the edges out of guarded nodes."
        ).strip()
        raise GuardTripped.from_trip(trip)

    def _envelope(self, source: Any) -> tuple[dict[str, Any], str | None]:
        """The step's envelope as a JSON-ready dict, and the error if it was invalid."""
        error: str | None = None
        as_dict = plain_envelope_dict(source) if self.result_type is Any else None
        if as_dict is not None:
            return as_dict, None
        if source is _MISSING:
            error = _NO_ENVELOPE
            envelope: Envelope[Any] = Envelope(status="failed", reason=f"invalid envelope: {error}")
        else:
            envelope, error = coerce_envelope(source, self.result_type)
        try:
            return envelope_to_dict(envelope), error
        except PydanticSerializationError as exc:
            # State must survive any checkpointer: a result with no JSON form is unusable.
            error = f"result has no JSON form ({exc})"
            failed: Envelope[Any] = Envelope(status="failed", reason=f"invalid envelope: {error}")
            return envelope_to_dict(failed), error

    def after(self, step: StepRun, output: Any, latency: float) -> Any:
        """Finish a step that ran: its envelope, checks, loop entry and ledger delta."""
        source, update, command = _split(output)
        as_dict, error = self._envelope(source)
        ledger, agent, delta, state = step.ledger, step.agent, step.delta, step.state
        hop = ledger["hops"] + 1
        status = as_dict["status"]
        trip = check_envelope(as_dict, self.policy.envelopes, error=error, agent=agent, hops=hop)
        meter = step.meter
        if meter is not None:
            self.metered(step)
            if meter.trip is not None:
                # The agent caught BudgetExceeded and carried on: the budget still stops
                # the run (and outranks an envelope trip of the same step).
                trip = meter.trip
        key = state.get(BRANCH_KEY) or agent
        record: EnvelopeRecord = {
            "agent": agent,
            "key": key,
            "hop": hop,
            "status": status,
            "confidence": as_dict["confidence"],
            "reason": as_dict["reason"][:200],
        }
        loops = self.policy.loops
        if loops is None:
            delta["fp"] = digest(as_dict)
        else:
            # A new turn starts with an empty window (before() resets it).
            window = [] if delta.get("reset_window") else ledger["window"]
            # Parallel branches of one superstep share a hop: guard_sends shows each
            # branch its siblings' hops for the cap, and the hop they started from here.
            view: Mapping[str, Any] = ledger
            step_hop: int = view.get(FANOUT_HOPS, ledger["hops"]) + 1
            entry = step_entry(
                agent,
                as_dict,
                update=update,
                state=state,
                policy=loops,
                window=window,
                hop=step_hop,
            )
            delta["entry"] = entry
            if ledger["window_size"] != loops.window:
                delta["window_size"] = loops.window
            if trip is None:
                trip = check_loops(window, entry, policy=loops, agent=agent, hops=step_hop)
        delta["hop"] = 1
        delta["latency"] = latency
        delta["record"] = record
        delta["sane"] = trip is None and status != "failed"
        if trip is not None:
            step.locate(trip)
            trip["after_step"] = True
            delta["trip"] = trip
        delta["envelope"] = [key, as_dict]
        return self._write(update, delta, command)

    def refused(self, step: StepRun) -> dict[str, Any]:
        """The node's write for a step that did not run (or was stopped)."""
        delta = step.delta
        if "paid" not in delta and step.info is not None and step.info.thread_id:
            # The ledger's copy of what the thread paid catches up here too: an earlier
            # attempt may have paid for calls and then raised.
            thread = step.scope.spend.known(step.info.thread_id)
            if thread is not None:
                delta["paid"] = thread.paid().to_delta()
        branch = step.state.get(BRANCH_KEY)
        if branch:
            # A parallel branch the guard refused still shows in its round, as failed.
            trip = delta["trip"]
            reason = f"not run: {trip['message']}"
            delta["envelope"] = [
                branch,
                {"status": "failed", "result": None, "confidence": None, "reason": reason},
            ]
        return {"guard": delta}

    def _write(self, update: dict[str, Any], delta: StepDelta, command: Command[Any] | None) -> Any:
        child = update.get("guard")
        if isinstance(child, dict) and "v" in child:
            # The agent is a guarded subgraph that handed back its ledger: add this step
            # to it and let the channel's reducer fold back what the subgraph added.
            update["guard"] = fold_ledger(child, delta)  # type: ignore[arg-type]
        else:
            update["guard"] = delta
        if command is None:
            return update
        goto = command.goto
        if "trip" in delta and goto:
            goto = self.policy.owner_node
        return Command(graph=command.graph, update=update, resume=command.resume, goto=goto)
