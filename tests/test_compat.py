"""What sanegraph relies on through ``guards/_compat.py``, checked against the installed
LangGraph.

Each function and constant of ``_compat`` rests on LangGraph behaviour that is not public
API (namespace strings, ``checkpoint_map``, a builder's edges, trigger channels, the
saver's connection, the compiled-class swap). Every test here runs the real LangGraph:
it compiles small graphs, runs them with real checkpointers, and reads what LangGraph
produced. A failure names the behaviour that changed and the ``_compat`` function to
update, so an upgrade breaks here rather than deep inside a guard.
"""

from __future__ import annotations

import asyncio
import inspect
import operator
import sqlite3
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, TypedDict

import pytest
from langchain_core.runnables import RunnableConfig, RunnableLambda
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph
from langgraph.runtime import get_runtime
from langgraph.types import Command, RetryPolicy, Send, interrupt

from sanegraph.checkpoints import async_sqlite_saver, sqlite_saver
from sanegraph.guards import _compat
from sanegraph.guards._compat import (
    ERROR,
    INTERRUPT,
    NS_END,
    NS_SEP,
    PENDING_SENDS,
    PULL,
    SQLITE_TABLES,
    conditional_sources,
    graph_depth,
    has_pending_sends,
    is_error_handler,
    is_pull_task,
    make_compiled_class,
    node_runnable,
    parent_ns,
    pending_nodes,
    plain_targets,
    recursion_limit,
    replace_node_runnable,
    root_checkpoint_id,
    saver_loop,
    segment_node,
    sqlite_connection,
    sqlite_thread_ids,
    state_keys,
    static_targets,
    task_depth,
    top_segment,
    trigger_node,
    without_checkpoint_map,
)


class State(TypedDict, total=False):
    topic: str
    item: str
    log: Annotated[list[str], operator.add]


def _config(thread_id: str) -> Any:
    return {"configurable": {"thread_id": thread_id}}


def test_every_name_in_all_is_covered_here() -> None:
    """A function added to ``_compat`` gets a test here (this file imports what it tests)."""
    tested = set(globals())
    untested = sorted(name for name in _compat.__all__ if name not in tested)
    assert untested == [], f"guards/_compat.py exports {untested} with no test in this file"


# -- namespaces -------------------------------------------------------------------------


@dataclass(frozen=True)
class Seen:
    """What a node saw of where it runs."""

    ns: str
    """``runtime.execution_info.checkpoint_ns`` (guards/_scope and _step read this one)."""
    config_ns: str | None
    """``config['configurable']['checkpoint_ns']`` (guards/owner reads this one)."""
    checkpoint_id: str
    """``runtime.execution_info.checkpoint_id``: the checkpoint the task runs from."""
    configurable: dict[str, Any]
    """The config's ``checkpoint_ns`` and ``checkpoint_map``, as the node got them."""


def _record(seen: dict[str, Seen], key: str, config: RunnableConfig) -> None:
    info = get_runtime().execution_info
    configurable = config["configurable"]
    seen[key] = Seen(
        ns=info.checkpoint_ns,
        config_ns=configurable.get("checkpoint_ns"),
        checkpoint_id=info.checkpoint_id,
        configurable={
            k: configurable[k] for k in ("checkpoint_ns", "checkpoint_map") if k in configurable
        },
    )


def _recorder(seen: dict[str, Seen], name: str) -> Any:
    def run(state: State, config: RunnableConfig) -> dict[str, Any]:
        _record(seen, f"{name}:{state['item']}" if name in ("fan", "leaf") else name, config)
        return {}

    return run


@pytest.fixture(scope="module")
def nested() -> tuple[dict[str, Seen], Any]:
    """What nodes saw at depth 0, 1 and 2, and in ``Send`` branches, of one real run.

    root:  top -> mid -> Send(fan, x), Send(fan, y), Send(branch, z)
    mid:   a function node running the subgraph midnode -> inner
    inner: a function node running the subgraph leaf
    branch: the leaf subgraph as a node (a Send branch into a subgraph)
    """
    seen: dict[str, Seen] = {}

    leaf_builder = StateGraph(State)
    leaf_builder.add_node("leaf", _recorder(seen, "leaf"))
    leaf_builder.add_edge(START, "leaf")
    leaf = leaf_builder.compile()

    def inner(state: State, config: RunnableConfig) -> dict[str, Any]:
        _record(seen, "inner", config)
        leaf.invoke(state, config)
        return {}

    mid_builder = StateGraph(State)
    mid_builder.add_node("midnode", _recorder(seen, "midnode"))
    mid_builder.add_node("inner", inner)
    mid_builder.add_edge(START, "midnode")
    mid_builder.add_edge("midnode", "inner")
    mid_graph = mid_builder.compile()

    def mid(state: State, config: RunnableConfig) -> dict[str, Any]:
        _record(seen, "mid", config)
        mid_graph.invoke(state, config)
        return {}

    def fan_out(state: State) -> list[Send]:
        return [
            Send("fan", {"item": "x"}),
            Send("fan", {"item": "y"}),
            Send("branch", {"item": "z"}),
        ]

    builder = StateGraph(State)
    builder.add_node("top", _recorder(seen, "top"))
    builder.add_node("mid", mid)
    builder.add_node("fan", _recorder(seen, "fan"))
    builder.add_node("branch", leaf)
    builder.add_edge(START, "top")
    builder.add_edge("top", "mid")
    builder.add_conditional_edges("mid", fan_out, ["fan", "branch"])
    graph = builder.compile(checkpointer=InMemorySaver())
    config = _config("nested")
    graph.invoke({"item": "root"}, config)
    return seen, list(graph.get_state_history(config))


NESTING = {
    "top": ("top",),
    "mid": ("mid",),
    "midnode": ("mid", "midnode"),
    "inner": ("mid", "inner"),
    "leaf:root": ("mid", "inner", "leaf"),
    "fan:x": ("fan",),
    "fan:y": ("fan",),
    "leaf:z": ("branch", "leaf"),
}
"""Node recorded -> the node names along its namespace, root first."""


def test_nodes_ran_where_the_test_expects(nested: tuple[dict[str, Seen], Any]) -> None:
    seen, _ = nested
    assert sorted(seen) == sorted(NESTING)


@pytest.mark.parametrize("key", sorted(NESTING))
def test_task_depth_counts_the_namespace_separators(
    nested: tuple[dict[str, Seen], Any], key: str
) -> None:
    ns = nested[0][key].ns
    depth = len(NESTING[key]) - 1
    assert task_depth(ns) == depth, (
        f"LangGraph's task namespace for {key!r} (nesting level {depth}) is now {ns!r}; "
        f"sanegraph reads the nesting level by counting {NS_SEP!r} "
        "(guards/_compat.task_depth, NS_SEP)"
    )


@pytest.mark.parametrize("key", sorted(NESTING))
def test_each_namespace_segment_starts_with_its_node(
    nested: tuple[dict[str, Seen], Any], key: str
) -> None:
    ns = nested[0][key].ns
    path = NESTING[key]
    got = [segment_node(ns, level) for level in range(len(path) + 1)]
    assert got == [*path, None], (
        f"LangGraph's task namespace for {key!r} is now {ns!r}; sanegraph expects one "
        f"'<node>{NS_END}<task id>' segment per level joined by {NS_SEP!r}, giving nodes "
        f"{list(path)} (guards/_compat.segment_node, NS_END; the task owner resumes at it)"
    )
    assert all(NS_END in segment for segment in ns.split(NS_SEP)), (
        f"a segment of {ns!r} has no {NS_END!r} between node and task id (_compat.NS_END)"
    )


@pytest.mark.parametrize("key", sorted(NESTING))
def test_the_runtime_and_the_config_give_the_same_namespace(
    nested: tuple[dict[str, Seen], Any], key: str
) -> None:
    seen = nested[0][key]
    assert seen.config_ns == seen.ns, (
        f"Inside {key!r}, config['configurable']['checkpoint_ns'] is {seen.config_ns!r} but "
        f"runtime.execution_info.checkpoint_ns is {seen.ns!r}; guards/owner reads the first "
        "and guards/_scope the second, both through _compat.task_depth"
    )


def test_top_segment_is_the_root_task_a_task_runs_under(
    nested: tuple[dict[str, Seen], Any],
) -> None:
    seen, _ = nested
    root_task = seen["mid"].ns
    under = {key: top_segment(seen[key].ns) for key in ("midnode", "inner", "leaf:root")}
    assert under == dict.fromkeys(under, root_task), (
        f"Tasks of subgraphs run by the root task {root_task!r} have namespaces "
        f"{[seen[k].ns for k in under]}; sanegraph takes the root task from the first "
        f"{NS_SEP!r}-separated segment (guards/_compat.top_segment; _scope keys parallel "
        "branches by it)"
    )
    branches = [top_segment(seen[key].ns) for key in ("fan:x", "fan:y", "leaf:z")]
    assert len(set(branches)) == 3, (
        f"Three Send branches of one superstep have the top segments {branches}; sanegraph "
        "tells parallel branches apart by them (guards/_compat.top_segment)"
    )
    assert branches[0] == seen["fan:x"].ns
    assert segment_node(branches[2], 0) == "branch"


def test_graph_depth_reads_the_namespace_a_subgraph_runs_under(
    nested: tuple[dict[str, Seen], Any],
) -> None:
    seen, _ = nested
    assert graph_depth(None) == 0
    assert graph_depth("") == 0
    # "mid" and "inner" hand their own config to the subgraph they run.
    for runner, task in (("mid", "midnode"), ("inner", "leaf:root")):
        graph_ns = seen[runner].config_ns
        task_ns = seen[task].ns
        assert graph_ns and task_ns.startswith(graph_ns + NS_SEP), (
            f"A subgraph run under checkpoint_ns={graph_ns!r} ran its task {task!r} under "
            f"{task_ns!r}; sanegraph expects the subgraph's tasks to extend its namespace "
            f"by {NS_SEP!r} (guards/_compat.graph_depth)"
        )
        assert graph_depth(graph_ns) == task_depth(task_ns), (
            f"graph_depth({graph_ns!r}) != task_depth({task_ns!r}) (guards/_compat.graph_depth)"
        )


def test_a_runnable_invoked_inside_a_node_gets_langchains_limit_unless_told(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: dict[str, Any] = {}

    def inner(state: dict[str, Any], config: RunnableConfig) -> dict[str, Any]:
        seen["inner"] = config.get("recursion_limit")
        return {}

    def node(state: dict[str, Any], config: RunnableConfig) -> dict[str, Any]:
        seen["node"] = config.get("recursion_limit")
        RunnableLambda(inner).invoke(state, config)
        return {}

    builder = StateGraph(dict)  # type: ignore[type-var]
    builder.add_node("node", node)
    builder.add_edge(START, "node")
    builder.compile().invoke({"x": 1})
    assert seen == {"node": None, "inner": 25}, (
        f"A node's config carried recursion_limit={seen['node']!r} and a Runnable it "
        f"invoked got {seen['inner']!r}; sanegraph hands a guarded Runnable agent "
        "LangGraph's own default instead of langchain-core's 25 (guards/_compat."
        "recursion_limit)"
    )
    monkeypatch.delenv("LANGGRAPH_DEFAULT_RECURSION_LIMIT", raising=False)
    assert recursion_limit({}) == 10007
    assert recursion_limit({"recursion_limit": 77}) == 77
    monkeypatch.setenv("LANGGRAPH_DEFAULT_RECURSION_LIMIT", "500")
    assert recursion_limit({}) == 500


def test_parent_ns_is_the_namespace_of_the_graph_a_task_runs_in(
    nested: tuple[dict[str, Seen], Any],
) -> None:
    seen, _ = nested
    assert parent_ns(seen["mid"].ns) == "", (
        f"A root task's namespace is {seen['mid'].ns!r}; sanegraph groups the parallel "
        "steps of one graph by the namespace before the task's own segment "
        "(guards/_compat.parent_ns)"
    )
    for runner, task in (("mid", "midnode"), ("inner", "leaf:root")):
        assert parent_ns(seen[task].ns) == seen[runner].config_ns, (
            f"The task {task!r} ran under {seen[task].ns!r} in a subgraph run under "
            f"{seen[runner].config_ns!r}: parent_ns no longer gives the subgraph's "
            "namespace (guards/_compat.parent_ns)"
        )


def test_root_checkpoint_id_is_the_root_checkpoint_nested_tasks_run_under(
    nested: tuple[dict[str, Seen], Any],
) -> None:
    seen, history = nested
    root_ids = {snapshot.config["configurable"]["checkpoint_id"] for snapshot in history}
    for key, expected in (
        ("midnode", "mid"),
        ("inner", "mid"),
        ("leaf:root", "mid"),
        ("leaf:z", "fan:x"),
    ):
        root = seen[expected].checkpoint_id
        assert root in root_ids, (
            f"The root task {expected!r} ran from checkpoint {root!r}, not one of the root "
            "graph's (runtime.execution_info.checkpoint_id)"
        )
        found = root_checkpoint_id({"configurable": seen[key].configurable})
        assert found == root, (
            f"Inside {key!r} (nesting level {len(NESTING[key]) - 1}) "
            f"config['configurable']['checkpoint_map'] is "
            f"{seen[key].configurable.get('checkpoint_map')!r}; sanegraph reads the root "
            f"graph's checkpoint ({root!r}) from its '' entry "
            "(guards/_compat.root_checkpoint_id; the superstep's caps are keyed by it)"
        )
    for key in ("top", "mid", "fan:x", "fan:y"):
        found = root_checkpoint_id({"configurable": seen[key].configurable})
        assert found in (None, seen[key].checkpoint_id), (
            f"Inside the root task {key!r}, checkpoint_map[''] is {found!r}, not the task's "
            f"own checkpoint {seen[key].checkpoint_id!r} (guards/_compat.root_checkpoint_id)"
        )
    assert root_checkpoint_id({}) is None
    assert root_checkpoint_id({"configurable": {"checkpoint_map": {"": ""}}}) is None


# -- checkpoint_map ---------------------------------------------------------------------


def _chain(ran: list[str]) -> Any:
    def node(name: str) -> Any:
        def run(state: State) -> dict[str, Any]:
            ran.append(name)
            return {"log": [name]}

        return run

    builder = StateGraph(State)
    builder.add_node("a", node("a"))
    builder.add_node("b", node("b"))
    builder.add_edge(START, "a")
    builder.add_edge("a", "b")
    builder.add_edge("b", END)
    return builder.compile(checkpointer=InMemorySaver())


def test_a_checkpoint_map_entry_for_the_root_overrides_checkpoint_id() -> None:
    ran: list[str] = []
    graph = _chain(ran)
    config: Any = _config("t1")
    graph.invoke({"log": []}, config)
    history = list(graph.get_state_history(config))
    after_a = next(s.config["configurable"] for s in history if s.next == ("b",))
    before_a = next(s.config["configurable"] for s in history if s.next == ("a",))
    at_after_a = {"thread_id": "t1", "checkpoint_ns": "", "checkpoint_id": after_a["checkpoint_id"]}
    stale = {**at_after_a, "checkpoint_map": {"": before_a["checkpoint_id"]}}

    ran.clear()
    graph.invoke(None, {"configurable": stale})
    assert ran == ["a", "b"], (
        "LangGraph no longer resumes from configurable['checkpoint_map'][''] over "
        "checkpoint_id: _compat.without_checkpoint_map may no longer be needed."
    )
    ran.clear()
    cleaned = without_checkpoint_map(stale)
    assert "checkpoint_map" in stale, "without_checkpoint_map must not change its argument"
    graph.invoke(None, {"configurable": cleaned})
    assert ran == ["b"]


# -- the compiled-class swap ------------------------------------------------------------


class Recording(CompiledStateGraph):  # type: ignore[type-arg]
    """Records every ``stream``/``astream`` call and the ``checkpoint_ns`` it got, as
    ``DurableCompiledGraph`` overrides them."""

    calls: list[tuple[str, str | None]]

    def stream(self, input: Any, config: Any = None, **kwargs: Any) -> Iterator[Any]:  # type: ignore[override]
        self.calls.append(
            ("stream", ((config or {}).get("configurable") or {}).get("checkpoint_ns"))
        )
        return super().stream(input, config, **kwargs)

    def astream(self, input: Any, config: Any = None, **kwargs: Any) -> AsyncIterator[Any]:  # type: ignore[override]
        self.calls.append(
            ("astream", ((config or {}).get("configurable") or {}).get("checkpoint_ns"))
        )
        return super().astream(input, config, **kwargs)


def _recording_graphs(saver: BaseCheckpointSaver[Any]) -> tuple[Recording, Recording]:
    """A root graph whose node ``sub`` is a compiled subgraph, both swapped to Recording."""
    sub_builder = StateGraph(State)
    sub_builder.add_node("x", lambda state: {"log": ["x"]})
    sub_builder.add_edge(START, "x")
    sub = make_compiled_class(sub_builder.compile(), Recording)
    builder = StateGraph(State)
    builder.add_node("sub", sub)
    builder.add_edge(START, "sub")
    compiled = builder.compile(checkpointer=saver)
    assert type(compiled) is CompiledStateGraph, (
        f"StateGraph.compile() now returns {type(compiled).__qualname__}, not "
        "CompiledStateGraph: sanegraph's subclass (DurableCompiledGraph) no longer derives "
        "from it (guards/_compat.make_compiled_class)"
    )
    graph = make_compiled_class(compiled, Recording)
    assert graph is compiled and type(graph) is Recording
    assert graph.checkpointer is saver, "the swap must keep what compile() set"
    graph.calls = []
    sub.calls = graph.calls
    return graph, sub


def _depths(calls: list[tuple[str, str | None]], kind: str) -> list[int]:
    assert {k for k, _ in calls} <= {kind}, f"expected only {kind} calls, got {calls}"
    return sorted(graph_depth(ns) for _, ns in calls)


def test_sync_calls_go_through_the_swapped_stream() -> None:
    graph, _ = _recording_graphs(InMemorySaver())
    why = (
        "sanegraph's DurableCompiledGraph overrides only stream/astream and relies on "
        "invoke and batch going through them (guards/_compat.make_compiled_class)"
    )
    assert graph.invoke({"log": []}, _config("i")) == {"log": ["x"]}
    assert _depths(graph.calls, "stream") == [0, 1], (
        f"graph.invoke() with a subgraph node made the stream() calls {graph.calls}; {why}. "
        "The subgraph's call has a checkpoint_ns of depth 1 (guards/_compat.graph_depth)"
    )
    graph.calls.clear()
    graph.batch([{"log": []}, {"log": []}], [_config("b1"), _config("b2")])
    assert _depths(graph.calls, "stream") == [0, 0, 1, 1], (
        f"graph.batch() made the stream() calls {graph.calls}; {why}"
    )
    graph.calls.clear()
    list(graph.stream({"log": []}, _config("s")))
    assert _depths(graph.calls, "stream") == [0, 1]


async def test_async_calls_go_through_the_swapped_astream() -> None:
    graph, _ = _recording_graphs(InMemorySaver())
    why = (
        "sanegraph's DurableCompiledGraph overrides only stream/astream and relies on "
        "ainvoke and abatch going through astream (guards/_compat.make_compiled_class)"
    )
    assert await graph.ainvoke({"log": []}, _config("i")) == {"log": ["x"]}
    assert _depths(graph.calls, "astream") == [0, 1], (
        f"graph.ainvoke() made the astream() calls {graph.calls}; {why}"
    )
    graph.calls.clear()
    await graph.abatch([{"log": []}, {"log": []}], [_config("b1"), _config("b2")])
    assert _depths(graph.calls, "astream") == [0, 0, 1, 1], (
        f"graph.abatch() made the astream() calls {graph.calls}; {why}"
    )
    graph.calls.clear()
    _ = [chunk async for chunk in graph.astream({"log": []}, _config("s"))]
    assert _depths(graph.calls, "astream") == [0, 1]


def test_make_compiled_class_refuses_a_class_that_is_not_a_subclass() -> None:
    compiled = _chain([])

    class Other:
        pass

    with pytest.raises(TypeError, match="not the CompiledStateGraph sanegraph subclasses"):
        make_compiled_class(compiled, Other)
    assert type(compiled) is CompiledStateGraph


# -- builders ---------------------------------------------------------------------------


def _route_b(state: State) -> str:
    return "yes"


def _route_c(state: State) -> Literal["d", "__end__"]:
    return "d"


def _route_d(state: State):  # no return annotation: LangGraph cannot know its ends
    return END


def _log(name: str) -> Any:
    def run(state: State) -> dict[str, Any]:
        return {"log": [name]}

    return run


def _edges_builder() -> StateGraph[Any, Any, Any, Any]:
    """Plain (a -> b), waiting ([a, b] -> c), conditional with a path map (b), with a
    Literal return type (c) and with neither (d)."""
    builder = StateGraph(State)
    for name in "abcd":
        builder.add_node(name, _log(name))
    builder.add_edge(START, "a")
    builder.add_edge("a", "b")
    builder.add_edge(["a", "b"], "c")
    builder.add_conditional_edges("b", _route_b, {"yes": "c", "no": END})
    builder.add_conditional_edges("c", _route_c)
    builder.add_conditional_edges("d", _route_d)
    return builder


def test_static_targets_see_plain_waiting_and_conditional_edges() -> None:
    builder = _edges_builder()
    got = {node: static_targets(builder, node) for node in "abcd"}
    assert got == {"a": {"b", "c"}, "b": {"c", END}, "c": {"d", END}, "d": None}, (
        f"static_targets read {got} from the builder; LangGraph changed how a StateGraph "
        "keeps its edges (builder.edges, builder.waiting_edges, builder.branches[...].ends "
        "from a path map or a Literal return type, None without either) "
        "(guards/_compat.static_targets; rollback tells edges from Command(goto=...) by it)"
    )
    drawn = builder.compile().get_graph().edges
    for node in "abc":
        assert got[node] == {edge.target for edge in drawn if edge.source == node}, (
            f"LangGraph draws {node!r}'s edges differently from what static_targets reads"
        )


def test_plain_targets_see_plain_and_waiting_edges_only() -> None:
    builder = _edges_builder()
    got = {node: plain_targets(builder, node) for node in "abcd"}
    assert got == {"a": {"b", "c"}, "b": {"c"}, "c": set(), "d": set()}, (
        f"plain_targets read {got}; LangGraph changed builder.edges (a set of (start, end)) "
        "or builder.waiting_edges (a set of ((starts...), end)) (guards/_compat.plain_targets)"
    )


def test_conditional_sources_give_each_sources_path_functions() -> None:
    builder = _edges_builder()
    got = conditional_sources(builder)
    assert sorted(got) == ["b", "c", "d"]
    funcs = {
        source: [getattr(path, "func", path) for path in paths] for source, paths in got.items()
    }
    assert funcs == {"b": [_route_b], "c": [_route_c], "d": [_route_d]}, (
        f"builder.branches[source][name].path no longer wraps the path function (got "
        f"{funcs}) (guards/_compat.conditional_sources)"
    )


def test_replace_node_runnable_keeps_the_nodes_other_settings() -> None:
    calls: list[str] = []

    def a(state: State) -> Command[Literal["b"]]:
        return Command(goto="b", update={"log": ["a"]})

    builder = StateGraph(State)
    retry = RetryPolicy(max_attempts=2)
    builder.add_node("a", a, retry_policy=retry, destinations=("b",), metadata={"k": "v"})
    builder.add_node("b", _log("b"))
    builder.add_edge(START, "a")
    original = node_runnable(builder, "a")
    before = builder.nodes["a"]

    def wrapper(state: State, config: RunnableConfig) -> Any:
        calls.append("wrapper")
        return original.invoke(state, config)

    replace_node_runnable(builder, "a", runnable=wrapper)
    after = builder.nodes["a"]
    assert node_runnable(builder, "a") is wrapper, (
        "builder.nodes[name].runnable is no longer the node's runnable "
        "(guards/_compat.node_runnable / replace_node_runnable)"
    )
    kept = {
        field: (getattr(before, field), getattr(after, field))
        for field in ("retry_policy", "ends", "metadata", "input_schema")
    }
    assert all(old == new for old, new in kept.values()), (
        f"Replacing a node's runnable changed its other settings: {kept} "
        "(guards/_compat.replace_node_runnable)"
    )
    graph = builder.compile()
    assert graph.invoke({"log": []}) == {"log": ["a", "b"]}, (
        "A node whose runnable was replaced before compile() no longer routes by the "
        "original's Command(goto=...) (guards/_compat.replace_node_runnable)"
    )
    assert calls == ["wrapper"], (
        f"compile() did not run the replaced runnable (calls: {calls}); LangGraph no longer "
        "builds a node from builder.nodes[name].runnable (guards/_compat.replace_node_runnable)"
    )


def test_is_error_handler_marks_the_nodes_error_handler_adds() -> None:
    def boom(state: State) -> dict[str, Any]:
        raise RuntimeError("boom")

    builder = StateGraph(State)
    builder.add_node("a", _log("a"))
    builder.add_edge(START, "a")
    if "error_handler" not in inspect.signature(StateGraph.add_node).parameters:
        assert not any(is_error_handler(spec) for spec in builder.nodes.values())
        return
    builder.add_node("risky", boom, error_handler=_log("handled"))
    builder.add_edge("a", "risky")
    handlers = sorted(name for name, spec in builder.nodes.items() if is_error_handler(spec))
    assert len(handlers) == 1 and handlers[0] not in ("a", "risky"), (
        f"add_node(error_handler=...) now leaves builder nodes {sorted(builder.nodes)} with "
        f"is_error_handler set on {handlers}; sanegraph expects one extra node marked "
        "is_error_handler=True (guards/_compat.is_error_handler; add_task_owner does not "
        "route to it)"
    )
    assert builder.compile().invoke({"log": []}) == {"log": ["a", "handled"]}


# -- trigger channels, pending writes and Sends ------------------------------------------


def test_trigger_node_names_the_node_each_trigger_channel_starts() -> None:
    builder = _edges_builder()
    graph = builder.compile()
    triggers = {channel: node for node, spec in graph.nodes.items() for channel in spec.triggers}
    got = {channel: trigger_node(channel) for channel in graph.channels}
    assert got == {channel: triggers.get(channel) for channel in graph.channels}, (
        f"LangGraph's trigger channels are now {triggers} (channel -> node); sanegraph reads "
        "the node from '__start__', 'branch:to:<node>' and 'join:<a+b>:<node>' "
        "(guards/_compat.trigger_node; `sanegraph runs` tells finished threads by it)"
    )
    assert trigger_node("join:a+b:c") == "c"


def _paused_by_interrupt(saver: BaseCheckpointSaver[Any]) -> Any:
    def ask(state: State) -> dict[str, Any]:
        return {"log": [f"c:{interrupt('ok?')}"]}

    builder = StateGraph(State)
    builder.add_node("a", _log("a"))
    builder.add_node("b", _log("b"))
    builder.add_node("c", ask)
    builder.add_edge(START, "a")
    builder.add_edge(START, "b")
    builder.add_edge(["a", "b"], "c")
    return builder.compile(checkpointer=saver)


def test_pending_nodes_are_what_the_graph_runs_next(saver: BaseCheckpointSaver[Any]) -> None:
    graph = _paused_by_interrupt(saver)
    config = _config("paused")
    graph.invoke({"log": []}, config)

    found = saver.get_tuple(config)
    assert found is not None
    assert sorted(pending_nodes(found.checkpoint)) == ["c"], (
        f"A checkpoint paused by interrupt() in 'c' (after a join of a and b) has channels "
        f"{found.checkpoint['channel_versions']} and versions_seen "
        f"{found.checkpoint['versions_seen']}; sanegraph reads the node to run next from "
        "them (guards/_compat.pending_nodes)"
    )
    writes = [channel for _, channel, _ in found.pending_writes or []]
    assert INTERRUPT in writes, (
        f"A checkpoint paused by interrupt() has pending writes on {writes}, none on "
        f"{INTERRUPT!r} (guards/_compat.INTERRUPT; `sanegraph runs` shows it as paused)"
    )
    _assert_pending_nodes_match_next(graph, saver, config)

    graph.invoke(Command(resume="yes"), config)
    assert graph.get_state(config).values["log"] == ["a", "b", "c:yes"]
    _assert_pending_nodes_match_next(graph, saver, config)


def _assert_pending_nodes_match_next(
    graph: Any, saver: BaseCheckpointSaver[Any], config: Any
) -> None:
    """At every checkpoint of the thread, pending_nodes (the checkpoint alone) names what
    LangGraph (the graph and the checkpoint) runs next; the newest one, of a finished
    thread, none."""
    # list() first: SqliteSaver.list holds the saver's lock while it yields.
    for snapshot in list(saver.list(config)):
        expected = sorted(graph.get_state(snapshot.config).next)
        channels = {
            channel: value
            for channel, value in snapshot.checkpoint["channel_values"].items()
            if trigger_node(channel)
        }
        assert sorted(pending_nodes(snapshot.checkpoint)) == expected, (
            f"At step {snapshot.metadata.get('step')} LangGraph runs {expected} next, but "
            f"_compat.pending_nodes reads otherwise from the checkpoint alone: its trigger "
            f"channels are {channels}, their versions "
            f"{snapshot.checkpoint['channel_versions']}, versions_seen "
            f"{snapshot.checkpoint['versions_seen']} (guards/_compat.pending_nodes, _available)"
        )
        assert not has_pending_sends(snapshot.checkpoint["channel_values"])


def test_pending_nodes_wait_for_deferred_nodes_and_whole_joins(
    saver: BaseCheckpointSaver[Any],
) -> None:
    """A deferred node (``defer=True``) runs once nothing else is left, a join once every
    node named in it has run; one that never completes leaves a finished thread."""
    builder = StateGraph(State)
    for name in ("a", "b+1", "c", "d", "e", "never"):
        builder.add_node(name, _log(name), defer=name in ("d", "e"))
    builder.add_edge(START, "a")
    builder.add_edge("a", "b+1")
    builder.add_edge("b+1", "c")
    builder.add_edge("a", "d")
    builder.add_edge(["c", "b+1", "d"], "e")
    builder.add_conditional_edges("a", lambda state: [], ["never"])
    builder.add_edge(["a", "never"], "c")
    graph = builder.compile(checkpointer=saver)
    config = _config("deferred")
    graph.invoke({"log": []}, config)
    assert graph.get_state(config).values["log"] == ["a", "b+1", "c", "d", "e"]
    channels = saver.get_tuple(config).checkpoint["channel_values"]
    assert any(channel.startswith("join:") for channel in channels), (
        f"A finished thread with joins no longer keeps their channels {sorted(channels)}: "
        "the join case of _compat._available is not exercised"
    )
    _assert_pending_nodes_match_next(graph, saver, config)


def test_send_packets_wait_in_pending_sends(saver: BaseCheckpointSaver[Any]) -> None:
    builder = StateGraph(State)
    builder.add_node("a", _log("a"))
    builder.add_node("fan", lambda state: {"log": [state["item"]]})
    builder.add_edge(START, "a")
    builder.add_conditional_edges(
        "a", lambda state: [Send("fan", {"item": "x"}), Send("fan", {"item": "y"})], ["fan"]
    )
    graph = builder.compile(checkpointer=saver, interrupt_before=["fan"])
    config = _config("sends")
    graph.invoke({"log": []}, config)
    assert PENDING_SENDS in graph.channels, (
        f"A compiled graph's channels are now {sorted(graph.channels)}, without "
        f"{PENDING_SENDS!r} where Send packets wait (guards/_compat.PENDING_SENDS)"
    )

    found = saver.get_tuple(config)
    assert found is not None
    values = found.checkpoint["channel_values"]
    assert has_pending_sends(values), (
        f"A checkpoint with two Sends pending has the channels {sorted(values)}; sanegraph "
        f"looks for them in {PENDING_SENDS!r} (guards/_compat.has_pending_sends)"
    )
    assert list(pending_nodes(found.checkpoint)) == [], (
        "Send targets now show up as triggered channels (guards/_compat.pending_nodes)"
    )
    tasks = graph.get_state(config).tasks
    assert [task.name for task in tasks] == ["fan", "fan"]
    assert not any(is_pull_task(task) for task in tasks), (
        f"Send tasks now have the paths {[task.path for task in tasks]}, starting with "
        f"{PULL!r} like edge-triggered ones (guards/_compat.is_pull_task)"
    )

    graph.invoke(None, config)
    done = saver.get_tuple(config)
    assert done is not None
    assert not has_pending_sends(done.checkpoint["channel_values"])
    assert graph.get_state(config).values["log"] == ["a", "x", "y"]


def test_a_node_that_raised_leaves_an_error_write(saver: BaseCheckpointSaver[Any]) -> None:
    def boom(state: State) -> dict[str, Any]:
        raise RuntimeError("boom")

    builder = StateGraph(State)
    builder.add_node("a", boom)
    builder.add_edge(START, "a")
    graph = builder.compile(checkpointer=saver)
    config = _config("raised")
    with pytest.raises(RuntimeError, match="boom"):
        graph.invoke({"log": []}, config)
    found = saver.get_tuple(config)
    assert found is not None
    writes = [channel for _, channel, _ in found.pending_writes or []]
    assert ERROR in writes and INTERRUPT not in writes, (
        f"A node that raised leaves pending writes on {writes}; sanegraph expects one on "
        f"{ERROR!r} (guards/_compat.ERROR; `sanegraph runs` shows the thread as error)"
    )


def test_a_command_goto_is_a_pull_task_that_no_edge_declares() -> None:
    def a(state: State) -> Command[Literal["c"]]:
        return Command(goto="c", update={"log": ["a"]})

    builder = StateGraph(State)
    builder.add_node("a", a, destinations=("c",))
    builder.add_node("b", lambda state: {"log": ["b"]})
    builder.add_node("c", lambda state: {"log": ["c"]})
    builder.add_edge(START, "a")
    builder.add_edge("a", "b")
    graph = builder.compile(checkpointer=InMemorySaver(), interrupt_after=["a"])
    config: Any = _config("t1")
    graph.invoke({"log": []}, config)

    tasks = graph.get_state(config).tasks
    assert sorted(task.name for task in tasks if is_pull_task(task)) == ["b", "c"], (
        "Tasks started by an edge or Command(goto=...) no longer have '__pregel_pull' "
        "paths: update _compat.PULL / is_pull_task (rollback replays gotos with it)."
    )
    assert static_targets(builder, "a") == {"b"}
    found = graph.checkpointer.get_tuple(config)
    assert sorted(pending_nodes(found.checkpoint)) == ["b", "c"], (
        "A Command(goto='c') no longer shows as a triggered channel of 'c' "
        "(guards/_compat.pending_nodes)"
    )


# -- state keys -------------------------------------------------------------------------


def test_state_keys_leave_out_langgraphs_own_channels() -> None:
    graph = _chain([])
    assert set(graph.channels) > {"topic", "log"}
    assert state_keys(graph.channels) == ["item", "log", "topic"]
    channels = _edges_builder().compile().channels
    assert state_keys(channels) == ["item", "log", "topic"], (
        f"LangGraph's own channels are now {sorted(channels)}; state_keys tells them from "
        "state keys by a '__' prefix or a ':' (guards/_compat.state_keys)"
    )


# -- savers -----------------------------------------------------------------------------


async def test_async_savers_keep_the_loop_that_opened_them(tmp_path: Path) -> None:
    async with async_sqlite_saver(tmp_path / "c.sqlite") as saver:
        assert saver_loop(saver) is asyncio.get_running_loop(), (
            "AsyncSqliteSaver no longer keeps its event loop as `loop`: update "
            "_compat.saver_loop (rollback() uses it to refuse a sync call that would block)."
        )
    assert saver_loop(InMemorySaver()) is None


def test_sqlite_saver_keeps_its_connection(tmp_path: Path) -> None:
    with sqlite_saver(tmp_path / "c.sqlite") as saver:
        assert isinstance(sqlite_connection(saver), sqlite3.Connection), (
            "SqliteSaver no longer keeps its sqlite3.Connection as `conn`: update "
            "_compat.sqlite_connection (the journal writes through it)."
        )
    with pytest.raises(TypeError, match="InMemorySaver has no 'conn' attribute"):
        sqlite_connection(InMemorySaver())


def test_sqlite_saver_keeps_checkpoints_in_its_tables(tmp_path: Path) -> None:
    with sqlite_saver(tmp_path / "c.sqlite") as saver:
        conn = sqlite_connection(saver)
        tables = {
            name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        }
        assert set(SQLITE_TABLES) <= tables, (
            f"SqliteSaver.setup() now creates the tables {sorted(tables)}; sanegraph "
            f"recognises a checkpoint file by {SQLITE_TABLES} (guards/_compat.SQLITE_TABLES)"
        )
        _paused_by_interrupt(saver).invoke({"log": []}, _config("t"))
        counts = {
            table: conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
            for table in SQLITE_TABLES
        }
        assert all(counts.values()), (
            f"A run paused by interrupt() left the row counts {counts} "
            "(guards/_compat.SQLITE_TABLES)"
        )


def test_sqlite_thread_ids_lists_root_threads_newest_first(tmp_path: Path) -> None:
    inner_builder = StateGraph(State)
    inner_builder.add_node("ask", lambda state: {"log": [interrupt("q")]})
    inner_builder.add_edge(START, "ask")
    builder = StateGraph(State)
    builder.add_node("sub", inner_builder.compile())
    builder.add_edge(START, "sub")
    with sqlite_saver(tmp_path / "c.sqlite") as saver:
        graph = builder.compile(checkpointer=saver)
        for thread_id in ("t1", "t2", "t3"):
            graph.invoke({"log": []}, _config(thread_id))
        graph.invoke(Command(resume="again"), _config("t1"))
        conn = sqlite_connection(saver)
        namespaces = {
            ns for (ns,) in conn.execute("SELECT DISTINCT checkpoint_ns FROM checkpoints")
        }
        assert "" in namespaces and len(namespaces) > 1, (
            f"SqliteSaver stored the checkpoint_ns values {namespaces} for a root graph "
            "paused inside a subgraph; sanegraph expects '' for the root graph's rows "
            "(guards/_compat.sqlite_thread_ids)"
        )
        assert sqlite_thread_ids(conn) == ["t1", "t3", "t2"], (
            "SqliteSaver's checkpoint ids no longer sort in the order they were written, or "
            "its rows are no longer keyed by thread_id and checkpoint_ns "
            "(guards/_compat.sqlite_thread_ids; `sanegraph runs` lists threads by it)"
        )
        for snapshot in graph.get_state_history(_config("t1")):
            if snapshot.parent_config:
                parent = snapshot.parent_config["configurable"]["checkpoint_id"]
                assert parent < snapshot.config["configurable"]["checkpoint_id"], (
                    "A checkpoint's id no longer sorts after its parent's "
                    "(guards/_compat.sqlite_thread_ids)"
                )
