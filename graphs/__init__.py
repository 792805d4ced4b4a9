"""sanegraph.graphs: prebuilt guarded graphs, each an uncompiled ``StateGraph``.

The caller compiles them with the checkpointer of their choice. Every graph wraps its
agents with :func:`~sanegraph.guards.guarded`, routes trips to a task owner and checks
its configuration up front, raising :class:`~sanegraph.guards.ConfigurationError` with
a message that says what to change.

Example:
    ```python
    from sanegraph.graphs import sequential_graph
    from sanegraph.guards import GuardPolicy

    graph = sequential_graph(
        [("researcher", researcher), ("analyst", analyst)], policy=GuardPolicy(hops=6)
    ).compile(checkpointer=saver)
    ```
"""

from .owner import add_task_owner
from .parallel import (
    DEFAULT_AGGREGATE,
    AggregateIncomplete,
    ParallelState,
    branch_envelopes,
    parallel_graph,
)
from .sequential import OnIncomplete, SequentialState, sequential_graph

__all__ = (
    "DEFAULT_AGGREGATE",
    "AggregateIncomplete",
    "OnIncomplete",
    "ParallelState",
    "SequentialState",
    "add_task_owner",
    "branch_envelopes",
    "parallel_graph",
    "sequential_graph",
)
