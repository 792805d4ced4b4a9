"""Loop detection at the unit tier: the policy, step entries, each detector on hand-built
windows, the issue's scenarios and false positives, and properties (hypothesis)."""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer

from sanegraph.guards import ConfigurationError
from sanegraph.guards.ledger import DEFAULT_WINDOW
from sanegraph.guards.loops import (
    ENTRY_FIELDS,
    LoopPolicy,
    MinHash,
    Similarity,
    check_loops,
    step_entry,
)
from sanegraph.guards.loops.similarity import normalize, short_hash

sys.path.insert(0, str(Path(__file__).parent))
from _texts import ASKS, DRAFTS

OFF: dict[str, Any] = {
    "max_repeats": None,
    "max_copies": None,
    "max_cycles": None,
    "max_near_duplicates": None,
    "max_tool_repeats": None,
    "max_tool_errors": None,
    "max_stalls": None,
}
"""Every detector off: tests turn on the one they test."""


def only(**on: Any) -> LoopPolicy:
    """A policy with every detector off except those given."""
    return LoopPolicy(**{**OFF, **on})


def env(result: Any = None, reason: str = "", status: str = "success") -> dict[str, Any]:
    return {"status": status, "result": result, "confidence": None, "reason": reason}


class Run:
    """Feeds steps through step_entry and check_loops as the guarded node will, keeping the
    window (trimmed to the policy's size) and the newest envelope of each agent."""

    def __init__(self, policy: LoopPolicy) -> None:
        self.policy = policy
        self.window: list[list[Any]] = []
        self.envelopes: dict[str, dict[str, Any]] = {}
        self.messages: list[Any] = []
        self.hop = 0
        self.trips: list[dict[str, Any]] = []

    def step(
        self,
        agent: str,
        envelope: dict[str, Any],
        update: dict[str, Any] | None = None,
        **state: Any,
    ) -> dict[str, Any] | None:
        self.hop += 1
        given_state = {"messages": list(self.messages), **state}
        given_state["guard"] = {"envelopes": dict(self.envelopes)}
        entry = step_entry(
            agent,
            envelope,
            update=update,
            state=given_state,
            policy=self.policy,
            window=self.window,
            hop=self.hop,
        )
        trip = check_loops(self.window, entry, policy=self.policy, agent=agent, hops=self.hop)
        self.window = [*self.window, entry][-self.policy.window :]
        self.envelopes[agent] = envelope
        if update and "messages" in update:
            self.messages.extend(update["messages"])
        if trip is not None:
            self.trips.append(dict(trip))
        return dict(trip) if trip is not None else None

    def until_trip(self, steps: Iterable[tuple[Any, ...]]) -> dict[str, Any] | None:
        for step in steps:
            trip = self.step(*step)
            if trip is not None:
                return trip
        return None


def entry(
    agent: str,
    fp: str,
    hop: int,
    *,
    out: str = "",
    sim: str = "",
    tools: str = "",
    progress: str = "",
    stalls: int = 0,
    text: str = "",
) -> list[Any]:
    """A hand-built window entry."""
    return [agent, fp, hop, out, sim, tools, progress, stalls, text]


def trips_of(window: list[list[Any]], policy: LoopPolicy) -> list[str]:
    """Check each entry of a hand-built window against the ones before it."""
    kinds = []
    for i, e in enumerate(window):
        trip = check_loops(window[:i], e, policy=policy, agent=e[0], hops=e[2])
        if trip is not None:
            kinds.append(trip["detector"])  # type: ignore[typeddict-item]
    return kinds


# -- the policy --------------------------------------------------------------------------


def test_defaults() -> None:
    policy = LoopPolicy()
    assert (policy.max_repeats, policy.max_copies, policy.max_cycles) == (3, 3, 2)
    assert (policy.max_near_duplicates, policy.min_similarity) == (3, 0.5)
    assert (policy.max_tool_repeats, policy.max_tool_errors, policy.max_stalls) == (3, 3, 4)
    assert policy.window == DEFAULT_WINDOW
    assert policy.watch == ()
    assert policy.fingerprint == ("output", "tool_calls")
    assert isinstance(policy.similarity, MinHash)
    assert isinstance(policy.similarity, Similarity)


def test_coerce() -> None:
    assert LoopPolicy.coerce(None) == LoopPolicy()
    assert LoopPolicy.coerce(True) == LoopPolicy()
    assert LoopPolicy.coerce(False) is None
    assert LoopPolicy.coerce(5) == LoopPolicy(max_repeats=5)
    policy = LoopPolicy(max_cycles=3)
    assert LoopPolicy.coerce(policy) is policy
    with pytest.raises(ConfigurationError, match=re.escape("loops=LoopPolicy(max_repeats=3)")):
        LoopPolicy.coerce("3")  # type: ignore[arg-type]


def test_fields_are_normalized() -> None:
    policy = LoopPolicy(
        watch="draft",  # type: ignore[arg-type]
        fingerprint=["request", "output", "output"],  # type: ignore[arg-type]
        fingerprint_per_agent={"router": "request", "quiet": ()},  # type: ignore[dict-item]
    )
    assert policy.watch == ("draft",)
    assert policy.fingerprint == ("output", "request")
    assert dict(policy.fingerprint_per_agent) == {"router": ("request",), "quiet": ()}
    assert policy.parts_for("router") == ("request",)
    assert policy.parts_for("anyone") == ("output", "request")
    with pytest.raises(TypeError):
        policy.fingerprint_per_agent["x"] = ()  # type: ignore[index]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_repeats": 1}, "LoopPolicy.max_repeats must be a whole number >= 2 or None"),
        ({"max_cycles": True}, "LoopPolicy.max_cycles must be a whole number >= 2 or None"),
        ({"max_tool_repeats": 0}, "LoopPolicy.max_tool_repeats must be a whole number >= 1"),
        ({"max_stalls": 2.5}, "LoopPolicy.max_stalls must be a whole number >= 1"),
        ({"window": 1}, "LoopPolicy.window must be a whole number in [2, 1024], got 1"),
        ({"window": 4, "max_repeats": 5}, "LoopPolicy.max_repeats=5 can never trip with window=4"),
        ({"window": 4, "max_cycles": 3}, "LoopPolicy.max_cycles=3 can never trip with window=4"),
        ({"min_similarity": 0}, "LoopPolicy.min_similarity must be in (0, 1], got 0"),
        ({"watch": ("a", "")}, "LoopPolicy.watch must be a tuple of state keys"),
        (
            {"fingerprint": ("output", "input")},
            "LoopPolicy.fingerprint has an unknown part 'input'",
        ),
        (
            {"fingerprint_per_agent": {"a": ("outputs",)}},
            "LoopPolicy.fingerprint_per_agent['a'] has an unknown part 'outputs'",
        ),
        ({"fingerprint_per_agent": {"": ()}}, "fingerprint_per_agent keys must be agent names"),
        ({"similarity": object()}, "LoopPolicy.similarity must have signature(text)"),
    ],
)
def test_bad_values_say_what_to_change(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError, match=re.escape(message)):
        LoopPolicy(**kwargs)


def test_minhash_validates_k() -> None:
    with pytest.raises(ConfigurationError, match=re.escape("MinHash.k must be a whole number")):
        MinHash(k=2)


# -- normalization and similarity -----------------------------------------------------------


def test_normalize_masks_volatile_tokens() -> None:
    text = (
        "  Request 3F2504E0-4F89-11D3-9A0C-0305E82C3301 at 2024-05-01T12:00:03Z\n"
        "(unix 1714564803, ms 1714564803123, id a1b2c3d4e5, at 12:00:03) page 2 of 10 "
    )
    assert normalize(text) == (
        "request <id> at <ts> (unix <ts>, ms <ts>, id <id>, at <ts>) page 2 of 10"
    )
    assert normalize("deadbeef 12345678 facade") == "deadbeef 12345678 facade"
    assert normalize("call toolu_01ABCdefGHIjkl99 now") == "call <id> now"


def test_hashes_are_stable_across_processes() -> None:
    # Entries are checkpointed: the same text must hash the same after a restart.
    assert short_hash("abc") == "78af5f94892f"  # XXH3-64, its first 48 bits
    assert MinHash().signature("hello world") == "0d4a13610a3a771"
    assert MinHash().signature("page 2 of 10") == "059f1076da140ab1ad5b1bc4ca15d2ab0c4/ebd06a"


def test_minhash_similarity() -> None:
    sketch = MinHash()
    sign = lambda text: sketch.signature(normalize(text))  # noqa: E731
    ask = sign("I need more context about the Q3 revenue numbers.")
    assert sketch.similarity(ask, ask) == 1.0
    assert (
        sketch.similarity(ask, sign("I still need more context about the Q3 revenue numbers."))
        > 0.6
    )
    assert sketch.similarity(ask, sign("Revenue grew 12% in Q3, driven by cloud sales.")) < 0.2
    assert sketch.similarity(ask, "") == 0.0
    assert sketch.signature("") == ""
    letters = "abcdefghijklmnopqrstuvwxyz"
    long_text = " ".join(a + b + c for a in letters for b in letters for c in letters[:8])
    assert len(sketch.signature(long_text)) == 5 * 16
    assert len(sketch.signature("page 7 " + long_text)) == 5 * 16 + 7


@settings(max_examples=50, deadline=None)
@given(st.text(max_size=200), st.text(max_size=200))
def test_minhash_similarity_is_symmetric_and_bounded(a: str, b: str) -> None:
    sketch = MinHash()
    sa, sb = sketch.signature(normalize(a)), sketch.signature(normalize(b))
    value = sketch.similarity(sa, sb)
    assert 0.0 <= value <= 1.0
    assert value == sketch.similarity(sb, sa)
    if sa:
        assert sketch.similarity(sa, sa) == 1.0


# -- step entries ---------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=8,
)


@settings(max_examples=60, deadline=None)
@given(
    agent=st.text(min_size=1, max_size=20),
    status=st.sampled_from(["success", "partial", "failed"]),
    result=json_values,
    reason=st.text(max_size=100),
    hop=st.integers(min_value=1, max_value=10**6),
)
def test_entries_are_small_json_ready_lists_of_fixed_types(
    agent: str, status: str, result: Any, reason: str, hop: int
) -> None:
    policy = LoopPolicy(fingerprint=("output", "tool_calls", "request"))
    state = {"messages": [HumanMessage("go")]}
    made = step_entry(
        agent,
        env(result, reason, status),
        update=None,
        state=state,
        policy=policy,
        window=[],
        hop=hop,
    )
    assert len(made) == len(ENTRY_FIELDS)
    types = [type(v) for v in made]
    assert types == [str, str, int, str, str, str, str, int, str]
    assert made[0] == agent and made[2] == hop
    assert len(made[-1]) <= 60
    assert all(len(v) <= 90 for v in made[1:7] if isinstance(v, str))
    serde = JsonPlusSerializer()
    assert serde.loads_typed(serde.dumps_typed(made)) == made
    assert json.loads(json.dumps(made)) == made
    # The ledger sorts the entries of one superstep by comparing them.
    other = entry("a", "f", 1, text="x")
    assert sorted([made, other]) in ([made, other], [other, made])


def test_volatile_tokens_do_not_change_the_fingerprint() -> None:
    policy = LoopPolicy()
    a = step_entry(
        "a",
        env({"job": "3f2504e0-4f89-11d3-9a0c-0305e82c3301"}, "Retry at 2024-05-01T12:00:03Z"),
        update=None,
        state={},
        policy=policy,
        window=[],
        hop=1,
    )
    b = step_entry(
        "a",
        env({"job": "9b2c1d00-0000-4000-8000-0123456789ab"}, "retry   at 2025-01-09T08:30:00Z"),
        update=None,
        state={},
        policy=policy,
        window=[],
        hop=2,
    )
    assert a[1] == b[1]
    assert (
        a[1]
        != step_entry(
            "a", env({"job": "x"}, "Retry"), update=None, state={}, policy=policy, window=[], hop=3
        )[1]
    )


def test_fingerprint_covers_what_the_policy_says() -> None:
    def fp(policy: LoopPolicy, request: str, agent: str = "a") -> str:
        state = {"messages": [HumanMessage(request)]}
        made = step_entry(
            agent, env("same"), update=None, state=state, policy=policy, window=[], hop=1
        )
        return str(made[1])

    default = LoopPolicy()
    assert fp(default, "question one") == fp(default, "question two")
    with_request = LoopPolicy(fingerprint_per_agent={"router": ("output", "request")})
    assert fp(with_request, "question one", "router") != fp(with_request, "question two", "router")
    assert fp(LoopPolicy(fingerprint_per_agent={"a": ()}), "q") == ""


def test_request_falls_back_to_the_newest_envelope_of_another_agent() -> None:
    policy = LoopPolicy(fingerprint=("request",))

    def fp(envelopes: dict[str, Any]) -> str:
        state = {"guard": {"envelopes": envelopes}}
        return str(
            step_entry("a", env(), update=None, state=state, policy=policy, window=[], hop=1)[1]
        )

    one = fp({"b": env("answer one"), "a": env("mine")})
    assert one == fp({"b": env("answer one"), "a": env("changed")})
    assert one != fp({"b": env("answer two"), "a": env("mine")})


def test_short_texts_get_no_near_duplicate_signature() -> None:
    def sim(result: str) -> str:
        made = step_entry(
            "a", env(result), update=None, state={}, policy=LoopPolicy(), window=[], hop=1
        )
        return str(made[4])

    assert sim("done") == sim("route researcher") == ""
    assert sim("route to the researcher")
    off = LoopPolicy(max_near_duplicates=None)
    assert (
        step_entry("a", env("a b c d"), update=None, state={}, policy=off, window=[], hop=1)[4]
        == ""
    )


def test_stalls_carry_on_from_the_last_entry_and_ignore_older_layouts() -> None:
    policy = only(watch=("x",))
    made = step_entry(
        "a",
        env(),
        update=None,
        state={},
        policy=policy,
        window=[entry("a", "f", 1, stalls=5)],
        hop=2,
    )
    assert made[7] == 6
    made = step_entry(
        "a", env(), update=None, state={}, policy=policy, window=[["a", "1f2e3d4c0a"]], hop=2
    )
    assert made[7] == 1


def call(name: str, args: dict[str, Any], call_id: str) -> dict[str, Any]:
    return {"name": name, "args": args, "id": call_id, "type": "tool_call"}


def test_tool_calls_of_a_react_step_and_their_results() -> None:
    policy = LoopPolicy()
    human = HumanMessage("find it", id="h1")
    update = {
        "messages": [
            human,  # a subgraph hands back the whole list: what came in is not new
            AIMessage("", tool_calls=[call("search", {"q": "x"}, "c1")], id="m1"),
            ToolMessage("boom", tool_call_id="c1", name="search", status="error", id="m2"),
            AIMessage(
                "",
                tool_calls=[
                    call("search", {"q": "x"}, "c2"),
                    call("Envelope", {"status": "success"}, "c3"),
                ],
                id="m3",
            ),
        ]
    }
    made = step_entry(
        "a", env(), update=update, state={"messages": [human]}, policy=policy, window=[], hop=1
    )
    tokens = made[5].split()
    assert len(tokens) == 2  # the envelope carried as a tool call is not a tool
    first, second = (t.split(":") for t in tokens)
    assert first[0] == second[0] == "search" and first[1] == second[1]
    assert first[2].startswith("!") and second[2] == ""
    assert first[3] == short_hash("c1", 3)


def test_tool_results_arrive_in_the_next_request() -> None:
    policy = LoopPolicy()
    asked = AIMessage("", tool_calls=[call("lookup", {"id": 7}, "c9")], id="m1")
    answer = ToolMessage("found", tool_call_id="c9", name="lookup", id="m2")
    made = step_entry(
        "a",
        env("done"),
        update={"messages": [AIMessage("done")]},
        state={"messages": [HumanMessage("q"), asked, answer]},
        policy=policy,
        window=[],
        hop=2,
    )
    (token,) = made[5].split()
    name, _args, result, call_id = token.split(":")
    assert (name, call_id) == ("lookup", short_hash("c9", 3))
    assert result == short_hash(normalize("found"), 4)


def test_openai_style_dict_messages() -> None:
    made = step_entry(
        "a",
        env(),
        update={
            "messages": [
                {
                    "role": "assistant",
                    "content": "",
                    "tool_calls": [
                        {"id": "c1", "function": {"name": "get", "arguments": '{"a": 1}'}}
                    ],
                },
                {"role": "tool", "tool_call_id": "c1", "content": "ok"},
            ]
        },
        state={},
        policy=LoopPolicy(),
        window=[],
        hop=1,
    )
    (token,) = made[5].split()
    assert token.startswith("get:") and token.split(":")[2]


def test_envelopes_carried_as_tool_calls_are_not_tools() -> None:
    # The guard reads the first call with a "status" argument as the envelope, whatever its
    # name; counted as a tool call, it would stay pending forever and make every reworded
    # request a different "tool call" (no near-duplicates).
    def tools_of(*calls: dict[str, Any]) -> list[str]:
        ai = AIMessage("", tool_calls=list(calls), id="m1")
        made = step_entry(
            "a", env(), update={"messages": [ai]}, state={}, policy=LoopPolicy(), window=[], hop=1
        )
        return [t.split(":")[0] for t in made[5].split()]

    assert tools_of(call("submit_envelope", {"status": "partial", "reason": "more"}, "c1")) == []
    assert tools_of(call("report", {"status": "success", "result": {"n": 1}}, "c2")) == []
    # A real tool may take a status among other arguments.
    assert tools_of(call("update_ticket", {"ticket": 7, "status": "closed"}, "c3")) == [
        "update_ticket"
    ]
    openai_style = {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            {"id": "c4", "function": {"name": "report", "arguments": '{"status": "failed"}'}},
            {"id": "c5", "function": {"name": "get", "arguments": '{"status": "open", "q": 1}'}},
        ],
    }
    made = step_entry(
        "a",
        env(),
        update={"messages": [openai_style]},
        state={},
        policy=LoopPolicy(),
        window=[],
        hop=1,
    )
    assert [t.split(":")[0] for t in made[5].split()] == ["get"]
    # Nor is the answer to one (LangChain's structured output answers it).
    asked = AIMessage("", tool_calls=[call("Report", {"status": "success"}, "c6")], id="m1")
    answer = ToolMessage("Returning structured response", tool_call_id="c6", id="m2")
    made = step_entry(
        "a",
        env(),
        update=None,
        state={"messages": [asked, answer]},
        policy=LoopPolicy(),
        window=[],
        hop=1,
    )
    assert made[5] == ""


# -- detectors on hand-built windows ----------------------------------------------------------


def test_repeat_trips_at_max_repeats_of_one_agent() -> None:
    policy = only(max_repeats=3)
    window = [
        entry("a", "f1", 1),
        entry("b", "f1", 2),  # another agent: not a repeat of a's
        entry("a", "f1", 3),
        entry("a", "f2", 4),
        entry("a", "f1", 5, text="again"),
    ]
    assert trips_of(window, policy) == ["repeat"]
    trip = check_loops(window[:4], window[4], policy=policy, agent="a", hops=5)
    assert trip is not None
    assert trip["kind"] == "loop_repeat"
    assert (trip["limit"], trip["observed"], trip["agent"], trip["scope"], trip["hop"]) == (
        3,
        3,
        "a",
        "agent",
        5,
    )
    assert trip["steps"] == [  # type: ignore[typeddict-item]
        {"agent": "a", "hop": 1, "fp": "f1", "text": ""},
        {"agent": "a", "hop": 3, "fp": "f1", "text": ""},
        {"agent": "a", "hop": 5, "fp": "f1", "text": "again"},
    ]
    assert trip["message"] == (
        "'a' repeated the same action 3 times, reaching LoopPolicy.max_repeats=3 "
        "(hops 1, 3, 5: 'again'). Let the task owner re-plan; if the repetition is "
        "legitimate, fingerprint more of the step with "
        "LoopPolicy.fingerprint_per_agent['a'] (e.g. ('output', 'request')) or raise "
        "max_repeats."
    )
    assert trips_of(window, only(max_repeats=4)) == []
    assert trips_of(window, only()) == []


def test_parallel_steps_of_one_superstep_count_once() -> None:
    # Three Send branches of one worker returning the same result at hop 2 are fan-out,
    # not a loop; a later step repeating it is the second occurrence.
    window = [entry("w", "f", 2), entry("w", "f", 2), entry("w", "f", 2)]
    assert (
        check_loops(window, entry("w", "f", 3), policy=only(max_repeats=3), agent="w", hops=3)
        is None
    )
    assert check_loops(
        [*window, entry("w", "f", 3)],
        entry("w", "f", 4),
        policy=only(max_repeats=3),
        agent="w",
        hops=4,
    )


def test_an_exempt_agent_never_repeats() -> None:
    window = [entry("router", "", h) for h in range(1, 6)]
    assert trips_of(window, only(max_repeats=2, max_cycles=2)) == []


def test_entries_of_another_layout_are_skipped() -> None:
    window: list[list[Any]] = [["a", "1f2e3d4c0a"], ["a", "1f2e3d4c0a"], entry("a", "f", 3)]
    assert check_loops(window, entry("a", "f", 4), policy=LoopPolicy(), agent="a", hops=4) is None


def test_copy_trips_when_a_result_is_passed_on_unchanged() -> None:
    window = [entry(f"agent{i}", f"f{i}", i + 1, out="o1") for i in range(3)]
    assert trips_of(window, only(max_copies=3)) == ["copy"]
    trip = check_loops(window[:2], window[2], policy=only(max_copies=3), agent="agent2", hops=3)
    assert trip is not None and trip["kind"] == "loop_copy"
    assert "(by 'agent0', 'agent1', 'agent2')" in trip["message"]
    # One agent alone is the repeat detector's business; short results have no "out".
    assert (
        trips_of([entry("a", f"f{i}", i, out="o1") for i in range(1, 5)], only(max_copies=3)) == []
    )
    assert trips_of([entry(f"a{i}", "f", i, out="") for i in range(1, 5)], only(max_copies=3)) == []


def test_cycle_of_two_agents() -> None:
    ab = [entry("a", "fa", 1), entry("b", "fb", 2), entry("a", "fa", 3), entry("b", "fb", 4)]
    assert trips_of(ab, only(max_cycles=2)) == ["cycle"]
    trip = check_loops(ab[:3], ab[3], policy=only(max_cycles=2), agent="b", hops=4)
    assert trip is not None
    assert trip["kind"] == "loop_cycle"
    assert trip["message"].startswith("The cycle a -> b repeated 2 times with the same content")
    assert [s["hop"] for s in trip["steps"]] == [1, 2, 3, 4]  # type: ignore[typeddict-item]
    assert trips_of(ab, only(max_cycles=3)) == []
    assert trips_of([*ab, entry("a", "fa", 5), entry("b", "fb", 6)], only(max_cycles=3)) == [
        "cycle"
    ]


def test_longer_cycles_and_changing_content() -> None:
    abc = [entry(x, "f" + x, i) for i, x in enumerate("abcabc", 1)]
    assert trips_of(abc, only(max_cycles=2)) == ["cycle"]
    changing = [entry(x, f"f{x}{i}", i) for i, x in enumerate("abababab", 1)]
    assert trips_of(changing, only(max_cycles=2)) == []
    # a -> a -> a is a repeat, not a cycle
    assert trips_of([entry("a", "f", i) for i in range(1, 9)], only(max_cycles=2)) == []


def test_cycle_in_a_very_repetitive_window() -> None:
    # Many earlier matches of the new step: the one-pass search is used.
    window = [entry(x, "f" + x, i) for i, x in enumerate("ab" * 20, 1)]
    policy = only(max_cycles=3, window=64)
    trip = check_loops(window[:-1], window[-1], policy=policy, agent="b", hops=40)
    assert trip is not None and trip["detector"] == "cycle"  # type: ignore[typeddict-item]
    broken = [*window[:-1], entry("b", "other", 40)]
    assert check_loops(broken[:-1], broken[-1], policy=policy, agent="b", hops=40) is None


def signed(text: str) -> str:
    return MinHash().signature(normalize(text))


def test_near_duplicates_of_one_agent() -> None:
    window = [
        entry("a", "f1", 1, sim=signed(ASKS[0])),
        entry("b", "g", 2, sim=signed(ASKS[1])),  # another agent's words do not count
        entry("a", "f2", 3, sim=signed(ASKS[1])),
        entry("a", "f3", 4, sim=signed(ASKS[2])),
    ]
    assert trips_of(window, only(max_near_duplicates=3)) == ["near_duplicate"]
    trip = check_loops(window[:3], window[3], policy=only(max_near_duplicates=3), agent="a", hops=4)
    assert trip is not None and trip["kind"] == "loop_near_duplicate"
    assert [s["hop"] for s in trip["steps"]] == [1, 3, 4]  # type: ignore[typeddict-item]
    assert trips_of(window, only(max_near_duplicates=3, min_similarity=0.95)) == []


def test_drafts_that_keep_improving_are_not_near_duplicates() -> None:
    window = [entry("writer", f"f{i}", i, sim=signed(d)) for i, d in enumerate(DRAFTS, 1)]
    assert trips_of(window, only(max_near_duplicates=3)) == []
    # ...but one that goes back to an earlier version and stays there is.
    back = [*window, entry("writer", "g", 10, sim=signed(DRAFTS[2]))]
    assert trips_of(back, only(max_near_duplicates=3)) == ["near_duplicate"]


def test_near_duplicates_must_make_the_same_tool_calls() -> None:
    window = [
        entry("a", f"f{i}", i, sim=signed(ASKS[0]), tools=f"search:aa:r{i}:c{i}")
        for i in range(1, 4)
    ]
    assert trips_of(window, only(max_near_duplicates=3)) == []
    assert trips_of(window, only(max_near_duplicates=3, fingerprint=("output",))) == [
        "near_duplicate"
    ]


def test_texts_with_different_numbers_are_not_near_duplicates() -> None:
    sketch = MinHash()
    a = sketch.signature(normalize("Section 2 now covers the market and its growth."))
    b = sketch.signature(normalize("Section 3 now covers the market and its growth."))
    c = sketch.signature(normalize("Section 2 now covers the markets and their growth."))
    assert sketch.similarity(a, b) == 0.0
    assert sketch.similarity(a, c) > 0.3
    # Timestamps and ids are masked first: they do not count as different numbers.
    d = sketch.signature(normalize("Retry at 2024-05-01T12:00:00Z, request a1b2c3d4e5f6."))
    e = sketch.signature(normalize("Retry at 2024-06-11T08:30:00Z, request 9f8e7d6c5b4a."))
    assert sketch.similarity(d, e) == 1.0


def test_a_similarity_of_your_own() -> None:
    class FirstWord:
        def signature(self, text: str) -> str:
            return text.split()[0] if text else ""

        def similarity(self, a: str, b: str) -> float:
            return float(a == b)

    run = Run(only(max_near_duplicates=2, similarity=FirstWord()))
    assert run.step("a", env("alpha is one")) is None
    assert run.step("a", env("beta is two")) is None
    trip = run.step("a", env("beta is three"))
    assert trip is not None and trip["detector"] == "near_duplicate"


def test_tool_repeat_counts_same_arguments_and_same_result() -> None:
    policy = only(max_tool_repeats=3)
    same = [entry("a", f"f{i}", i, tools=f"get:a1:r1:c{i}") for i in range(1, 5)]
    assert trips_of(same, policy) == ["tool_repeat"]
    trip = check_loops(same[:3], same[3], policy=policy, agent="a", hops=4)
    assert trip is not None and trip["kind"] == "tool_repeat"
    assert trip["message"] == (
        "Tool 'get' was called 4 times with the same arguments and the same result, more "
        "than LoopPolicy.max_tool_repeats=3 (agent='a', hops 1, 2, 3, 4). Have the agent "
        "use the result it has or change the arguments; raise max_tool_repeats if the tool "
        "is meant to be polled."
    )
    assert trip["steps"][0] == {  # type: ignore[typeddict-item]
        "agent": "a",
        "hop": 1,
        "fp": "get:a1:r1",
        "text": "get -> r1",
    }
    pages = [entry("a", f"f{i}", i, tools=f"get:a1:r{i}:c{i}") for i in range(1, 9)]
    assert trips_of(pages, policy) == []
    other_args = [entry("a", f"f{i}", i, tools=f"get:a{i}:r1:c{i}") for i in range(1, 9)]
    assert trips_of(other_args, policy) == []


def test_a_pending_call_counts_like_the_latest_answer() -> None:
    # Agent -> ToolNode -> agent: each step answers the previous call and makes a new one.
    steps = [entry("a", "f1", 1, tools="get:a1::c1")]
    for i in range(2, 5):
        steps.append(entry("a", f"f{i}", i, tools=f"get:a1:r:c{i - 1} get:a1::c{i}"))
    assert trips_of(steps, only(max_tool_repeats=3)) == ["tool_repeat"]
    trip = check_loops(steps[:3], steps[3], policy=only(max_tool_repeats=3), agent="a", hops=4)
    assert trip is not None and trip["observed"] == 4


def test_tool_errors_in_a_row() -> None:
    policy = only(max_tool_errors=3)
    errors = [entry("a", f"f{i}", i, tools=f"get:a{i}:!e{i}:c{i}") for i in range(1, 5)]
    assert trips_of(errors, policy) == ["tool_errors"]
    trip = check_loops(errors[:3], errors[3], policy=policy, agent="a", hops=4)
    assert trip is not None and trip["kind"] == "tool_errors" and trip["observed"] == 4
    assert "Tool 'get' returned an error 4 times in a row" in trip["message"]
    recovering = [*errors[:2], entry("a", "ok", 3, tools="get:a3:fine:c3"), *errors[2:]]
    assert trips_of(recovering, policy) == []


def test_a_call_answered_later_counts_once() -> None:
    window = [
        entry("a", "f1", 1, tools="get:a1::c1"),
        entry("b", "f2", 2, tools="get:a1:r:c1"),
        entry("c", "f3", 3, tools="get:a1:r:c1"),  # saw the same answer again
    ]
    assert trips_of(window, only(max_tool_repeats=1)) == []


def test_no_progress_trips_at_max_stalls() -> None:
    window = [entry("m", f"f{i}", i, stalls=i) for i in range(1, 5)]
    assert trips_of(window, only(max_stalls=4)) == ["no_progress"]
    trip = check_loops(window[:3], window[3], policy=only(max_stalls=4), agent="m", hops=4)
    assert trip is not None and trip["kind"] == "no_progress"
    assert trip["message"].startswith(
        "No progress in the envelopes' results for 4 steps, reaching LoopPolicy.max_stalls=4"
    )
    assert [s["hop"] for s in trip["steps"]] == [1, 2, 3, 4]  # type: ignore[typeddict-item]


def test_stall_count_grows_without_progress_and_halves_with_it() -> None:
    run = Run(only(watch=("answer",)))
    written = {"answer": "v1"}
    for update in [None, None, None, written, None, {"answer": "v1"}, {"answer": "v2"}]:
        run.step("m", env(), update)
    assert [e[7] for e in run.window] == [1, 2, 3, 1, 2, 3, 1]
    # Writing the value the state already holds is not progress.
    run.step("m", env(), {"answer": "v2"}, answer="v2")
    assert run.window[-1][7] == 2


def test_default_progress_is_a_new_result() -> None:
    run = Run(only())
    for result in ["a", "a", "b", "a", "c"]:
        run.step("w", env(result))
    assert [e[7] for e in run.window] == [0, 1, 0, 1, 0]


def test_new_tool_answers_are_progress_by_default() -> None:
    # A poller says the same thing every time: what its tool answers is what changes.
    def poll(policy: LoopPolicy, answers: list[tuple[str, str]]) -> list[int]:
        run = Run(policy)
        run.messages.append(HumanMessage("Wait for job j1.", id="h"))
        for i, (answer, status) in enumerate([*answers, ("", "")], 1):
            ai = AIMessage("", tool_calls=[call("job_status", {"id": "j1"}, f"c{i}")], id=f"a{i}")
            run.step("poller", env(None, "waiting for j1", "partial"), {"messages": [ai]})
            run.messages.append(
                ToolMessage(answer, tool_call_id=f"c{i}", status=status or "success", id=f"t{i}")
            )
        return [e[7] for e in run.window]

    changing = [("running: 5%", ""), ("running: 15%", ""), ("running: 15%", "")]
    changing += [("running: 15%", ""), ("done", "")]
    # The same answer again is no progress; a new one halves the stall count.
    assert poll(only(), changing) == [0, 0, 0, 1, 2, 1]
    # Errors never are, even with new messages.
    errors = [(f"Error: timeout after {i}0 seconds", "error") for i in range(1, 5)]
    assert poll(only(), errors) == [0, 1, 2, 3, 4]
    # With watch, only the watched keys count.
    assert poll(only(watch=("answer",)), changing) == [1, 2, 3, 4, 5, 6]


def test_trips_are_json_ready() -> None:
    policy = LoopPolicy()
    run = Run(policy)
    trip = run.until_trip([("a", env(None, "same"))] * 5)
    assert trip is not None
    assert json.loads(json.dumps(trip)) == trip
    assert set(trip) >= {"kind", "message", "limit", "observed", "detector", "steps"}


# -- the scenarios -------------------------------------------------------------------


def test_the_47_loop_stops_by_the_third_repetition() -> None:
    run = Run(LoopPolicy())
    steps = []
    for i in range(47):
        steps.append(("analyst", env(None, "I need more context on the Q3 numbers.", "partial")))
        steps.append(("researcher", env(f"Source {i}: revenue grew {i + 3}% in region {i}.")))
    trip = run.until_trip(steps)
    assert trip is not None and trip["kind"] == "loop_repeat" and trip["agent"] == "analyst"
    assert run.hop <= 6
    assert [s["hop"] for s in trip["steps"]] == [1, 3, 5]


def test_the_47_loop_in_other_words_stops_as_near_duplicates() -> None:
    run = Run(LoopPolicy())
    steps = []
    for i in range(47):
        steps.append(("analyst", env(None, ASKS[i % len(ASKS)], "partial")))
        steps.append(("researcher", env(f"Source {i}: revenue grew {i + 3}% in region {i}.")))
    trip = run.until_trip(steps)
    assert trip is not None and trip["kind"] == "loop_near_duplicate"
    assert run.hop <= 6


def test_the_47_loop_with_the_same_answers_stops_as_a_cycle() -> None:
    run = Run(LoopPolicy())
    steps = [
        ("analyst", env(None, "I need more context.", "partial")),
        ("researcher", env("Here is all the context I have on Q3.")),
    ] * 47
    trip = run.until_trip(steps)
    assert trip is not None and trip["kind"] == "loop_cycle" and run.hop == 4


def test_a_58_copy_chain_stops_by_the_third_copy() -> None:
    text = "Summary: the customer wants a refund for order 1182 because it arrived late."
    run = Run(LoopPolicy())
    trip = run.until_trip((f"agent{i % 3}", env(text)) for i in range(58))
    assert trip is not None and trip["kind"] == "loop_copy" and run.hop <= 3


def test_a_tool_error_loop_stops_at_max_tool_repeats() -> None:
    # Agent -> ToolNode -> agent: each agent step answers with a call, the tool fails.
    run = Run(LoopPolicy())
    run.messages.append(HumanMessage("What is the weather in Paris?", id="h"))
    trip = None
    for i in range(1, 20):
        ai = AIMessage("", tool_calls=[call("weather", {"city": "Paris"}, f"c{i}")], id=f"a{i}")
        trip = run.step("agent", env(None, "calling weather", "partial"), {"messages": [ai]})
        if trip is not None:
            break
        run.messages.append(
            ToolMessage(
                "Error: service unavailable", tool_call_id=f"c{i}", status="error", id=f"t{i}"
            )
        )
    assert trip is not None
    assert trip["kind"] == "tool_repeat" and trip["limit"] == 3 and trip["observed"] == 4
    assert run.hop == 4


def test_a_react_tool_error_loop_within_steps() -> None:
    run = Run(LoopPolicy())
    trip = None
    for i in range(1, 10):
        messages: list[Any] = []
        for j in range(2):
            cid = f"c{i}-{j}"
            messages.append(AIMessage("", tool_calls=[call("fetch", {"url": f"/{i}{j}"}, cid)]))
            messages.append(ToolMessage("timeout", tool_call_id=cid, status="error"))
        messages.append(AIMessage(f"attempt {i} failed"))
        trip = run.step(
            "agent", env(f"attempt {i} failed", status="failed"), {"messages": messages}
        )
        if trip is not None:
            break
    assert trip is not None and trip["kind"] == "tool_errors" and run.hop == 2


def test_a_non_converging_manager_stops_at_max_stalls() -> None:
    run = Run(LoopPolicy(watch=("answer",)))
    steps = []
    for i in range(30):
        steps.append(("manager", env(f"Plan {i}: try approach number {i} with a new angle")))
        steps.append(("worker", env(f"Tried approach {i}; result {i * 7} is inconclusive")))
    trip = run.until_trip(steps)
    assert trip is not None and trip["kind"] == "no_progress" and run.hop == 4
    assert trip["message"].startswith("No progress in watch=('answer',) for 4 steps")


# -- false positives --------------------------------------------------------------------------


def test_pagination_with_changing_results_does_not_trip() -> None:
    run = Run(LoopPolicy())
    run.messages.append(HumanMessage("List every order.", id="h"))
    for i in range(1, 40):
        ai = AIMessage("", tool_calls=[call("next_page", {}, f"c{i}")], id=f"a{i}")
        run.step("fetcher", env(f"{i * 20} orders so far"), {"messages": [ai]})
        run.messages.append(
            ToolMessage(f"orders {i * 20}..{i * 20 + 19}", tool_call_id=f"c{i}", id=f"t{i}")
        )
    assert run.trips == []


def test_polling_inside_a_react_step_does_not_trip() -> None:
    run = Run(LoopPolicy())
    for i in range(1, 30):
        messages: list[Any] = []
        for j in range(3):
            cid = f"c{i}-{j}"
            messages.append(AIMessage("", tool_calls=[call("job_status", {"id": "j1"}, cid)]))
            messages.append(ToolMessage(f"running: {i * 3 + j}% done", tool_call_id=cid))
        run.step("poller", env(f"job at {i * 3 + 2}%"), {"messages": messages})
    assert run.trips == []


def test_a_writer_who_really_improves_does_not_trip() -> None:
    run = Run(LoopPolicy())
    critiques = [
        "Too vague: say who it is for and what it saves.",
        "Name the product and give the setup time.",
        "Mention which code hosts it supports.",
        "Give team sizes and the price.",
        "Add a call to action, like the free trial.",
    ]
    for i, draft in enumerate(DRAFTS):
        run.step("writer", env(draft))
        run.step("critic", env(None, critiques[i % len(critiques)], "partial"))
    assert run.trips == []


def test_two_agents_alternating_with_progress_do_not_trip() -> None:
    run = Run(LoopPolicy(window=64))
    for i in range(60):
        run.step("researcher", env(f"Finding {i}: market {i} grew {i * 3 % 17}% last year."))
        run.step("writer", env(f"Section {i} now covers market {i} and its growth."))
    assert run.trips == []


def test_a_supervisor_routing_with_its_request_covered_does_not_trip() -> None:
    policy = LoopPolicy(fingerprint_per_agent={"supervisor": ("output", "request")})
    run = Run(policy)
    for i in range(20):
        run.messages.append(HumanMessage(f"worker result {i}"))
        run.step("supervisor", env("researcher", "route"))
        run.step("researcher", env(f"result {i}: {i * 11} rows checked"))
    assert run.trips == []


# -- properties --------------------------------------------------------------------------------

steps_strategy = st.lists(
    st.tuples(st.sampled_from(["a", "b", "c"]), st.integers(min_value=0, max_value=40)),
    max_size=60,
)


@settings(max_examples=100, deadline=None)
@given(steps_strategy)
def test_a_sequence_without_repeats_never_trips_the_repeat_detector(
    steps: list[tuple[str, int]],
) -> None:
    unique = list(dict.fromkeys(steps))  # no (agent, output) pair occurs twice
    run = Run(only(max_repeats=2))
    for agent, n in unique:
        assert run.step(agent, env(f"output number {n}")) is None


@settings(max_examples=100, deadline=None)
@given(steps_strategy, st.integers(min_value=2, max_value=5))
def test_the_repeat_detector_trips_exactly_when_the_window_holds_max_repeats(
    steps: list[tuple[str, int]], limit: int
) -> None:
    policy = only(max_repeats=limit, window=8)
    run = Run(policy)
    history: list[tuple[str, int]] = []
    for agent, n in steps:
        trip = run.step(agent, env(f"output number {n}"))
        recent = history[-(policy.window) :]
        expected = recent.count((agent, n)) + 1 >= limit
        assert (trip is not None) == expected
        history.append((agent, n))


@settings(max_examples=100, deadline=None)
@given(steps_strategy)
def test_a_sequence_without_repeated_steps_never_cycles(steps: list[tuple[str, int]]) -> None:
    run = Run(only(max_cycles=2))
    for agent, n in dict.fromkeys(steps):
        assert run.step(agent, env(f"output number {n}")) is None


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.sampled_from(["a", "b", "c", "d"]), min_size=2, max_size=6).filter(
        lambda block: len(set(block)) >= 2
    ),
    st.integers(min_value=2, max_value=4),
)
def test_any_block_of_two_or_more_agents_repeated_max_cycles_times_trips(
    block: list[str], cycles: int
) -> None:
    # Distinct outputs within the block: only the cycle repeats.
    run = Run(only(max_cycles=cycles, window=64))
    steps = [(agent, env(f"step {i} of the block")) for i, agent in enumerate(block)]
    trip = run.until_trip(steps * cycles)
    assert trip is not None and trip["detector"] == "cycle"
    assert run.hop <= len(block) * cycles


@settings(max_examples=100, deadline=None)
@given(st.lists(st.booleans(), max_size=40))
def test_stall_counts_follow_progress(progressed: list[bool]) -> None:
    run = Run(only(watch=("n",)))
    stalls = 0
    for i, made in enumerate(progressed):
        run.step("a", env(), {"n": i} if made else None)
        stalls = stalls // 2 if made else stalls + 1
        assert run.window[-1][7] == stalls


@settings(max_examples=50, deadline=None)
@given(steps_strategy)
def test_detectors_depend_only_on_the_window(steps: list[tuple[str, int]]) -> None:
    # A run with a long history behind the same window gives the same answers.
    policy = LoopPolicy(window=8)
    short, long_ = Run(policy), Run(policy)
    for i in range(100):
        long_.step("filler", env(f"old step {i} with its own words"))
    long_.window = long_.window[-policy.window :]
    filler = [("filler", env(f"older {i} other words")) for i in range(policy.window)]
    for step in filler:
        short.step(*step)
        long_.step(*step)
    for agent, n in steps:
        a = short.step(agent, env(f"output number {n % 7}"))
        b = long_.step(agent, env(f"output number {n % 7}"))
        assert (a and a["detector"]) == (b and b["detector"])
