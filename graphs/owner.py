"""``add_task_owner``: install the task-owner node on a graph builder."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from langgraph.graph import END, START, StateGraph

from sanegraph.guards import ConfigurationError, GuardPolicy, _compat, task_owner

__all__ = ("add_task_owner",)

B = TypeVar("B", bound=StateGraph)  # type: ignore[type-arg]


def add_task_owner(
    builder: B,
    policy: GuardPolicy | None = None,
    *,
    destinations: Sequence[str] | None = None,
    resume_to: str | Callable[[Any], str] | None = None,
) -> B:
    """Add the task owner (:func:`~sanegraph.guards.task_owner`) to a graph builder.

    The owner is added under ``policy.owner_node``. Route trips to it with
    :func:`~sanegraph.guards.guard_route` on the edges out of guarded nodes. Add it after
    the nodes it may send the run back to, so that the default ``destinations`` draws its
    edges in Mermaid.

    Args:
        builder: The ``StateGraph`` (its state must include ``GuardedState``).
        policy: The graph's guard policy; defaults to ``GuardPolicy()``.
        destinations: Where the owner may go, for drawing: the owner ends the run
            (``END``) or, when a human says ``continue``, goes back to the tripped node
            (or ``resume_to``). Default: every node already in the builder, and ``END``.
        resume_to: Where ``continue`` goes: a node name, or ``(state) -> name``. Default:
            the node whose step tripped.

    Returns:
        The same builder, for chaining.

    Raises:
        ConfigurationError: A node named ``policy.owner_node`` already exists, or the name
            is reserved by LangGraph.

    Example:
        ```python
        builder.add_node("analyst", guarded(analyst, policy))
        builder.add_conditional_edges("analyst", guard_route(END))
        add_task_owner(builder, policy)  # "owner" may go to "analyst" or END
        ```
    """
    pol = GuardPolicy.coerce(policy)
    name = pol.owner_node
    if name in builder.nodes:
        raise ConfigurationError(
            f"Node {name!r} already exists, and the task owner is added under that name "
            "(GuardPolicy.owner_node). Rename your node, or pass "
            "GuardPolicy(owner_node=...) to name the owner differently."
        )
    if name in (START, END) or _compat.NS_END in name or _compat.NS_SEP in name:
        raise ConfigurationError(
            f"GuardPolicy.owner_node={name!r} is not a valid LangGraph node name (START and "
            "END are reserved; ':' and '|' mark subgraph namespaces). Pass e.g. "
            "GuardPolicy(owner_node='owner')."
        )
    if destinations is None:
        # Error-handler nodes LangGraph adds for add_node(error_handler=...) are not
        # places to continue a run.
        nodes = [n for n, spec in builder.nodes.items() if not _compat.is_error_handler(spec)]
        ends: tuple[str, ...] = (*nodes, END)
    else:
        ends = tuple(dict.fromkeys(destinations))
    builder.add_node(name, task_owner(pol, resume_to=resume_to), destinations=ends)
    return builder
