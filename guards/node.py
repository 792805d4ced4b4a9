"""``guarded``: wrap an agent into a LangGraph node that checks caps before it runs and
records what it did after.

The wrapper adds no node and no superstep: the checks run inside the agent's own node
(:mod:`._step`). A trip never raises out of the node; it is written to the ledger and the
next edge (:func:`~sanegraph.guards.guard_route`) routes the run to the task owner.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable
from typing import Any

from langchain_core.runnables import Runnable, RunnableConfig
from langgraph.runtime import get_runtime

from . import _compat
from ._step import Guard, Metered
from .errors import ConfigurationError
from .policy import GuardPolicy

__all__ = ("guarded",)


class _RunnableNode(Runnable[Any, Any]):
    """The node of a guarded Runnable agent: sync and async, and handed the config
    LangGraph gives the node as it is (a ``RunnableLambda`` would fill in langchain-core's
    defaults, among them a recursion limit of 25 for the agent it runs)."""

    def __init__(self, func: Any, afunc: Any, *, name: str | None) -> None:
        self._func = func
        self._afunc = afunc
        self.name = name
        self.sanegraph_policy: GuardPolicy | None = None

    def invoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Any:
        """Run the guarded agent (LangGraph calls this with the task's config)."""
        return self._func(input, config or {})

    async def ainvoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Any:
        """Run the guarded agent, async."""
        return await self._afunc(input, config or {})


def _accepts(fn: Any, name: str) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


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
        a Runnable agent a Runnable that runs sync and async, and runs the agent under
        the caller's recursion limit (LangGraph's default when none is set), not
        langchain-core's 25: the thread's hop cap and budget are its bounds.

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

    def run(guard: Guard, state: Any, config: RunnableConfig, runtime: Any) -> Any:
        step, go = guard.before(state, config, runtime)
        if not go:
            return guard.finish(step, guard.refused(step))
        try:
            meter = guard.meter(step)
            start = perf()
            if meter is None:
                output = guard.call(state, config, runtime)
            else:
                with Metered(meter) as metered:
                    output = guard.call(state, config, runtime)
                if metered.stopped:
                    return guard.finish(step, guard.stopped(step, perf() - start))
        except BaseException:
            # No hop this time (an error, or an interrupt: the step runs again later).
            step.release_hop()
            raise
        if type(output) is not dict and inspect.isawaitable(output):
            if hasattr(output, "close"):
                output.close()
            raise ConfigurationError(
                f"Agent {step.agent!r} returned an awaitable from a sync call. Define it "
                "with `async def` so guarded() builds an async node."
            )
        return guard.finish(step, guard.after(step, output, perf() - start))

    async def arun(guard: Guard, state: Any, config: RunnableConfig, runtime: Any) -> Any:
        step, go = guard.before(state, config, runtime, is_async=True)
        if not go:
            return await guard.afinish(step, guard.refused(step))
        try:
            meter = await guard.ameter(step)
            start = perf()
            if meter is None:
                output = await guard.call(state, config, runtime)
            else:
                with Metered(meter) as metered:
                    output = await guard.call(state, config, runtime)
                if metered.stopped:
                    return await guard.afinish(step, guard.stopped(step, perf() - start))
        except BaseException:
            step.release_hop()
            raise
        return await guard.afinish(step, guard.after(step, output, perf() - start))

    node: Any
    if _is_runnable(agent):
        # A Runnable (compiled subgraph, chain) can run both ways: so does its node.
        runnable: Any = agent

        def limited(config: RunnableConfig) -> RunnableConfig:
            # The caller's limits, not langchain-core's default of 25 supersteps: the
            # thread's hop cap and budget bound a wrapped agent (create_agent, a subgraph).
            if config.get("recursion_limit") is not None:
                return config
            return {**config, "recursion_limit": _compat.recursion_limit(config)}

        sync_guard = Guard(pol, name, result_type, lambda s, c, r: runnable.invoke(s, limited(c)))
        async_guard = Guard(pol, name, result_type, lambda s, c, r: runnable.ainvoke(s, limited(c)))
        node = _RunnableNode(
            lambda s, c: run(sync_guard, s, c, get_runtime()),
            lambda s, c: arun(async_guard, s, c, get_runtime()),
            name=label if isinstance(label, str) else None,
        )
        node.sanegraph_policy = pol
        return node
    guard = Guard(pol, name, result_type, _caller(agent))
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
