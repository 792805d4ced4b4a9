"""``sequential_graph``: stages run one after another, each envelope checked before the next.

Each stage is a guarded agent. After a stage, a ``success`` envelope moves the run on; a
``partial`` or ``failed`` one goes where ``on_incomplete`` says; a trip goes to the task
owner. The owner is the one place a run stops early because of a guard.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Annotated, Any, Literal, get_args

from langchain_core.messages import AnyMessage
from langgraph.graph import END, START
from langgraph.graph.message import add_messages

from sanegraph.guards import (
    GuardedState,
    GuardedStateGraph,
    GuardPolicy,
    envelopes_of,
    guard_route,
    guarded,
)

from ._common import agent_pairs, check_node_name, check_option, result_types, schema_hints
from .owner import add_task_owner

__all__ = ("OnIncomplete", "SequentialState", "sequential_graph")

OnIncomplete = Literal["previous", "end", "next"]
"""Where a sequential graph goes after a stage whose envelope is ``partial`` or ``failed``.

- ``"previous"`` (default): back to the previous stage, so it can supply what is missing
  (it finds the later stage's envelope, with its ``reason``, in ``envelopes_of(state)``).
  The first stage has no previous stage: after it the run ends, as with ``"end"``
  (running it again unchanged would only repeat it). The loop this allows, an analyst
  asking a researcher for "more context" again and again, is what the hop cap bounds:
  its trip goes to the task owner.
- ``"end"``: end the run. No guard tripped, so the ledger status stays ``"running"`` and
  ``outcome_of(state)`` is None; ``envelopes_of(state)[stage]`` says why it ended.
- ``"next"``: carry on to the next stage (``END`` after the last) with the incomplete
  envelope in ``envelopes_of(state)`` for it to read.

Whatever the option, a trip (hop cap, deadline, invalid envelope, low confidence) goes
to the task owner.
"""

_ON_INCOMPLETE: tuple[str, ...] = get_args(OnIncomplete)


class SequentialState(GuardedState, total=False):
    """Default state of :func:`sequential_graph`: the task, messages and the guard keys.

    Example:
        ```python
        graph = sequential_graph(stages, policy=policy).compile(checkpointer=saver)
        graph.invoke({"task": "Summarize Q3 sales"}, config)
        ```
    """

    task: str
    """What the run is asked to do."""
    messages: Annotated[list[AnyMessage], add_messages]
    """The conversation, for agents that use chat models."""


def _stage_router(name: str, on_success: str, on_incomplete: str) -> Callable[[Any], str]:
    """Route on the envelope ``name`` just wrote (a missing one counts as failed)."""

    def route(state: Any) -> str:
        envelope = envelopes_of(state).get(name)
        if envelope is not None and envelope.get("status") == "success":
            return on_success
        return on_incomplete

    targets = tuple(dict.fromkeys((on_success, on_incomplete)))
    route.__annotations__ = {"state": Any, "return": Literal[targets]}  # type: ignore[valid-type]
    return route


def sequential_graph(
    stages: Mapping[str, Any] | Sequence[tuple[str, Any]],
    *,
    policy: GuardPolicy | None = None,
    state_schema: type[Any] | None = None,
    on_incomplete: OnIncomplete = "previous",
    result_type: Any = Any,
) -> GuardedStateGraph:
    """Build a guarded graph that runs ``stages`` in order.

    Every stage is wrapped with :func:`~sanegraph.guards.guarded` under its name, and its
    envelope is stored in ``envelopes_of(state)[name]``. After stage *i*:

    - a trip goes to the task owner (``policy.owner_node``), which ends the run with the
      best partial result, aborts it, raises or escalates, as ``policy.owner`` says;
    - ``success`` goes to stage *i + 1* (``END`` after the last);
    - ``partial`` or ``failed`` goes where ``on_incomplete`` says (see
      :data:`OnIncomplete`).

    The run starts at the first stage (or at the owner, when the thread has an unresolved
    trip). The result of a finished run is the last stage's envelope; a run the owner
    finished has its outcome in ``outcome_of(state)``.

    Args:
        stages: ``(name, agent)`` pairs, or a dict of name -> agent, in order; at least
            one. Agents are anything :func:`~sanegraph.guards.guarded` accepts.
        policy: The guard policy; defaults to ``GuardPolicy()``.
        state_schema: The state ``TypedDict``; it must include ``GuardedState``.
            Default: :class:`SequentialState`.
        on_incomplete: Where a ``partial`` or ``failed`` envelope goes.
        result_type: The type of every stage's ``Envelope.result``, or a dict of stage
            name -> type (stages left out accept anything).

    Returns:
        The uncompiled graph: compile it with your checkpointer.

    Raises:
        ConfigurationError: No stages, a duplicate, reserved or owner-clashing name, an
            agent that is not callable, an unknown ``on_incomplete`` or ``result_type``
            name, or a state schema without ``GuardedState``.

    Example:
        ```python
        def researcher(state):
            return {"status": "success", "result": "three sources", "confidence": 0.9}

        def analyst(state):
            return {"status": "partial", "reason": "I need more context"}

        builder = sequential_graph(
            [("researcher", researcher), ("analyst", analyst)],
            policy=GuardPolicy(hops=6),
        )
        graph = builder.compile(checkpointer=InMemorySaver())
        state = graph.invoke({"task": "Why did Q3 sales drop?"}, config)
        outcome_of(state)  # the owner's verdict after 6 hops
        ```
    """
    fn = "sequential_graph"
    pol = GuardPolicy.coerce(policy)
    check_option(fn, "on_incomplete", on_incomplete, _ON_INCOMPLETE)
    pairs = agent_pairs(
        stages,
        fn=fn,
        kind="stage",
        example="[('researcher', researcher), ('analyst', analyst)]",
    )
    names = [name for name, _ in pairs]
    for name in names:
        check_node_name(name, kind="stage", policy=pol)
    schema = SequentialState if state_schema is None else state_schema
    schema_hints(schema, fn=fn)
    types = result_types(result_type, names, kind="stage")

    builder = GuardedStateGraph(schema)
    for name, agent in pairs:
        builder.add_node(name, guarded(agent, pol, name=name, result_type=types[name]))
    owner = pol.owner_node
    builder.add_conditional_edges(START, guard_route(names[0], owner=owner))
    for i, name in enumerate(names):
        after = names[i + 1] if i + 1 < len(names) else END
        if on_incomplete == "next":
            back = after
        elif on_incomplete == "end" or i == 0:
            back = END
        else:
            back = names[i - 1]
        router = _stage_router(name, after, back)
        targets = tuple(dict.fromkeys((after, back)))
        builder.add_conditional_edges(name, guard_route(router, owner=owner, destinations=targets))
    add_task_owner(builder, pol)
    return builder
