"""``parallel_graph``: ``Send`` fan-out to guarded workers, then one guarded aggregate.

Every (worker, task) pair is a branch with its own envelope key, so no branch overwrites
another; the hop cap holds across the branches of one fan-out
(:func:`~sanegraph.guards.guard_sends`); the aggregate reads every branch's envelope,
failed ones included (:func:`branch_envelopes`). A trip in any branch sends the run to
the task owner and the aggregate does not run.

Branch keys are ``"<worker>[<i>]@<hop>"``: the *i*-th task of ``worker`` in the fan-out
that started when the thread's ledger counted ``<hop>`` hops. The hop count identifies
the fan-out round, so envelopes left in the thread by an earlier round (another
``invoke`` on the same thread, or ``on_incomplete="again"``) are never mistaken for the
current one's. Old rounds' envelopes stay in ``envelopes_of(state)`` (up to
``MAX_ENVELOPES`` keys);
each costs a hop, except the refused branches of the round that tripped, so the hop cap
bounds how many pile up.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Annotated, Any, Literal, get_args

from langchain_core.messages import AnyMessage
from langchain_core.runnables import Runnable, RunnableConfig, RunnableLambda
from langgraph.graph import END, START
from langgraph.graph.message import add_messages
from langgraph.types import Send

from sanegraph.guards import (
    ConfigurationError,
    Envelope,
    GuardedState,
    GuardedStateGraph,
    GuardPolicy,
    envelopes_of,
    guard_route,
    guard_sends,
    guarded,
    is_tripped,
    read_ledger,
)
from sanegraph.guards.envelope import coerce_envelope
from sanegraph.guards.ledger import BRANCH_KEY

from ._common import (
    agent_pairs,
    check_agent,
    check_node_name,
    check_option,
    result_types,
    schema_hints,
)
from .owner import add_task_owner

__all__ = (
    "DEFAULT_AGGREGATE",
    "AggregateIncomplete",
    "ParallelState",
    "branch_envelopes",
    "parallel_graph",
)

DEFAULT_AGGREGATE = "aggregate"
"""Node (and agent) name of the aggregate unless ``parallel_graph`` is given a name."""

AggregateIncomplete = Literal["end", "again"]
"""What a parallel graph does after an aggregate envelope that is ``partial`` or ``failed``.

- ``"end"`` (default): end the run; the aggregate's envelope is the result, and no guard
  tripped (``outcome_of(state)`` is None).
- ``"again"``: fan out again, a new round, from the state as it is now: workers find the
  aggregate's envelope (and its ``reason``) in ``envelopes_of(state)``, and the next
  aggregate sees only the new round's branches. The hop cap bounds the rounds; its trip
  goes to the task owner.
"""

_AGGREGATE_INCOMPLETE: tuple[str, ...] = get_args(AggregateIncomplete)

_BRANCH = re.compile(r"^(?P<worker>.+)\[(?P<index>\d+)\]@(?P<round>\d+)$")


class ParallelState(GuardedState, total=False):
    """Default state of :func:`parallel_graph`: the task(s), messages and the guard keys.

    Example:
        ```python
        graph = parallel_graph(workers, combine, policy=policy).compile(checkpointer=saver)
        graph.invoke({"tasks": ["EMEA", "APAC"]}, config)  # every worker gets both
        ```
    """

    task: Any
    """The task of one branch (set in each ``Send`` payload from ``tasks``)."""
    tasks: list[Any] | dict[str, list[Any]]
    """The tasks to fan out: a list (every worker gets every task) or a dict of worker
    name -> its tasks. Absent or empty: each worker runs once on the state as is."""
    messages: Annotated[list[AnyMessage], add_messages]
    """The conversation, for agents that use chat models."""


def branch_envelopes(
    state: Mapping[str, Any],
    worker: str | None = None,
    *,
    result_type: Any = Any,
) -> dict[str, Envelope[Any]]:
    """The envelopes of the newest fan-out's branches, in branch order.

    For aggregate authors: every branch of the round is there, ``failed`` ones included
    (a branch the hop cap refused reports ``failed`` with the trip's message as its
    reason), and no branch of an earlier round on the same thread.

    Args:
        state: The graph state (the aggregate's input).
        worker: Only this worker's branches.
        result_type: The type to validate each ``result`` against; an envelope that does
            not fit comes back ``failed`` with the validation error as its reason.

    Returns:
        ``{branch key: Envelope}``; keys are ``"<worker>[<i>]@<hop>"``.

    Example:
        ```python
        def combine(state):
            found = branch_envelopes(state)
            good = [e.result for e in found.values() if e.status == "success"]
            failed = [k for k, e in found.items() if e.status == "failed"]
            return {"status": "partial" if failed else "success", "result": good,
                    "reason": f"failed: {failed}" if failed else ""}
        ```
    """
    envelopes: Mapping[str, Any] = envelopes_of(state)
    branches: list[tuple[str, str, int, int]] = []
    for key in envelopes:
        match = _BRANCH.match(key)
        if match is not None:
            branches.append((key, match["worker"], int(match["index"]), int(match["round"])))
    if not branches:
        return {}
    current = max(round_ for *_, round_ in branches)
    # Branch order is the order of the Send packets: workers in the order their branches
    # were folded in (task-path order), then each worker's tasks by index.
    positions: dict[str, int] = {}
    chosen: list[tuple[int, int, str]] = []
    for key, name, index, round_ in branches:
        if round_ == current and (worker is None or name == worker):
            chosen.append((positions.setdefault(name, len(positions)), index, key))
    chosen.sort()
    return {key: coerce_envelope(envelopes[key], result_type)[0] for *_, key in chosen}


def _plan(state: Mapping[str, Any], workers: Sequence[str], tasks_key: str) -> list[Send]:
    """One ``Send`` per (worker, task), keyed by round; see the module docstring."""
    tasks = state.get(tasks_key)
    hop = read_ledger(state)["hops"]
    base = dict(state)
    sends: list[Send] = []

    def send(worker: str, index: int, payload: dict[str, Any]) -> None:
        payload[BRANCH_KEY] = f"{worker}[{index}]@{hop}"
        sends.append(Send(worker, payload))

    if isinstance(tasks, Mapping):
        unknown = [name for name in tasks if name not in workers]
        if unknown:
            raise ConfigurationError(
                f"state[{tasks_key!r}] names {', '.join(repr(n) for n in unknown)}, not "
                f"among the workers ({', '.join(repr(w) for w in workers)}). Key the tasks "
                "by worker name, or pass a list to give every worker every task."
            )
        for worker in workers:
            for index, task in enumerate(tasks.get(worker) or ()):
                send(worker, index, {**base, "task": task})
        if not sends:
            raise ConfigurationError(
                f"state[{tasks_key!r}] gives no task to any worker. Give at least one "
                f"worker a task, or leave {tasks_key!r} out to run each worker once on the "
                "state as is."
            )
    elif isinstance(tasks, (list, tuple)) and tasks:
        for worker in workers:
            for index, task in enumerate(tasks):
                send(worker, index, {**base, "task": task})
    elif tasks is None or isinstance(tasks, (list, tuple)):
        for worker in workers:
            send(worker, 0, dict(base))
    else:
        raise ConfigurationError(
            f"state[{tasks_key!r}] must be a list of tasks or a dict of worker name -> "
            f"list of tasks, got {type(tasks).__name__}."
        )
    return guard_sends(state, sends)


def _fan_out(workers: Sequence[str], owner: str, tasks_key: str) -> Callable[[Any], Any]:
    names = tuple(workers)
    targets = (*names, owner)

    def fan_out(state: Any) -> Any:
        if is_tripped(state):
            return owner
        return _plan(state, names, tasks_key)

    fan_out.__annotations__ = {"state": Any, "return": Literal[targets]}  # type: ignore[valid-type]
    return fan_out


def _wrap(
    node: Any, after: Callable[[Any, Any], Any], skip: Callable[[Any], bool] | None = None
) -> Any:
    """Wrap a guarded node (a function, or a ``RunnableLambda`` for Runnable agents).

    ``skip(state)`` true: the node is not called and writes nothing. Otherwise its output
    goes through ``after(state, output)``.
    """
    if isinstance(node, Runnable):
        runnable = node

        def rsync(state: Any, config: RunnableConfig) -> Any:
            if skip is not None and skip(state):
                return {}
            return after(state, runnable.invoke(state, config))

        async def rasync(state: Any, config: RunnableConfig) -> Any:
            if skip is not None and skip(state):
                return {}
            return after(state, await runnable.ainvoke(state, config))

        wrapped = RunnableLambda(rsync, afunc=rasync, name=runnable.get_name())
        wrapped.sanegraph_policy = getattr(node, "sanegraph_policy", None)  # type: ignore[attr-defined]
        return wrapped
    if inspect.iscoroutinefunction(node):

        async def anode(state: Any, config: RunnableConfig, runtime: Any) -> Any:
            if skip is not None and skip(state):
                return {}
            return after(state, await node(state, config, runtime))

        wrapper: Any = anode
    else:

        def snode(state: Any, config: RunnableConfig, runtime: Any) -> Any:
            if skip is not None and skip(state):
                return {}
            return after(state, node(state, config, runtime))

        wrapper = snode
    wrapper.__name__ = node.__name__
    wrapper.__qualname__ = node.__qualname__
    wrapper.__doc__ = node.__doc__
    wrapper.sanegraph_policy = getattr(node, "sanegraph_policy", None)
    return wrapper


def _gated_node(node: Any) -> Any:
    """An aggregate node that does nothing while a branch's trip is with the owner.

    A tripped branch routes to the owner while the other branches route here, so both
    run in the next superstep: the aggregate must not run after a trip.
    """
    return _wrap(node, _unchanged, skip=is_tripped)


def _unchanged(state: Any, output: Any) -> Any:
    return output


def _after_aggregate(
    name: str, owner: str, workers: Sequence[str], tasks_key: str, *, again: bool
) -> Callable[[Any], Any]:
    """END; the owner when the aggregate's own step tripped; or, with ``again``, a new
    fan-out when the aggregate's envelope is not ``success``.

    When the aggregate skipped (a branch tripped), the owner is already running in the
    same superstep, sent there by that branch's edge: going there again would run it twice.
    """
    names = tuple(workers)
    targets = (END, owner, *names) if again else (END, owner)

    def route(state: Any) -> Any:
        ledger = read_ledger(state)
        if ledger["status"] == "tripped":
            return owner if ledger["trips"][-1].get("node") == name else END
        if again:
            envelope = envelopes_of(state).get(name)
            if envelope is None or envelope.get("status") != "success":
                return _plan(state, names, tasks_key)
        return END

    route.__annotations__ = {"state": Any, "return": Literal[targets]}  # type: ignore[valid-type]
    route.__name__ = f"after_{name}" if name.isidentifier() else "after_aggregate"
    return route


def _aggregate_pair(aggregate: Any) -> tuple[str, Any]:
    if isinstance(aggregate, tuple) and len(aggregate) == 2 and isinstance(aggregate[0], str):
        name, agent = aggregate
        if not name:
            raise ConfigurationError(
                "The aggregate's name must be a non-empty string. Pass e.g. "
                "aggregate=('combine', combine)."
            )
        return name, agent
    return DEFAULT_AGGREGATE, aggregate


def parallel_graph(
    workers: Mapping[str, Any] | Sequence[tuple[str, Any]],
    aggregate: Any,
    *,
    policy: GuardPolicy | None = None,
    state_schema: type[Any] | None = None,
    tasks_key: str = "tasks",
    on_incomplete: AggregateIncomplete = "end",
    result_type: Any = Any,
) -> GuardedStateGraph:
    """Build a guarded graph that fans tasks out to ``workers`` and aggregates the results.

    From ``START``, one ``Send`` per worker and task (see :class:`ParallelState` for the
    shapes of ``state[tasks_key]``) runs every branch in one superstep, in worker order
    then task order. Each branch's payload is the state with ``"task"`` set; its
    envelope is stored under its own key (``"<worker>[<i>]@<hop>"``), so many branches of
    one worker lose nothing. The hop cap counts across branches: with 2 hops left, only
    the first 2 branches run, and the others are refused and recorded as ``failed``.

    When every branch has finished, the aggregate runs once and reads the branches'
    envelopes, failures included, with :func:`branch_envelopes`. Its envelope
    (``envelopes_of(state)[name]``) is the result of the run. A trip in any branch sends
    the run to the task owner instead, and the aggregate does not run; if a human answers
    ``continue``, the run goes on to the aggregate with the branches as they are.
    After the aggregate the run ends, or with ``on_incomplete="again"`` fans out again
    while the aggregate's envelope is not ``success``.

    Args:
        workers: A dict of name -> agent, or ``(name, agent)`` pairs; at least one.
        aggregate: The aggregating agent, or ``(name, agent)`` to name its node
            (default :data:`DEFAULT_AGGREGATE`).
        policy: The guard policy; defaults to ``GuardPolicy()``.
        state_schema: The state ``TypedDict``; it must include ``GuardedState`` and
            declare ``tasks_key``. Default: :class:`ParallelState`.
        tasks_key: The state key holding the tasks.
        on_incomplete: What a ``partial`` or ``failed`` aggregate envelope does (see
            :data:`AggregateIncomplete`).
        result_type: The type of every ``Envelope.result``, or a dict of node name ->
            type (workers and the aggregate; names left out accept anything).

    Returns:
        The uncompiled graph: compile it with your checkpointer.

    Raises:
        ConfigurationError: No workers, a duplicate, reserved or owner-clashing name, an
            agent that is not callable, an unknown ``on_incomplete`` or ``result_type``
            name, or a state
            schema without ``GuardedState`` or ``tasks_key``. At run time, a
            ``state[tasks_key]`` of the wrong shape or naming an unknown worker.

    Example:
        ```python
        def search(state):
            return {"status": "success", "result": f"notes on {state['task']}"}

        def combine(state):
            found = branch_envelopes(state)
            return {"status": "success", "result": [e.result for e in found.values()]}

        builder = parallel_graph({"web": search, "docs": search}, combine, policy=policy)
        graph = builder.compile(checkpointer=InMemorySaver())
        state = graph.invoke({"tasks": ["EMEA", "APAC"]}, config)
        envelopes_of(state)["aggregate"]  # the combined result
        ```
    """
    fn = "parallel_graph"
    pol = GuardPolicy.coerce(policy)
    check_option(fn, "on_incomplete", on_incomplete, _AGGREGATE_INCOMPLETE)
    pairs = agent_pairs(
        workers, fn=fn, kind="worker", example="{'researcher': researcher, 'writer': writer}"
    )
    names = [name for name, _ in pairs]
    for name in names:
        check_node_name(name, kind="worker", policy=pol)
    agg_name, agg_agent = _aggregate_pair(aggregate)
    check_agent(agg_agent, name=agg_name, kind="aggregate")
    check_node_name(agg_name, kind="aggregate", policy=pol)
    if agg_name in names:
        raise ConfigurationError(
            f"The aggregate's name {agg_name!r} is also a worker's name. Node names must be "
            "unique: rename the worker, or name the aggregate, e.g. "
            "parallel_graph(workers, ('combine', combine))."
        )
    schema = ParallelState if state_schema is None else state_schema
    hints = schema_hints(schema, fn=fn)
    if not isinstance(tasks_key, str) or tasks_key not in hints:
        label = getattr(schema, "__name__", repr(schema))
        raise ConfigurationError(
            f"{fn}(tasks_key={tasks_key!r}) is not a key of {label}. Add "
            f"`{tasks_key}: list[Any]` to {label}, or pass the key that holds the tasks."
        )
    types = result_types(result_type, [*names, agg_name], kind="node")

    builder = GuardedStateGraph(schema)
    owner = pol.owner_node
    for name, agent in pairs:
        node = guarded(agent, pol, name=name, result_type=types[name])
        builder.add_node(name, node)
    agg_node = guarded(agg_agent, pol, name=agg_name, result_type=types[agg_name])
    builder.add_node(agg_name, _gated_node(agg_node))
    builder.add_conditional_edges(START, _fan_out(names, owner, tasks_key))
    for name in names:
        builder.add_conditional_edges(name, guard_route(agg_name, owner=owner))
    builder.add_conditional_edges(
        agg_name,
        _after_aggregate(agg_name, owner, names, tasks_key, again=on_incomplete == "again"),
    )
    add_task_owner(builder, pol, destinations=(agg_name, END), resume_to=agg_name)
    return builder
