"""The loop detectors: pure functions over window entries, and the trips they make.

:func:`check_loops` runs every enabled detector for a new step. Every detector scans the
window once: O(window) per step, whatever the thread's history.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from operator import itemgetter
from typing import Any, NamedTuple

from ..trips import Trip, make_trip
from ._steps import tool_part
from .policy import LoopDetector, LoopPolicy
from .window import AGENT, FP, HOP, OUT, SIM, SIZE, STALL, TEXT, TOOLS

__all__ = ("check_loops",)

MAX_STEPS = 8
"""Steps shown in a trip."""

Row = Sequence[Any]
Call = tuple[str, str, str, int, str]
"""A tool call seen in the window: ``(name, args, result, hop, agent)``."""

_KEY = itemgetter(AGENT, FP)


# -- detectors ---------------------------------------------------------------------------


def _distinct(rows: list[Row], entry: Row) -> list[Row]:
    """The matching steps at distinct hops (the newest of each), then the new entry."""
    by_hop: dict[int, Row] = {}
    for e in rows:
        if e[HOP] != entry[HOP]:
            by_hop.pop(e[HOP], None)
            by_hop[e[HOP]] = e
    return [*by_hop.values(), entry]


def repeats(rows: list[Row], entry: Row, limit: int) -> list[Row]:
    """The steps of the entry's agent with its fingerprint, if there are ``limit``."""
    agent, fp = entry[AGENT], entry[FP]
    if not fp:
        return []
    same = _distinct([e for e in rows if e[FP] == fp and e[AGENT] == agent], entry)
    return same if len(same) >= limit else []


def copies(rows: list[Row], entry: Row, limit: int) -> list[Row]:
    """The steps with the entry's result, if there are ``limit`` from 2+ agents."""
    out = entry[OUT]
    if not out:
        return []
    same = _distinct([e for e in rows if e[OUT] == out], entry)
    if len(same) >= limit and len({e[AGENT] for e in same}) >= 2:
        return same
    return []


def _periodic(rev: list[tuple[str, str]], period: int, span: int) -> bool:
    return all(rev[i] == rev[i + period] for i in range(span - period))


def _z_function(seq: list[tuple[str, str]]) -> list[int]:
    """``z[i]``: the length of the longest common prefix of ``seq`` and ``seq[i:]``."""
    n = len(seq)
    z = [0] * n
    left = right = 0
    for i in range(1, n):
        if i < right:
            z[i] = min(right - i, z[i - left])
        while i + z[i] < n and seq[z[i]] == seq[i + z[i]]:
            z[i] += 1
        if i + z[i] > right:
            left, right = i, i + z[i]
    return z


def cycle_period(rows: list[Row], entry: Row, cycles: int) -> int:
    """The period of a cycle of 2+ agents repeated ``cycles`` times up to the entry, or 0."""
    rev = [(entry[AGENT], entry[FP])]
    rev.extend(map(_KEY, reversed(rows)))
    n = len(rev)
    first = rev[0]
    candidates = [p for p in range(2, n // cycles + 1) if rev[p] == first]
    if not candidates:
        return 0
    # A block of steps of one agent is the repeat detectors' business.
    single = next((i for i, (a, _) in enumerate(rev) if a != first[0]), n)
    candidates = [p for p in candidates if p > single]
    if len(candidates) > 4:
        # Many candidates (a very repetitive window): one O(window) pass checks them all.
        z = _z_function(rev)
        passing = [p for p in candidates if z[p] >= p * (cycles - 1)]
    else:
        passing = [p for p in candidates if _periodic(rev, p, p * cycles)]
    for p in passing:
        if any(fp for _, fp in rev[:p]):
            return p
    return 0


def _tool_key(tools: str) -> str:
    return tool_part(tools.split()) if tools else ""


def near_duplicates(
    rows: list[Row],
    entry: Row,
    *,
    similar: Callable[[str, str], float],
    floor: float,
    limit: int,
    same_tools: bool,
) -> list[Row]:
    """``limit`` steps of the entry's agent, all pairwise similar, or ``[]``.

    Greedy, newest first: every member must be similar to every other, so a text that
    keeps drifting (a draft being improved) falls out of the group.
    """
    sig = entry[SIM]
    if not sig:
        return []
    agent = entry[AGENT]
    tools = _tool_key(entry[TOOLS]) if same_tools else None
    group = [entry]
    hops = {entry[HOP]}
    for e in reversed(rows):
        if e[AGENT] != agent or not e[SIM] or e[HOP] in hops:
            continue
        other = e[SIM]
        if similar(sig, other) < floor:
            continue
        if tools is not None and _tool_key(e[TOOLS]) != tools:
            continue
        if any(similar(other, m[SIM]) < floor for m in group[1:]):
            continue
        group.append(e)
        hops.add(e[HOP])
        if len(group) >= limit:
            return group[::-1]
    return []


def _calls(rows: list[Row], entry: Row) -> list[Call]:
    """Every tool call in the window, once, in the order of their answers."""
    calls: dict[str, Call] = {}
    anonymous = 0
    for e in [*rows, entry]:
        if not e[TOOLS]:
            continue
        for token in e[TOOLS].split():
            fields = token.split(":")
            if len(fields) != 4:
                continue
            name, args, result, call = fields
            if not call:
                anonymous += 1
                call = f"#{anonymous}"
            known = calls.get(call)
            if known is not None:
                if not result or known[2]:
                    continue
                del calls[call]  # answered now: it takes its place at the answer
            calls[call] = (name, args, result, e[HOP], e[AGENT])
    return list(calls.values())


def _mine(entry: Row) -> list[list[str]]:
    return [t for t in (token.split(":") for token in entry[TOOLS].split()) if len(t) == 4]


def tool_repeats(rows: list[Row], entry: Row, limit: int) -> tuple[str, list[Call]] | None:
    """A tool the entry called with the same arguments and result more than ``limit``
    times, and those calls; a pending call counts as answering like the latest answer."""
    mine = _mine(entry)
    if not mine:
        return None
    calls = _calls(rows, entry)
    for name, args in dict.fromkeys((t[0], t[1]) for t in mine):
        same = [c for c in calls if c[0] == name and c[1] == args]
        latest = next((c[2] for c in reversed(same) if c[2]), "")
        same = [c for c in same if c[2] == latest or not c[2]]
        if len(same) > limit:
            return name, same
    return None


def tool_errors(rows: list[Row], entry: Row, limit: int) -> tuple[str, list[Call]] | None:
    """A tool that answered the entry with an error, and more than ``limit`` times in a row."""
    failed = [t[0] for t in _mine(entry) if t[2].startswith("!")]
    if not failed:
        return None
    calls = _calls(rows, entry)
    for name in dict.fromkeys(failed):
        answered = [c for c in calls if c[0] == name and c[2]]
        streak = 0
        for c in reversed(answered):
            if not c[2].startswith("!"):
                break
            streak += 1
        if streak > limit:
            return name, answered[-streak:]
    return None


# -- showing steps -----------------------------------------------------------------------


def show(rows: Sequence[Row]) -> list[dict[str, Any]]:
    """The trip's ``steps``: the last few of ``rows``."""
    return [
        {"agent": e[AGENT], "hop": e[HOP], "fp": e[FP], "text": e[TEXT]} for e in rows[-MAX_STEPS:]
    ]


def show_calls(calls: list[Call]) -> list[dict[str, Any]]:
    """The trip's ``steps`` for tool calls: ``fp`` is ``name:args:result``."""
    return [
        {
            "agent": agent,
            "hop": hop,
            "fp": f"{name}:{args}:{result}",
            "text": f"{name} -> {'error' if result.startswith('!') else result or 'pending'}",
        }
        for name, args, result, hop, agent in calls[-MAX_STEPS:]
    ]


def hops_of(hops: Sequence[int]) -> str:
    """``"hop 3"`` or ``"hops 1, 3, 5"`` (distinct, the last few)."""
    shown = list(dict.fromkeys(str(h) for h in hops))[-MAX_STEPS:]
    return ("hop " if len(shown) == 1 else "hops ") + ", ".join(shown)


# -- trips ------------------------------------------------------------------------------


def _trip(
    kind: str,
    detector: LoopDetector,
    message: str,
    *,
    limit: int,
    observed: int,
    agent: str,
    hops: int,
    scope: str,
    steps: list[dict[str, Any]],
) -> Trip:
    trip = make_trip(
        kind, message, limit=limit, observed=observed, agent=agent, hops=hops, scope=scope
    )
    extra: dict[str, Any] = trip  # type: ignore[assignment]
    extra["detector"] = detector
    extra["steps"] = steps
    return trip


def _fresh(window: Sequence[Row], fp: str) -> bool:
    """Whether no entry of the window has the fingerprint ``fp`` (``""``: never fresh).

    Entries of any layout have the fingerprint at index ``FP`` (``[agent, fp]`` with loop
    detection off), so the window is scanned as it is.
    """
    if not fp or type(fp) is not str:
        return False
    try:
        # A plain loop: cheaper than ``fp not in map(itemgetter(FP), window)``.
        for e in window:
            if e[FP] == fp:
                return False
    except (LookupError, TypeError):  # a malformed entry: take the full path
        return False
    return True


class _Check(NamedTuple):
    """One step's check: the window's rows, the new entry, and who and where it is."""

    rows: list[Row]
    entry: Row
    policy: LoopPolicy
    agent: str
    hops: int
    fresh: bool
    """Whether no step in the window has the entry's fingerprint."""

    def trip(
        self,
        kind: str,
        detector: LoopDetector,
        message: str,
        *,
        limit: int,
        observed: int,
        scope: str,
        steps: list[dict[str, Any]],
    ) -> Trip:
        return _trip(
            kind,
            detector,
            message,
            limit=limit,
            observed=observed,
            agent=self.agent,
            hops=self.hops,
            scope=scope,
            steps=steps,
        )


def _tool_repeat(c: _Check) -> Trip | None:
    limit = c.policy.max_tool_repeats
    if limit is None or not c.entry[TOOLS]:
        return None
    found = tool_repeats(c.rows, c.entry, limit)
    if found is None:
        return None
    name, calls = found
    return c.trip(
        "tool_repeat",
        "tool_repeat",
        f"Tool {name!r} was called {len(calls)} times with the same arguments and the "
        f"same result, more than LoopPolicy.max_tool_repeats={limit} (agent={c.agent!r}, "
        f"{hops_of([call[3] for call in calls])}). Have the agent use the result it has "
        "or change the arguments; raise max_tool_repeats if the tool is meant to be "
        "polled.",
        limit=limit,
        observed=len(calls),
        scope="thread",
        steps=show_calls(calls),
    )


def _tool_errors(c: _Check) -> Trip | None:
    limit = c.policy.max_tool_errors
    if limit is None or not c.entry[TOOLS]:
        return None
    found = tool_errors(c.rows, c.entry, limit)
    if found is None:
        return None
    name, calls = found
    return c.trip(
        "tool_errors",
        "tool_errors",
        f"Tool {name!r} returned an error {len(calls)} times in a row, more than "
        f"LoopPolicy.max_tool_errors={limit} (agent={c.agent!r}, "
        f"{hops_of([call[3] for call in calls])}). Fix the tool or what the agent "
        "passes it; raise max_tool_errors if retries are expected.",
        limit=limit,
        observed=len(calls),
        scope="thread",
        steps=show_calls(calls),
    )


def _repeat(c: _Check) -> Trip | None:
    limit = c.policy.max_repeats
    if limit is None:
        return None
    entry, agent = c.entry, c.agent
    same = ([entry] if limit <= 1 else []) if c.fresh else repeats(c.rows, entry, limit)
    if not same:
        return None
    return c.trip(
        "loop_repeat",
        "repeat",
        f"{agent!r} repeated the same action {len(same)} times, reaching "
        f"LoopPolicy.max_repeats={limit} ({hops_of([e[HOP] for e in same])}: "
        f"{entry[TEXT]!r}). Let the task owner re-plan; if the repetition is legitimate, "
        f"fingerprint more of the step with LoopPolicy.fingerprint_per_agent"
        f"[{agent!r}] (e.g. ('output', 'request')) or raise max_repeats.",
        limit=limit,
        observed=len(same),
        scope="agent",
        steps=show(same),
    )


def _copy(c: _Check) -> Trip | None:
    limit = c.policy.max_copies
    if limit is None or not c.entry[OUT]:
        return None
    same = copies(c.rows, c.entry, limit)
    if not same:
        return None
    agents = ", ".join(repr(a) for a in dict.fromkeys(e[AGENT] for e in same))
    return c.trip(
        "loop_copy",
        "copy",
        f"The same result was passed on unchanged {len(same)} times (by {agents}), "
        f"reaching LoopPolicy.max_copies={limit} "
        f"({hops_of([e[HOP] for e in same])}: {c.entry[TEXT]!r}). Have each agent add "
        "to the result or end the run; raise max_copies if agents are meant to hand "
        "it on as is.",
        limit=limit,
        observed=len(same),
        scope="thread",
        steps=show(same),
    )


def _cycle(c: _Check) -> Trip | None:
    limit = c.policy.max_cycles
    if limit is None or c.fresh:
        return None
    rows = c.rows
    period = cycle_period(rows, c.entry, limit)
    if not period:
        return None
    cycle = [*rows[len(rows) - period * limit + 1 :], c.entry]
    path = " -> ".join(e[AGENT] for e in cycle[-period:])
    return c.trip(
        "loop_cycle",
        "cycle",
        f"The cycle {path} repeated {limit} times with the same content, reaching "
        f"LoopPolicy.max_cycles={limit} ({hops_of([e[HOP] for e in cycle])}). "
        "Let the task owner break the cycle, or raise max_cycles.",
        limit=limit,
        observed=limit,
        scope="thread",
        steps=show(cycle),
    )


def _near_duplicate(c: _Check) -> Trip | None:
    policy = c.policy
    limit = policy.max_near_duplicates
    if limit is None or not c.entry[SIM]:
        return None
    group = near_duplicates(
        c.rows,
        c.entry,
        similar=policy.similarity.similarity,
        floor=policy.min_similarity,
        limit=limit,
        same_tools="tool_calls" in policy.parts_for(c.agent),
    )
    if not group:
        return None
    return c.trip(
        "loop_near_duplicate",
        "near_duplicate",
        f"{c.agent!r} said nearly the same thing {len(group)} times (similarity >= "
        f"{policy.min_similarity:g}), reaching LoopPolicy.max_near_duplicates="
        f"{limit} ({hops_of([e[HOP] for e in group])}: {c.entry[TEXT]!r}). Let the "
        "task owner re-plan; raise min_similarity if different outputs are taken "
        "for rewordings.",
        limit=limit,
        observed=len(group),
        scope="agent",
        steps=show(group),
    )


def _no_progress(c: _Check) -> Trip | None:
    policy = c.policy
    limit = policy.max_stalls
    stalls = c.entry[STALL]
    if limit is None or stalls < limit:
        return None
    stalled = [*c.rows[-(stalls - 1) :], c.entry] if stalls > 1 else [c.entry]
    watched = f"watch={policy.watch}" if policy.watch else "the envelopes' results"
    return c.trip(
        "no_progress",
        "no_progress",
        f"No progress in {watched} for {stalls} steps, reaching "
        f"LoopPolicy.max_stalls={limit} (agent={c.agent!r}, "
        f"{hops_of([e[HOP] for e in stalled])}). Let the task owner re-plan or "
        "finish; name the state keys that show progress in LoopPolicy.watch, or raise "
        "max_stalls.",
        limit=limit,
        observed=stalls,
        scope="thread",
        steps=show(stalled),
    )


_DETECTORS: tuple[Callable[[_Check], Trip | None], ...] = (
    _tool_repeat,
    _tool_errors,
    _repeat,
    _copy,
    _cycle,
    _near_duplicate,
    _no_progress,
)
"""The detectors, in the order they run: the first trip wins."""


def _check(
    window: Sequence[Row], entry: Row, policy: LoopPolicy, agent: str, hops: int
) -> Trip | None:
    """The body of :func:`check_loops`: every enabled detector, in order."""
    # A step whose fingerprint no step in the window has repeats nothing and closes no
    # cycle: both need an earlier step with its agent and fingerprint.
    fresh = _fresh(window, entry[FP])
    limit = policy.max_stalls
    if (
        fresh
        and not (entry[TOOLS] or entry[OUT] or entry[SIM])
        and (limit is None or entry[STALL] < limit)
        and (policy.max_repeats is None or policy.max_repeats > 1)
    ):
        # The common step: a new action, no tool calls, no result long enough to be a
        # copy, no text to be a near-duplicate, few stalls. No detector can fire.
        return None
    if window and min(map(len, window)) >= SIZE:
        rows: list[Row] = window if type(window) is list else list(window)
    else:
        rows = [e for e in window if len(e) >= SIZE]
    check = _Check(rows, entry, policy, agent, hops, fresh)
    for detector in _DETECTORS:
        trip = detector(check)
        if trip is not None:
            return trip
    return None


def check_loops(
    window: Sequence[Sequence[Any]],
    entry: Sequence[Any],
    *,
    policy: LoopPolicy,
    agent: str,
    hops: int,
) -> Trip | None:
    """Run every enabled detector for a new step; return the first trip, or None.

    The detectors run in this order: tool repeat, tool errors, repeat, copy, cycle,
    near-duplicate, no progress. Each scans the window once: the cost per step is
    O(window), not O(history). Entries of another layout (e.g. written by an older
    version) are skipped.

    Args:
        window: The ledger's window before this step, oldest first.
        entry: The step's entry, from :func:`step_entry`.
        policy: The loop policy.
        agent: The agent whose step this is.
        hops: The step's hop, recorded in the trip.

    Returns:
        A trip with the extra keys ``detector`` (a :data:`LoopDetector`) and ``steps``
        (the repeating steps, oldest first, as ``{"agent", "hop", "fp", "text"}``), or
        None.

    Example:
        ```python
        trip = check_loops(ledger["window"], entry, policy=policy, agent="analyst", hops=5)
        if trip is not None:
            print(trip["detector"], [s["hop"] for s in trip["steps"]])
        ```
    """
    return _check(window, entry, policy, agent, hops)
