"""The ledger channel at the unit tier: folding deltas, subgraph hand-back, bounds."""

from __future__ import annotations

import itertools
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from sanegraph.guards import Ledger, read_ledger
from sanegraph.guards._scope import RunScope
from sanegraph.guards.ledger import DEFAULT_WINDOW, MAX_ENVELOPES, MAX_RECENT, MAX_TRIPS, new_ledger
from sanegraph.guards.reducer import fold_ledger
from sanegraph.guards.trips import make_trip


def step(agent: str, parent: str, *, fp: str = "f", sane: bool = True, hop: int = 1, **kw: Any):
    delta: dict[str, Any] = {
        "agent": agent,
        "parent": parent,
        "now": 1000.0,
        "hop": hop,
        "latency": 0.001,
        "fp": fp,
        "sane": sane,
        "record": {
            "agent": agent,
            "key": kw.pop("key", agent),
            "hop": kw.pop("at", 1),
            "status": "success" if sane else "failed",
            "confidence": None,
            "reason": "",
        },
    }
    delta.update(kw)
    return delta


def fold_all(deltas: list[dict[str, Any]], start: Ledger | None = None) -> Ledger:
    ledger: Ledger = start if start is not None else {}
    for delta in deltas:
        ledger = fold_ledger(ledger, delta)
    return ledger


def test_empty_channel_reads_as_a_fresh_ledger() -> None:
    assert read_ledger({})["hops"] == 0
    assert read_ledger({"guard": {}})["status"] == "running"
    assert fold_ledger({}, None) == fold_ledger({}, {})


def test_deltas_count_hops_per_agent_and_record_fingerprints() -> None:
    ledger = fold_all([step("researcher", "c1"), step("analyst", "c2", fp="g")])
    assert ledger["hops"] == 2
    assert ledger["by_agent"] == {"researcher": 1, "analyst": 1}
    assert ledger["window"] == [["researcher", "f"], ["analyst", "g"]]
    assert ledger["latency_us"] == {"researcher": 1000, "analyst": 1000}
    assert ledger["started_at"] == 1000.0


def test_folding_never_mutates_the_current_ledger() -> None:
    before = fold_all([step("a", "c1")])
    snapshot = repr(before)
    fold_ledger(
        before, step("a", "c2", trip=make_trip("x", "m", limit=1, observed=2, agent="a", hops=1))
    )
    assert repr(before) == snapshot


def test_a_trip_sets_status_and_an_owner_delta_resolves_it() -> None:
    trip = make_trip("hop_cap", "too many", limit=1, observed=2, agent="a", hops=1)
    ledger = fold_all(
        [step("a", "c1"), {"agent": "a", "parent": "c2", "trip": trip, "sane": False}]
    )
    assert ledger["status"] == "tripped"
    assert ledger["trip_count"] == 1
    assert ledger["trips"][-1]["kind"] == "hop_cap"
    ledger = fold_ledger(ledger, {"status": "running", "grant": {"hops": 3}})
    assert ledger["status"] == "running"
    ledger = fold_ledger(ledger, {"grant": {"hops": 2}})
    assert ledger["grants"] == {"hops": 5}


def test_step_sanity_is_anded_within_a_superstep_and_reset_by_the_next() -> None:
    ledger = fold_all([step("a", "c1"), step("b", "c1", sane=False)])
    assert ledger["step_sane"] is False
    ledger = fold_ledger(ledger, step("a", "c2"))
    assert ledger["step_sane"] is True
    assert ledger["step_parent"] == "c2"


def test_the_ledger_stays_bounded_over_ten_thousand_steps() -> None:
    trip = make_trip("x", "m" * 50, limit=1, observed=2, agent="a", hops=1)
    ledger: Ledger = {}
    sizes = []
    for i in range(10_000):
        ledger = fold_ledger(
            ledger, step("a" if i % 2 else "b", f"c{i:08}", fp=f"{i:08x}", trip=trip)
        )
        if i in (99, 9_999):
            sizes.append(len(repr(ledger)))
    assert ledger["hops"] == 10_000
    assert ledger["trip_count"] == 10_000
    assert len(ledger["window"]) == DEFAULT_WINDOW
    assert len(ledger["recent"]) == MAX_RECENT
    assert len(ledger["trips"]) == MAX_TRIPS
    # Only the digits of the counters grow.
    assert sizes[1] - sizes[0] < 64


def test_window_size_can_be_set_by_a_delta() -> None:
    ledger = fold_all([step("a", f"c{i}", fp=str(i), window_size=4) for i in range(10)])
    assert [fp for _, fp in ledger["window"]] == ["6", "7", "8", "9"]


def test_a_subgraph_hands_back_only_what_it_added() -> None:
    parent = fold_all([step("a", "c1"), step("b", "c2")])
    # Entering the subgraph: its empty channel adopts the parent's ledger.
    child = fold_ledger({}, parent)
    assert child["hops"] == 2
    child = fold_all([step("x", "s1", fp="x1"), step("y", "s2", fp="y1")], child)
    # Meanwhile a sibling branch in the parent added a hop.
    parent = fold_ledger(parent, step("c", "c3"))
    merged = fold_ledger(parent, child)
    assert merged["hops"] == 5
    assert merged["by_agent"] == {"a": 1, "b": 1, "c": 1, "x": 1, "y": 1}
    assert merged["window"][-2:] == [["x", "x1"], ["y", "y1"]]


def test_two_parallel_subgraphs_both_count() -> None:
    parent = fold_all([step("a", "c1")])
    one = fold_all([step("x", "s1"), step("x", "s2")], fold_ledger({}, parent))
    two = fold_all([step("y", "t1")], fold_ledger({}, parent))
    merged = fold_ledger(fold_ledger(parent, one), two)
    assert merged["hops"] == 4
    assert merged["by_agent"] == {"a": 1, "x": 2, "y": 1}


def test_a_subgraph_that_tripped_hands_the_trip_back() -> None:
    parent = fold_all([step("a", "c1")])
    trip = make_trip("hop_cap", "cap", limit=2, observed=3, agent="x", hops=2)
    child = fold_all(
        [{"agent": "x", "parent": "s1", "trip": trip, "sane": False}], fold_ledger({}, parent)
    )
    merged = fold_ledger(parent, child)
    assert merged["status"] == "tripped"
    assert merged["trip_count"] == 1
    assert merged["step_sane"] is False


def test_nested_subgraphs_fold_back_level_by_level() -> None:
    root = fold_ledger({}, {"reset_window": True})  # GuardedStateGraph's first write
    assert root["depth"] == 0
    outer = fold_ledger({}, root)  # entering a subgraph
    assert outer["depth"] == 1
    outer = fold_ledger(outer, step("x", "s1"))
    inner = fold_all([step("y", "i1"), step("y", "i2")], fold_ledger({}, outer))
    assert inner["depth"] == 2
    outer = fold_ledger(outer, inner)
    assert outer["hops"] == 3
    sibling = fold_all([step("z", "t1")], fold_ledger({}, root))  # a parallel subgraph
    merged = fold_ledger(fold_ledger(root, outer), sibling)
    assert merged["hops"] == 4
    assert merged["depth"] == 0


def test_a_previous_result_passed_in_again_changes_nothing() -> None:
    ledger = fold_all([step("a", "c1"), step("b", "c2")])
    assert fold_ledger(ledger, dict(ledger))["hops"] == 2


def test_a_failed_step_inside_a_subgraph_makes_the_parent_step_insane() -> None:
    parent = fold_all([step("a", "c1")])
    child = fold_all([step("x", "s1", sane=False), step("x", "s2")], fold_ledger({}, parent))
    assert child["step_sane"] is True
    merged = fold_ledger(parent, child)
    assert merged["step_sane"] is False
    assert merged["faults"] == 1


def test_a_whole_ledger_without_base_replaces_the_current_one() -> None:
    current = fold_all([step("a", "c1")])
    replacement = new_ledger()
    replacement["hops"] = 7
    assert fold_ledger(current, replacement)["hops"] == 7


def test_a_list_of_deltas_folds_in_order() -> None:
    assert fold_ledger({}, [step("a", "c1"), step("a", "c2")])["hops"] == 2


def test_spend_is_summed_in_total_and_per_agent() -> None:
    # A hand-made delta's ``spend`` adds up.
    ledger = fold_all(
        [
            step("a", "c1", spend={"usd_micros": 5, "input_tokens": 100, "output_tokens": 10}),
            step("b", "c2", spend={"usd_micros": 7, "input_tokens": 1}, warn=["usd"]),
            step("a", "c3", spend={"usd_micros": 1}, warn=["usd", "tokens"]),
        ]
    )
    assert ledger["spent"] == {"usd_micros": 13, "input_tokens": 101, "output_tokens": 10}
    assert ledger["spent_by_agent"]["a"] == {
        "usd_micros": 6,
        "input_tokens": 100,
        "output_tokens": 10,
    }
    assert ledger["warned"] == ["tokens", "usd"]


def _paid(total: int, **by_agent: int) -> dict[str, Any]:
    return {
        "total": {"usd_micros": total},
        "by_agent": {agent: {"usd_micros": usd} for agent, usd in by_agent.items()},
    }


def test_what_the_thread_paid_is_the_highest_figure_any_step_reported() -> None:
    # Guarded steps report the thread's spend log (a fact), not an increment: the ledger
    # keeps the highest figure, whatever order parallel steps fold in.
    deltas = [
        step("a", "c1", paid=_paid(5, a=5)),
        step("b", "c1", paid=_paid(12, a=5, b=7)),
        step("a", "c1", paid=_paid(9, a=9)),  # reported before b's call settled
    ]
    results = {repr(fold_all(list(p))["spent"]) for p in itertools.permutations(deltas)}
    assert results == {repr({"usd_micros": 12})}
    ledger = fold_all(deltas)
    assert ledger["spent_by_agent"] == {"a": {"usd_micros": 9}, "b": {"usd_micros": 7}}
    # A ledger that went back in time (a rollback's fork) catches up with the next step.
    older = fold_all(deltas[:1])
    assert fold_ledger(older, step("a", "c9", paid=_paid(12, a=9, b=7)))["spent"] == {
        "usd_micros": 12
    }


def test_a_subgraph_hands_back_what_the_thread_paid() -> None:
    parent = fold_all([step("a", "c1", paid=_paid(13, a=13))])
    child = fold_ledger({}, parent)
    child = fold_ledger(child, step("x", "s1", paid=_paid(113, a=13, x=100)))
    # The parent's own step meanwhile reported the log's figure after both settled.
    sibling = fold_ledger(parent, step("b", "c4", paid=_paid(114, a=13, x=100, b=1)))
    merged = fold_ledger(sibling, child)
    assert merged["spent"]["usd_micros"] == 114
    assert merged["spent_by_agent"]["x"] == {"usd_micros": 100}


def test_envelopes_keep_the_newest_per_key_and_stay_bounded() -> None:
    ledger = fold_all(
        [
            {"envelope": ["a", {"status": "failed"}]},
            {"envelope": ["b", {"status": "partial"}]},
            {"envelope": ["a", {"status": "success"}]},
        ]
    )
    assert list(ledger["envelopes"].items()) == [
        ("b", {"status": "partial"}),
        ("a", {"status": "success"}),
    ]
    for i in range(MAX_ENVELOPES + 10):
        ledger = fold_ledger(ledger, {"envelope": [f"k{i}", {"status": "success"}]})
    assert len(ledger["envelopes"]) == MAX_ENVELOPES
    assert "a" not in ledger["envelopes"] and f"k{MAX_ENVELOPES + 9}" in ledger["envelopes"]


def test_a_subgraph_hands_back_only_the_envelopes_it_wrote() -> None:
    parent = fold_all([{"envelope": ["a", {"status": "partial"}]}])
    child = fold_ledger({}, parent)
    child = fold_ledger(child, {"envelope": ["x", {"status": "success"}]})
    parent = fold_ledger(parent, {"envelope": ["a", {"status": "success"}]})  # a sibling
    merged = fold_ledger(parent, child)
    assert merged["envelopes"] == {"a": {"status": "success"}, "x": {"status": "success"}}


agents = st.sampled_from(["researcher", "analyst", "writer"])
parallel_steps = st.lists(
    st.tuples(
        agents,
        st.text("abcdef0123456789", min_size=1, max_size=4),
        st.booleans(),
        st.integers(0, 3),
        st.floats(0, 5, allow_nan=False),
        st.booleans(),
    ),
    min_size=1,
    max_size=6,
)


def _parallel_delta(i: int, spec: tuple[str, str, bool, int, float, bool]) -> dict[str, Any]:
    agent, fp, sane, offset, latency, trips = spec
    delta = step(agent, "superstep", fp=fp, sane=sane, key=f"{agent}[{i}]", at=10 + offset)
    delta["latency"] = latency
    delta["now"] = 2000.0 + offset
    delta["spend"] = {"usd_micros": 7 * offset + i, "input_tokens": 11 * i, "output_tokens": offset}
    if sane:
        delta["warn"] = [f"limit{offset}"]
    if trips:
        delta["trip"] = make_trip("hop_cap", f"m{i}", limit=1, observed=2, agent=agent, hops=offset)
    return delta


@settings(max_examples=150, deadline=None)
@given(history=st.integers(0, 40), specs=parallel_steps, window=st.integers(1, 8), data=st.data())
def test_folding_any_permutation_of_parallel_deltas_gives_one_result(
    history: int, specs: list[Any], window: int, data: st.DataObject
) -> None:
    start = fold_all(
        [step("researcher", f"c{i}", fp=f"{i}", window_size=window) for i in range(history)]
    )
    deltas = [_parallel_delta(i, spec) for i, spec in enumerate(specs)]
    expected = fold_all(deltas, start)
    order = data.draw(st.permutations(range(len(deltas))))
    assert fold_all([deltas[i] for i in order], start) == expected


def test_every_permutation_of_a_small_superstep_agrees() -> None:
    deltas = [
        _parallel_delta(i, ("analyst", f"{i}", i % 2 == 0, i, 0.1 * i, i == 1)) for i in range(4)
    ]
    results = {repr(fold_all(list(p))) for p in itertools.permutations(deltas)}
    assert len(results) == 1


def test_the_reducer_is_a_pure_function_of_its_two_arguments() -> None:
    # LangGraph folds each write twice (the edge's fresh read, then the superstep's end):
    # the same arguments give the same ledger, and neither argument is changed.
    ledger = fold_ledger({}, {"agent": "a", "hop": 1})
    delta: dict[str, Any] = {"agent": "a", "hop": 1, "fp": "x"}
    before = (repr(ledger), repr(delta))
    first = fold_ledger(ledger, delta)
    assert fold_ledger(ledger, delta) == first
    assert first["hops"] == 2 and (repr(ledger), repr(delta)) == before
    # No context is read: folding under any runnable config gives the same result.
    from langchain_core.runnables.config import var_child_runnable_config

    token = var_child_runnable_config.set({"configurable": {"checkpoint_ns": "sub:1|x:2"}})
    try:
        assert fold_ledger(ledger, delta) == first
        assert fold_ledger({}, ledger)["depth"] == ledger["depth"] + 1
    finally:
        var_child_runnable_config.reset(token)


# -- live hop counts of parallel branches (guards/_scope.py) --------------------------------


def test_branches_see_their_siblings_hops_past_the_ones_guard_sends_charged() -> None:
    from types import SimpleNamespace

    scope = RunScope()

    def step(index: int, name: str) -> Any:
        # A subgraph step of branch `name`, whose ledger guard_sends charged `index` hops.
        info = SimpleNamespace(checkpoint_ns=f"{name}|work:x", checkpoint_id="inner")
        config = {"configurable": {"checkpoint_map": {"": "root-1", name: "inner"}}}
        ledger = {"base": {"hops": 3 + index, "fanout_index": index}}
        branch = scope.branch_of(ledger, info, config)
        assert branch is not None
        return branch

    def seen(hops: int, of_agent: int) -> tuple[int, int]:
        return hops, of_agent  # a check that trips: returns what it was shown

    def ok(hops: int, of_agent: int) -> None:
        return None

    first, second, third = step(0, "sub:a"), step(1, "sub:b"), step(2, "sub:c")
    for _ in range(3):
        first.claim("work", ok)
    # The second branch was charged one hop for the first: it sees the other two.
    assert second.claim("work", seen) == (2, 3)
    assert second.claim("plan", seen) == (2, 0)
    first.claim("plan", ok)
    assert third.claim("work", seen) == (3, 3)  # 4 hops of the first, minus its charge
    second.claim("work", ok)  # now the second has taken a hop
    assert first.claim("work", seen) == (1, 1)  # a later sibling: all its hops
    assert third.claim("work", seen) == (3, 4)  # an earlier one: its hops past the first
    # A step that ends without a hop gives it back.
    second.release("work")
    assert first.claim("work", seen) == (0, 0)
    # Another superstep (another root checkpoint) starts from nothing.
    other = scope.branch_of(
        {"base": {"hops": 3, "fanout_index": 0}},
        SimpleNamespace(checkpoint_ns="sub:a|work:y", checkpoint_id="inner"),
        {"configurable": {"checkpoint_map": {"": "root-2"}}},
    )
    assert other is not None and other.claim("work", seen) == (0, 0)


def test_top_level_branches_of_one_node_see_its_hops_past_the_charged_ones() -> None:
    from types import SimpleNamespace

    scope = RunScope()

    def step(index: int, task: str) -> Any:
        info = SimpleNamespace(checkpoint_ns=f"worker:{task}", checkpoint_id="root-4")
        # guard_sends' view: hops and the node's count charged for earlier siblings.
        ledger = {"hops": 3 + index, "fanout_hops": 3, "by_agent": {"worker": index}}
        branch = scope.branch_of(ledger, info, {})
        assert branch is not None
        return branch

    first, second = step(0, "a"), step(1, "b")
    first.claim("worker", lambda hops, of_agent: None)
    assert second.claim("worker", lambda hops, of_agent: (hops, of_agent)) == (0, 0)


def test_a_step_outside_any_fan_out_has_no_branch() -> None:
    from types import SimpleNamespace

    scope = RunScope()

    top = SimpleNamespace(checkpoint_ns="lead:x", checkpoint_id="root-3")
    assert scope.branch_of({"hops": 2}, top, {}) is None
    assert scope.branch_of({"hops": 2}, None, {}) is None
    # A top-level branch of guard_sends: its index is its view's charge.
    branch = scope.branch_of({"hops": 5, "fanout_hops": 3}, top, {})
    assert branch is not None and (branch.name, branch.index) == ("lead:x", 2)
