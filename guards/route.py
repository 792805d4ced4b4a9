"""Edge conditions and fan-out helpers that send a tripped run to its owner."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, get_args, get_origin, get_type_hints

from langgraph.types import Send

from .errors import ConfigurationError
from .ledger import BRANCH_KEY, FANOUT_HOPS, read_ledger
from .policy import GuardPolicy

__all__ = ("guard_route", "guard_sends", "is_tripped")


def is_tripped(state: Mapping[str, Any]) -> bool:
    """Whether the run has an unresolved trip (the next edge should go to the owner)."""
    return read_ledger(state)["status"] == "tripped"


def _literal_targets(fn: Callable[..., Any]) -> tuple[str, ...] | None:
    try:
        hint = get_type_hints(fn).get("return")
    except Exception:
        return None
    if hint is not None and get_origin(hint) is Literal:
        return tuple(str(a) for a in get_args(hint))
    return None


def guard_route(
    next: str | Callable[[Any], str],
    *,
    owner: str | None = None,
    policy: GuardPolicy | None = None,
    destinations: Sequence[str] | None = None,
) -> Callable[[Any], str]:
    """An edge condition: a tripped run goes to ``owner``, any other to ``next``.

    The returned function's return annotation is a ``Literal`` of every destination, so
    ``add_conditional_edges(source, guard_route(...))`` draws each branch in Mermaid.

    Args:
        next: The node to go to when nothing tripped (a name or ``END``), or a router
            ``(state) -> name`` for the untripped case.
        owner: The task-owner node; default ``policy.owner_node`` (``"owner"``).
        policy: The graph's guard policy, for its ``owner_node``.
        destinations: The names a router ``next`` may return; read from its ``Literal``
            return annotation when omitted.

    Returns:
        The edge condition.

    Raises:
        ConfigurationError: ``next`` is a router whose destinations are unknown.

    Example:
        ```python
        builder.add_conditional_edges("analyst", guard_route("writer"))
        ```
    """
    owner = owner or GuardPolicy.coerce(policy).owner_node
    if isinstance(next, str):
        targets: tuple[str, ...] = (next,)
        target = next

        def route(state: Any) -> str:
            return owner if read_ledger(state)["status"] == "tripped" else target

    elif callable(next):
        found = tuple(destinations) if destinations is not None else _literal_targets(next)
        if not found:
            raise ConfigurationError(
                "guard_route(router) needs the router's destinations: annotate it with "
                "-> Literal['a', 'b'] or pass destinations=['a', 'b']."
            )
        targets = found
        router = next

        def route(state: Any) -> str:
            if read_ledger(state)["status"] == "tripped":
                return owner
            return router(state)

    else:
        raise ConfigurationError(
            f"guard_route(next) takes a node name or a router function, got {type(next).__name__}."
        )
    names = tuple(dict.fromkeys((*targets, owner)))
    route.__annotations__ = {"state": Any, "return": Literal[names]}  # type: ignore[valid-type]
    route.__name__ = f"guard_route_to_{'_'.join(n.strip('_') for n in targets) or 'end'}"
    return route


def guard_sends(state: Mapping[str, Any], sends: Sequence[Send]) -> list[Send]:
    """Prepare ``Send`` fan-out so the hop cap holds across parallel branches.

    Branches of one superstep all read the same ledger, so without help five branches at
    ``hops=10`` under ``max_hops=12`` would all run. Each branch gets a view of the ledger
    in which its earlier siblings' hops are already counted (the view is only read for
    checks; counting still happens through the ledger's reducer), and a branch key under
    which its envelope is stored (``"<node>[<i>]"`` unless the payload names one).

    Args:
        state: The state the fan-out starts from.
        sends: The ``Send`` packets; payloads must be dicts.

    Returns:
        New ``Send`` packets.

    Example:
        ```python
        def fan_out(state):
            return guard_sends(state, [Send("worker", {"task": t}) for t in state["tasks"]])
        ```
    """
    ledger = read_ledger(state)
    hops = ledger["hops"]
    by_agent = ledger["by_agent"]
    extra: dict[str, int] = {}
    out: list[Send] = []
    for i, send in enumerate(sends):
        if not isinstance(send.arg, Mapping):
            raise ConfigurationError(
                f"guard_sends needs dict payloads, got {type(send.arg).__name__} for "
                f"{send.node!r}. Send a dict such as {{'task': ...}}."
            )
        view = dict(ledger)
        view["hops"] = hops + i
        view[FANOUT_HOPS] = hops
        seen = extra.get(send.node, 0)
        if seen:
            counts = dict(by_agent)
            counts[send.node] = counts.get(send.node, 0) + seen
            view["by_agent"] = counts
        extra[send.node] = seen + 1
        arg = dict(send.arg)
        arg["guard"] = view
        arg.setdefault(BRANCH_KEY, f"{send.node}[{i}]")
        out.append(Send(send.node, arg))
    return out
