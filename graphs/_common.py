"""Checks shared by the prebuilt graphs: agent lists, node names and state schemas.

Every check runs at build time and raises :class:`~sanegraph.guards.ConfigurationError`
with a message that says what to change.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, get_args, get_origin, get_type_hints

from langgraph.graph import END, START

from sanegraph.guards import ConfigurationError, GuardPolicy, _compat
from sanegraph.guards.reducer import fold_ledger

_RESERVED_CHARS = (_compat.NS_END, _compat.NS_SEP)
"""Characters LangGraph reserves for namespaces (``NS_END``, ``NS_SEP``)."""

_GUARD_KEYS = {"guard": fold_ledger}
"""GuardedState's keys and the reducer each must keep."""


def agent_pairs(
    agents: Mapping[str, Any] | Sequence[tuple[str, Any]] | Any,
    *,
    fn: str,
    kind: str,
    example: str,
) -> list[tuple[str, Any]]:
    """Normalize ``agents`` (a dict or ``(name, agent)`` pairs) and check each entry.

    Checks: at least one, names are non-empty strings, names are unique, agents are
    callables or Runnables. Node-name rules are checked by :func:`check_node_name`.
    """
    title = kind.capitalize()
    if isinstance(agents, Mapping):
        items: list[Any] = list(agents.items())
    elif isinstance(agents, Sequence) and not isinstance(agents, (str, bytes)):
        items = list(agents)
    else:
        raise ConfigurationError(
            f"{fn}() takes its {kind}s as a dict of name -> agent or a list of "
            f"(name, agent) pairs, got {type(agents).__name__}. Pass e.g. {example}."
        )
    if not items:
        raise ConfigurationError(f"{fn}() needs at least one {kind}. Pass e.g. {example}.")
    pairs: list[tuple[str, Any]] = []
    seen: set[str] = set()
    for item in items:
        if not isinstance(item, tuple) or len(item) != 2:
            raise ConfigurationError(
                f"{fn}() takes each {kind} as a (name, agent) pair, got "
                f"{type(item).__name__}. Pass e.g. {example}."
            )
        name, agent = item
        if not isinstance(name, str) or not name:
            raise ConfigurationError(
                f"{title} names must be non-empty strings, got {name!r}. Name each {kind} "
                "after its role, e.g. 'researcher'."
            )
        if name in seen:
            raise ConfigurationError(
                f"{title} with name {name!r} already exists. {title} names must be unique."
            )
        seen.add(name)
        check_agent(agent, name=name, kind=kind)
        pairs.append((name, agent))
    return pairs


def check_agent(agent: Any, *, name: str, kind: str) -> None:
    """Raise unless ``agent`` is a callable or a Runnable."""
    if not callable(agent) and not hasattr(agent, "invoke"):
        raise ConfigurationError(
            f"{kind.capitalize()} {name!r} must be a callable or a Runnable, got "
            f"{type(agent).__name__}. Pass a function (state) -> envelope, or a compiled "
            "graph."
        )


def check_node_name(name: str, *, kind: str, policy: GuardPolicy) -> None:
    """Raise if ``name`` cannot be a node next to the task owner in a LangGraph graph."""
    title = kind.capitalize()
    if name in (START, END):
        raise ConfigurationError(
            f"{title} name {name!r} is reserved by LangGraph for the graph's entry and "
            f"exit. Rename the {kind}."
        )
    for char in _RESERVED_CHARS:
        if char in name:
            fixed = name.replace(_compat.NS_END, "_").replace(_compat.NS_SEP, "_")
            raise ConfigurationError(
                f"{title} name {name!r} contains {char!r}, which LangGraph reserves for "
                f"subgraph namespaces. Rename the {kind}, e.g. {fixed!r}."
            )
    if name == policy.owner_node:
        raise ConfigurationError(
            f"{title} name {name!r} is the task owner's node name (GuardPolicy.owner_node). "
            f"Rename the {kind}, or pass GuardPolicy(owner_node=...) to name the owner "
            "differently."
        )


def schema_hints(schema: Any, *, fn: str) -> dict[str, Any]:
    """The type hints of a state schema that must include :class:`GuardedState`'s keys."""
    try:
        hints = get_type_hints(schema, include_extras=True)
    except Exception as exc:
        raise ConfigurationError(
            f"{fn}(state_schema=...) must be a TypedDict class, got {schema!r} "
            f"({type(exc).__name__}). Declare it as class State(GuardedState, total=False): ..."
        ) from exc
    label = getattr(schema, "__name__", repr(schema))
    missing = [key for key in _GUARD_KEYS if key not in hints]
    if missing:
        keys = ", ".join(repr(k) for k in missing)
        raise ConfigurationError(
            f"{fn}(state_schema={label}) lacks GuardedState's {keys} key. Declare it as "
            f"class {label}(GuardedState, total=False): ... (from sanegraph.guards import "
            "GuardedState)."
        )
    for key, reducer in _GUARD_KEYS.items():
        hint = hints[key]
        metadata = get_args(hint)[1:] if get_origin(hint) is not None else ()
        if reducer not in metadata:
            raise ConfigurationError(
                f"{fn}(state_schema={label}) redeclares {key!r} without GuardedState's "
                f"reducer ({reducer.__name__}). Remove {key!r} from {label} and inherit it "
                "from GuardedState."
            )
    return hints


def result_types(value: Any, names: Sequence[str], *, kind: str) -> dict[str, Any]:
    """Expand ``result_type`` (one type, or a dict of name -> type) into a type per name.

    Names a dict leaves out get ``Any``.
    """
    if not isinstance(value, Mapping):
        return dict.fromkeys(names, value)
    unknown = [key for key in value if key not in names]
    if unknown:
        listed = ", ".join(repr(k) for k in unknown)
        known = ", ".join(repr(n) for n in names)
        raise ConfigurationError(
            f"result_type names {listed}, which {'is' if len(unknown) == 1 else 'are'} not "
            f"{'a ' + kind if len(unknown) == 1 else kind + 's'}. Use the {kind} names: "
            f"{known}."
        )
    return {name: value.get(name, Any) for name in names}


def check_option(fn: str, name: str, value: Any, options: Sequence[str]) -> None:
    """Raise a fix-it ConfigurationError if ``value`` is not one of ``options``."""
    if value not in options:
        listed = ", ".join(repr(o) for o in options)
        raise ConfigurationError(f"{fn}({name}={value!r}) is not an option. Pass one of {listed}.")
