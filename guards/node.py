"""``guarded``: wrap an agent into a LangGraph node that checks caps before it runs and
records what it did after.

The wrapper adds no node and no superstep: the checks run inside the agent's own node.
A trip never raises out of the node; it is written to the ledger and the next edge
(:func:`~sanegraph.guards.guard_route`) routes the run to the task owner.
"""

from __future__ import annotations

import inspect
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

from langchain_core.messages import AIMessage
from langchain_core.runnables import Runnable, RunnableConfig, RunnableLambda
from langgraph.runtime import get_runtime
from langgraph.types import Command
from pydantic_core import PydanticSerializationError

from ._fanout import Branch, branch_of
from ._fingerprint import digest
from .budget import BudgetMeter, Spend, SpendGroup, metering
from .checks import check_deadline, check_envelope, check_hops
from .envelope import Envelope, coerce_envelope, envelope_to_dict, plain_envelope_dict
from .errors import BudgetExceeded, ConfigurationError, GuardTripped
from .ledger import FANOUT_HOPS, EnvelopeRecord, Ledger, StepDelta, Trip, fold_ledger, read_ledger
from .loops import check_loops, step_entry
from .policy import GuardPolicy

__all__ = ("BRANCH_KEY", "guarded")

BRANCH_KEY = "sanegraph_branch"
"""Key of a ``Send`` payload naming its branch; envelopes are stored under it."""

_NOTHING = Spend()
_ENVELOPE_KEYS = frozenset(("status", "result", "confidence", "reason"))
_MISSING: Any = object()
_NO_ENVELOPE = (
    "the agent returned a state update with no envelope; add it under 'envelope', or put "
    "an AIMessage carrying it last in 'messages'"
)


_GROUPS: OrderedDict[tuple[Any, ...], SpendGroup] = OrderedDict()
_GROUPS_LOCK = threading.Lock()
_MAX_GROUPS = 256


def _spend_group(info: Any) -> SpendGroup | None:
    """The group of budget meters of the steps running alongside this one: same thread,
    same parent checkpoint, same namespace level (the parallel branches of a superstep).

    Groups are kept for the last :data:`_MAX_GROUPS` supersteps, so a branch that starts
    after its siblings finished (a thread pool smaller than the fan-out) still counts
    what they spent; their spend reaches the ledger when the superstep ends.
    """
    if info is None or not info.checkpoint_id:
        return None
    ns = info.checkpoint_ns
    key = (info.thread_id, info.checkpoint_id, ns.rpartition("|")[0])
    with _GROUPS_LOCK:
        group = _GROUPS.get(key)
        if group is None:
            group = _GROUPS[key] = SpendGroup()
            if len(_GROUPS) > _MAX_GROUPS:
                _GROUPS.popitem(last=False)
        return group


def _locate(trip: Trip, config: RunnableConfig, info: Any) -> None:
    """Record where a trip happened: the node, and the namespace path to it."""
    trip["node"] = config["metadata"].get("langgraph_node")
    trip["ns"] = info.checkpoint_ns if info is not None else None


def _accepts(fn: Any, name: str) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


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


class _Metered:
    """Runs an agent under its step's budget meter: a call the meter blocked ends the
    step (``stopped``) instead of raising out of the node; the meter is always closed."""

    __slots__ = ("_metering", "meter", "stopped")

    def __init__(self, meter: BudgetMeter) -> None:
        self.meter = meter
        self.stopped = False
        self._metering = metering(meter)

    def __enter__(self) -> _Metered:
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


class _Guard:
    """The shared before/after logic of a guarded node (sync and async shells below)."""

    __slots__ = ("call", "name", "policy", "result_type")

    def __init__(self, policy: GuardPolicy, name: str | None, result_type: Any, call: Any) -> None:
        self.policy = policy
        self.name = name
        self.result_type = result_type
        self.call = call

    def before(
        self, state: Mapping[str, Any], config: RunnableConfig, runtime: Any
    ) -> tuple[Ledger, str, StepDelta, bool, Branch | None]:
        ledger = read_ledger(state)
        agent = self.name or config["metadata"]["langgraph_node"]
        status = ledger["status"]
        if status == "tripped":
            self._unrouted(ledger, agent)
        info = getattr(runtime, "execution_info", None)
        parent: str | None = info.checkpoint_id if info is not None else None
        now = time.time()
        delta: StepDelta = {"agent": agent, "now": now, "parent": parent}
        if status != "running":
            # The owner finished an earlier run of this thread and new input arrived: a
            # new turn starts, with every count carried over (the caps still hold).
            delta["status"] = "running"
            delta["outcome"] = None
            # The loops of the finished run are not this turn's.
            delta["reset_window"] = True
        # The parent checkpoint holds the state the last (sane) superstep produced. A
        # task's namespace is "node:task_id"; a "|" means it runs in a subgraph, whose
        # checkpoints are not the thread's rollback targets.
        nested = info is None or "|" in info.checkpoint_ns
        if parent and not nested and ledger["step_sane"] and ledger["hops"]:
            delta["last_sane"] = parent
        policy = self.policy
        budget = policy.budget
        cap = policy.hops
        branch = branch_of(ledger, info, config)
        if branch is None:
            trip = check_hops(ledger, cap, agent)
        else:
            # A step of one of parallel branches: its siblings' hops so far count too.
            trip = branch.claim(
                agent, lambda hops, of_agent: check_hops(ledger, cap, agent, hops, of_agent)
            )
        if trip is None and budget is not None:
            trip = check_deadline(ledger, budget, agent, now)
            if trip is not None and branch is not None:
                branch.release(agent)
        if trip is not None:
            _locate(trip, config, info)
            delta["trip"] = trip
            delta["sane"] = False
            return ledger, agent, delta, False, None
        return ledger, agent, delta, True, branch

    def meter(
        self, ledger: Ledger, agent: str, delta: StepDelta, runtime: Any
    ) -> BudgetMeter | None:
        """The step's budget meter, or None when the budget sets no money or token limit.

        With a journal, what earlier attempts of this task spent (a re-run after a crash)
        goes into the step's spend and counts against the budget, and the re-run's calls
        are numbered after theirs.
        """
        budget = self.policy.budget
        if budget is None or not budget.has_spend_limits:
            return None
        spent: Any = ledger["spent"]
        by_agent: Any = ledger["spent_by_agent"]
        first = 0
        on_call = None
        journal = self.policy.journal
        info = getattr(runtime, "execution_info", None)
        if journal is not None and info is not None:
            first, prior = journal.prior_calls(info)
            if prior != _NOTHING:
                delta["spend"] = prior.to_dict()
                spent = Spend.coerce(spent) + prior
                mine = Spend.coerce(by_agent.get(agent)) + prior
                by_agent = {**by_agent, agent: mine}

            def on_call(record: dict[str, Any]) -> None:
                journal.log_call(info, record)

        return BudgetMeter(
            budget,
            agent=agent,
            spent_before=spent,
            spent_by_agent_before=by_agent,
            pool=budget.pool,
            on_call=on_call,
            grants=ledger["grants"],
            warned=ledger["warned"],
            hops=ledger["hops"],
            first_call=first,
            group=_spend_group(info),
        )

    @staticmethod
    def metered(delta: StepDelta, meter: BudgetMeter) -> None:
        """Add what the step's own model calls spent, and new warnings, to its delta."""
        spend = meter.spent
        if spend != _NOTHING:
            prior = delta.get("spend")
            delta["spend"] = (spend + Spend.from_dict(prior) if prior else spend).to_dict()
        if meter.warnings:
            delta["warn"] = meter.warnings

    def stopped(
        self,
        state: Mapping[str, Any],
        config: RunnableConfig,
        runtime: Any,
        delta: StepDelta,
        meter: BudgetMeter,
        latency: float,
        branch: Branch | None,
    ) -> dict[str, Any]:
        """The step a budget stopped mid-way: no hop, its spend, and the trip."""
        trip = meter.trip
        assert trip is not None
        if branch is not None:
            branch.release(meter.agent)
        _locate(trip, config, getattr(runtime, "execution_info", None))
        self.metered(delta, meter)
        delta["latency"] = latency
        delta["trip"] = trip
        delta["sane"] = False
        return self.refused(state, delta)

    def finish(self, ledger: Ledger, delta: StepDelta, runtime: Any, result: Any) -> Any:
        """Journal the step when the policy has a journal; return the node's result."""
        if self.policy.journal is not None:
            self.journal_step(ledger, delta, runtime)
        return result

    def journal_step(self, ledger: Ledger, delta: StepDelta, runtime: Any) -> None:
        """Journal the step (its latest attempt), when the policy has a journal."""
        journal = self.policy.journal
        info = getattr(runtime, "execution_info", None)
        if journal is None or info is None:
            return
        record = delta.get("record")
        trip = delta.get("trip")
        journal.log_step(
            info,
            agent=delta.get("agent") or "",
            hop=ledger["hops"] + delta.get("hop", 0),
            status=record["status"] if record is not None else "not_run",
            latency_us=round(delta.get("latency", 0.0) * 1e6),
            tripped=trip["kind"] if trip is not None else None,
        )

    def _unrouted(self, ledger: Ledger, agent: str) -> None:
        trip = dict(ledger["trips"][-1]) if ledger["trips"] else {"kind": "guard", "message": ""}
        trip["message"] = (
            f"{trip['message']} The trip was not routed to the task owner, so {agent!r} ran "
            "after it: use guard_route(...) on the edges out of guarded nodes."
        ).strip()
        raise GuardTripped.from_trip(trip)

    def after(
        self,
        state: Mapping[str, Any],
        config: RunnableConfig,
        runtime: Any,
        ledger: Ledger,
        agent: str,
        delta: StepDelta,
        output: Any,
        latency: float,
        meter: BudgetMeter | None = None,
    ) -> Any:
        source, update, command = _split(output)
        error: str | None = None
        as_dict = plain_envelope_dict(source) if self.result_type is Any else None
        if as_dict is None:
            if source is _MISSING:
                error = _NO_ENVELOPE
                envelope: Envelope[Any] = Envelope(
                    status="failed", reason=f"invalid envelope: {error}"
                )
            else:
                envelope, error = coerce_envelope(source, self.result_type)
            try:
                as_dict = envelope_to_dict(envelope)
            except PydanticSerializationError as exc:
                # State must survive any checkpointer: a result with no JSON form is unusable.
                error = f"result has no JSON form ({exc})"
                as_dict = envelope_to_dict(
                    Envelope(status="failed", reason=f"invalid envelope: {error}")
                )
        hop = ledger["hops"] + 1
        status = as_dict["status"]
        confidence = as_dict["confidence"]
        trip = check_envelope(as_dict, error, self.policy.envelopes, agent, hop)
        if meter is not None:
            self.metered(delta, meter)
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
            "confidence": confidence,
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
            _locate(trip, config, getattr(runtime, "execution_info", None))
            trip["after_step"] = True
            delta["trip"] = trip
        delta["envelope"] = [key, as_dict]
        return self._write(update, delta, command)

    def refused(self, state: Mapping[str, Any], delta: StepDelta) -> dict[str, Any]:
        branch = state.get(BRANCH_KEY)
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


def _caller(agent: Any) -> Callable[[Any, RunnableConfig, Any], Any]:
    """Adapt an agent function that takes state and maybe ``config`` and ``runtime``."""
    wants_config = _accepts(agent, "config")
    wants_runtime = _accepts(agent, "runtime")
    if wants_config and wants_runtime:
        return lambda state, config, runtime: agent(state, config=config, runtime=runtime)
    if wants_config:
        return lambda state, config, runtime: agent(state, config=config)
    if wants_runtime:
        return lambda state, config, runtime: agent(state, runtime=runtime)
    return lambda state, config, runtime: agent(state)


def _is_runnable(agent: Any) -> bool:
    return isinstance(agent, Runnable) or (
        not inspect.isroutine(agent) and hasattr(agent, "invoke") and hasattr(agent, "ainvoke")
    )


def _is_async(agent: Any) -> bool:
    if inspect.iscoroutinefunction(agent):
        return True
    call = getattr(agent, "__call__", None)  # noqa: B004
    return inspect.iscoroutinefunction(call)


def guarded(
    agent: Callable[..., Any] | Runnable[Any, Any],
    policy: GuardPolicy | None = None,
    *,
    name: str | None = None,
    result_type: Any = Any,
) -> Any:
    """Wrap an agent into a guarded LangGraph node.

    Before the agent runs, the node checks the hop cap and the deadline; if the step
    would exceed either, the agent does not run and the trip is recorded. After it runs,
    its output is coerced to an :class:`~sanegraph.guards.Envelope` (validated against
    ``result_type``), and the hop, latency, fingerprint and envelope status are written
    to the ledger as one delta. The envelope is kept in the ledger under the agent's name
    (or the branch key of a ``Send``): read it with ``envelopes_of(state)``.

    The agent may be sync or async, take ``state`` and optionally ``config`` and
    ``runtime``, or be a Runnable (a compiled subgraph, a chain). It may return an
    ``Envelope``, an envelope dict, an ``AIMessage`` carrying one (JSON content or a
    tool call), a pydantic model (structured output: a success envelope), a state
    update with the envelope under ``"envelope"`` or an ``AIMessage`` last in
    ``"messages"``, or a ``Command`` wrapping such an update.

    Args:
        agent: The agent callable or Runnable.
        policy: The graph's guard policy; defaults to ``GuardPolicy()``.
        name: The agent name in the ledger; defaults to the node's name.
        result_type: The type of ``Envelope.result`` (e.g. a pydantic model).

    Returns:
        A node for ``StateGraph.add_node``: a function (async if the agent is), or for
        a Runnable agent a ``RunnableLambda`` that runs sync and async.

    Example:
        ```python
        builder.add_node("analyst", guarded(analyst, policy))
        ```
    """
    if not callable(agent) and not hasattr(agent, "invoke"):
        raise ConfigurationError(
            f"guarded() needs a callable or a Runnable agent, got {type(agent).__name__}."
        )
    pol = GuardPolicy.coerce(policy)
    label = name or getattr(agent, "__name__", None) or getattr(agent, "name", None)
    perf = time.perf_counter

    def run(guard: _Guard, state: Any, config: RunnableConfig, runtime: Any) -> Any:
        ledger, agent_name, delta, go, branch = guard.before(state, config, runtime)
        if not go:
            return guard.finish(ledger, delta, runtime, guard.refused(state, delta))
        try:
            meter = guard.meter(ledger, agent_name, delta, runtime)
            start = perf()
            if meter is None:
                output = guard.call(state, config, runtime)
            else:
                with _Metered(meter) as metered:
                    output = guard.call(state, config, runtime)
                if metered.stopped:
                    result = guard.stopped(
                        state, config, runtime, delta, meter, perf() - start, branch
                    )
                    return guard.finish(ledger, delta, runtime, result)
        except BaseException:
            # No hop this time (an error, or an interrupt: the step runs again later).
            if branch is not None:
                branch.release(agent_name)
            raise
        if type(output) is not dict and inspect.isawaitable(output):
            if hasattr(output, "close"):
                output.close()
            raise ConfigurationError(
                f"Agent {agent_name!r} returned an awaitable from a sync call. Define it "
                "with `async def` so guarded() builds an async node."
            )
        result = guard.after(
            state, config, runtime, ledger, agent_name, delta, output, perf() - start, meter
        )
        return guard.finish(ledger, delta, runtime, result)

    async def arun(guard: _Guard, state: Any, config: RunnableConfig, runtime: Any) -> Any:
        ledger, agent_name, delta, go, branch = guard.before(state, config, runtime)
        if not go:
            return guard.finish(ledger, delta, runtime, guard.refused(state, delta))
        try:
            meter = guard.meter(ledger, agent_name, delta, runtime)
            start = perf()
            if meter is None:
                output = await guard.call(state, config, runtime)
            else:
                with _Metered(meter) as metered:
                    output = await guard.call(state, config, runtime)
                if metered.stopped:
                    result = guard.stopped(
                        state, config, runtime, delta, meter, perf() - start, branch
                    )
                    return guard.finish(ledger, delta, runtime, result)
        except BaseException:
            if branch is not None:
                branch.release(agent_name)
            raise
        result = guard.after(
            state, config, runtime, ledger, agent_name, delta, output, perf() - start, meter
        )
        return guard.finish(ledger, delta, runtime, result)

    node: Any
    if _is_runnable(agent):
        # A Runnable (compiled subgraph, chain) can run both ways: so does its node.
        runnable: Any = agent
        sync_guard = _Guard(pol, name, result_type, lambda s, c, r: runnable.invoke(s, c))
        async_guard = _Guard(pol, name, result_type, lambda s, c, r: runnable.ainvoke(s, c))

        def rnode(state: Any, config: RunnableConfig) -> Any:
            return run(sync_guard, state, config, get_runtime())

        async def arnode(state: Any, config: RunnableConfig) -> Any:
            return await arun(async_guard, state, config, get_runtime())

        node = RunnableLambda(rnode, afunc=arnode, name=label if isinstance(label, str) else None)
        node.sanegraph_policy = pol
        return node
    guard = _Guard(pol, name, result_type, _caller(agent))
    if _is_async(agent):

        async def anode(state: Any, config: RunnableConfig, runtime: Any) -> Any:
            return await arun(guard, state, config, runtime)

        node = anode
    else:

        def snode(state: Any, config: RunnableConfig, runtime: Any) -> Any:
            return run(guard, state, config, runtime)

        node = snode
    if isinstance(label, str) and label.isidentifier():
        node.__name__ = label
        node.__qualname__ = label
    node.__doc__ = f"Guarded node wrapping {label or type(agent).__name__}."
    node.sanegraph_policy = pol
    return node
