"""The ``guard`` channel's reducer: :func:`fold_ledger`, a pure function.

Parallel steps of one superstep write their deltas at once; LangGraph applies them in
task-path order, and the ledger comes out the same whatever order they finished in
(entries a superstep adds are kept sorted within it). Subgraphs hand back whole
ledgers, folded by what they added since they entered (their ``base``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from .ledger import (
    FANOUT_HOPS,
    FANOUT_INDEX,
    MAX_ENVELOPES,
    MAX_RECENT,
    MAX_TRIPS,
    Ledger,
    StepWrite,
    new_ledger,
)

__all__ = ("fold_ledger",)

_KEYS = len(new_ledger())


def _complete(ledger: Mapping[str, Any]) -> Ledger:
    # A ledger written by an older version, or hand-built in a test, may lack keys.
    if len(ledger) >= _KEYS:
        return dict(ledger)  # type: ignore[return-value]
    full = new_ledger()
    full.update(ledger)  # type: ignore[typeddict-item]
    return full


def _max_counts(current: Mapping[str, int], other: Mapping[str, int]) -> dict[str, int] | None:
    """``current`` raised key by key to ``other``, or None when nothing rises."""
    out: dict[str, int] | None = None
    for key, value in other.items():
        if value > current.get(key, 0):
            if out is None:
                out = dict(current)
            out[key] = value
    return out


def _raise_paid(
    out: Any, total: Mapping[str, int], by_agent: Mapping[str, Mapping[str, int]]
) -> None:
    """Raise the ledger's copy of what the thread paid to a spend log's figures.

    Money paid is a fact that only grows: the copy keeps the highest figure any step
    reported, component by component, so folding is order-free (parallel branches) and a
    ledger that went back in time (a rollback, a fork, a lost write) catches up.
    """
    raised = _max_counts(out["spent"], total)
    if raised is not None:
        out["spent"] = raised
    agents = out["spent_by_agent"]
    for agent, amounts in by_agent.items():
        mine = _max_counts(agents.get(agent, {}), amounts)
        if mine is not None:
            if agents is out["spent_by_agent"]:
                agents = dict(agents)
            agents[agent] = mine
    out["spent_by_agent"] = agents


def _add_counts(into: dict[str, Any], more: Mapping[str, Any], less: Mapping[str, Any]) -> None:
    for key, value in more.items():
        diff = value - less.get(key, 0)
        if diff:
            into[key] = into.get(key, 0) + diff


def _snapshot(ledger: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "hops": ledger["hops"],
        "by_agent": dict(ledger["by_agent"]),
        "latency_us": dict(ledger["latency_us"]),
        "trip_count": ledger["trip_count"],
        "grants": dict(ledger["grants"]),
        "faults": ledger["faults"],
        "envelopes": dict(ledger["envelopes"]),
        "spent": dict(ledger["spent"]),
        "spent_by_agent": {a: dict(v) for a, v in ledger["spent_by_agent"].items()},
    }


def _merge_child(current: Ledger, child: Mapping[str, Any]) -> Ledger:
    """Fold back what a subgraph added to its copy of this ledger."""
    base = child["base"]
    out = _complete(current)
    added_hops = child["hops"] - base["hops"]
    out["hops"] = out["hops"] + added_hops
    by_agent = dict(out["by_agent"])
    _add_counts(by_agent, child["by_agent"], base["by_agent"])
    out["by_agent"] = by_agent
    latency = dict(out["latency_us"])
    _add_counts(latency, child["latency_us"], base["latency_us"])
    out["latency_us"] = latency
    grants = dict(out["grants"])
    _add_counts(grants, child.get("grants", {}), base.get("grants", {}))
    out["grants"] = grants
    # Spend is the thread's, whatever graph level reported it: the highest figure counts.
    _raise_paid(out, child["spent"], child["spent_by_agent"])
    new_warned = [w for w in child["warned"] if w not in out["warned"]]
    if new_warned:
        out["warned"] = [*out["warned"], *new_warned]
    known = base.get("envelopes", {})
    changed = {k: v for k, v in child["envelopes"].items() if known.get(k) != v}
    if changed:
        out["envelopes"] = _put_envelopes(out["envelopes"], changed)
    if added_hops > 0:
        size = out["window_size"]
        out["window"] = (out["window"] + child["window"][-added_hops:])[-size:]
        out["recent"] = (out["recent"] + child["recent"][-added_hops:])[-MAX_RECENT:]
    new_trips = child["trip_count"] - base["trip_count"]
    if new_trips > 0:
        out["trips"] = (out["trips"] + child["trips"][-new_trips:])[-MAX_TRIPS:]
        out["trip_count"] = out["trip_count"] + new_trips
    new_faults = child["faults"] - base.get("faults", 0)
    if new_faults > 0:
        out["faults"] = out["faults"] + new_faults
        out["step_sane"] = False
    if child["status"] != "running" and out["status"] == "running":
        out["status"] = child["status"]
        if child.get("outcome") is not None:
            out["outcome"] = child["outcome"]
    if out["started_at"] is None:
        out["started_at"] = child["started_at"]
    return out


def _fresh(depth: int) -> Ledger:
    # Every ledger carries a base, so a whole ledger without one is recognisably a
    # hand-made replacement (update_state) rather than a subgraph handing one back.
    ledger = new_ledger()
    ledger["depth"] = depth
    ledger["base"] = _snapshot(ledger)
    return ledger


def _put_envelopes(
    current: dict[str, dict[str, Any]], new: Mapping[str, dict[str, Any]]
) -> dict[str, dict[str, Any]]:
    out = dict(current)
    for key, envelope in new.items():
        out.pop(key, None)  # re-insert: the dict's order is the order of last writes
        out[key] = envelope
    if len(out) > MAX_ENVELOPES:
        for key in list(out)[: len(out) - MAX_ENVELOPES]:
            del out[key]
    return out


def _record_key(record: Mapping[str, Any]) -> tuple[Any, ...]:
    confidence = record["confidence"]
    return (
        record["hop"],
        record["key"],
        record["agent"],
        record["status"],
        record["reason"],
        -1.0 if confidence is None else confidence,
    )


def _trip_key(trip: Mapping[str, Any]) -> tuple[Any, ...]:
    return (trip["hop"], trip["kind"], trip["agent"] or "", trip.get("node") or "", trip["message"])


def _insert(
    seq: list[Any], item: Any, group: int, cap: int, key: Callable[[Any], Any] | None = None
) -> list[Any]:
    """Append ``item``, keeping the last ``group`` entries (this superstep's) sorted.

    Parallel steps of one superstep may be folded in any order; sorting them makes the
    ledger the same whatever the order (the property the tests check), and trimming from
    the front then keeps the same entries too.
    """
    n = len(seq)
    if group:
        k = item if key is None else key(item)
        pos = n
        low = n - min(group, n)
        while pos > low and (seq[pos - 1] if key is None else key(seq[pos - 1])) > k:
            pos -= 1
        if pos < n:
            out = [*seq[:pos], item, *seq[pos:]]
            if len(out) > cap:
                del out[: len(out) - cap]
            return out
    # The common case, a step alone in its superstep: append and trim.
    return [*seq[n - cap + 1 :], item] if n >= cap else [*seq, item]


def _apply(current: Ledger, delta: Mapping[str, Any]) -> Ledger:
    out = _complete(current) if current else _fresh(0)
    agent = delta.get("agent")
    g_window, g_recent, g_trips = out["step_group"]
    if "sane" in delta:
        sane = delta["sane"]
        parent = delta.get("parent")
        if not sane:
            out["faults"] += 1
        # All steps of one superstep run from the same parent checkpoint: AND them.
        if parent is not None and parent == out["step_parent"]:
            out["step_sane"] = out["step_sane"] and sane
        else:
            out["step_sane"] = sane
            out["step_parent"] = parent
            g_window = g_recent = g_trips = 0
    if "last_sane" in delta:
        out["last_sane"] = delta["last_sane"]
    now = delta.get("now")
    if now is not None and (out["started_at"] is None or now < out["started_at"]):
        out["started_at"] = now
    if "window_size" in delta:
        out["window_size"] = delta["window_size"]
    if delta.get("reset_window"):
        out["window"] = []
    hop = delta.get("hop")
    if hop and agent is not None:
        out["hops"] += hop
        by_agent = out["by_agent"].copy()
        by_agent[agent] = by_agent.get(agent, 0) + hop
        out["by_agent"] = by_agent
    latency = delta.get("latency")
    if latency is not None and agent is not None:
        # Whole microseconds: integer sums do not depend on the order of parallel steps.
        spent = out["latency_us"].copy()
        spent[agent] = spent.get(agent, 0) + round(latency * 1e6)
        out["latency_us"] = spent
    spend = delta.get("spend")
    if spend:
        total = out["spent"].copy()
        _add_counts(total, spend, {})
        out["spent"] = total
        if agent is not None:
            per_agent = out["spent_by_agent"].copy()
            mine = dict(per_agent.get(agent, {}))
            _add_counts(mine, spend, {})
            per_agent[agent] = mine
            out["spent_by_agent"] = per_agent
    paid = delta.get("paid")
    if paid:
        _raise_paid(out, paid.get("total") or {}, paid.get("by_agent") or {})
    warn = delta.get("warn")
    if warn:
        fresh = [w for w in warn if w not in out["warned"]]
        if fresh:
            # Sorted: parallel steps may warn in any order; the ledger must not care.
            out["warned"] = sorted({*out["warned"], *fresh})
    entry = delta.get("entry")
    if entry is None:
        fp = delta.get("fp")
        if fp is not None and agent is not None:
            entry = [agent, fp]
    if entry is not None:
        out["window"] = _insert(out["window"], entry, g_window, out["window_size"])
        g_window += 1
    envelope = delta.get("envelope")
    if envelope is not None:
        key, value = envelope
        envelopes = out["envelopes"]
        size = len(envelopes)
        if key in envelopes:
            # The newest key written again (an agent running alone in a loop) keeps the
            # order of last writes as it is: no need to move it to the end.
            in_place = size <= MAX_ENVELOPES and key == next(reversed(envelopes))
        else:
            in_place = size < MAX_ENVELOPES
        if in_place:
            envelopes = envelopes.copy()
            envelopes[key] = value
            out["envelopes"] = envelopes
        else:
            out["envelopes"] = _put_envelopes(envelopes, {key: value})
    record = delta.get("record")
    if record is not None:
        out["recent"] = _insert(out["recent"], record, g_recent, MAX_RECENT, _record_key)
        g_recent += 1
    if "status" in delta:
        out["status"] = delta["status"]
    if "outcome" in delta:
        out["outcome"] = delta["outcome"]
    trip = delta.get("trip")
    if trip is not None:
        out["trips"] = _insert(out["trips"], trip, g_trips, MAX_TRIPS, _trip_key)
        g_trips += 1
        out["trip_count"] += 1
        if out["status"] == "running":
            out["status"] = "tripped"
    out["step_group"] = [g_window, g_recent, g_trips]
    if "grant" in delta:
        grants = dict(out["grants"])
        _add_counts(grants, delta["grant"], {})
        out["grants"] = grants
    return out


def _adopt(update: Mapping[str, Any], depth: int) -> Ledger:
    """A parent's ledger entering a subgraph at ``depth``: taken, and remembered as the
    base against which what the subgraph adds is told apart."""
    adopted = _complete(update)
    fanout = adopted.pop(FANOUT_HOPS, None)  # type: ignore[misc]
    if fanout is not None:
        index = adopted["hops"] - fanout
    else:
        index = (update.get("base") or {}).get(FANOUT_INDEX)
    adopted["depth"] = depth
    base = _snapshot(adopted)
    if index is not None:
        # A branch of a fan-out (or a subgraph inside one): its steps count their
        # siblings' live hops past the ones guard_sends charged (see guards/_scope.py).
        base[FANOUT_INDEX] = index
    adopted["base"] = base
    return adopted


def fold_ledger(current: Ledger | None, update: Any) -> Ledger:
    """The ``guard`` channel's reducer: fold one write into the ledger.

    A pure function of its two arguments: what it must know travels in the write (a
    :class:`~sanegraph.guards.ledger.StepWrite` remembers its last fold, so folding it
    into the same ledger again returns the same result without computing it).
    Accepts a :class:`~sanegraph.guards.ledger.StepDelta`, a list of deltas, or a whole
    :class:`~sanegraph.guards.ledger.Ledger`. A whole ledger carries the nesting level it
    was made at (``depth``) and, when it came from a graph run (not by hand), the
    ``base`` it started from; against the channel's own ledger:

    - a deeper one is a subgraph handing its ledger back: only what it added since its
      ``base`` is folded in (so parallel subgraphs add up, and caps stay global);
    - a shallower one, or any into an empty channel, is a parent's ledger entering a
      subgraph: adopted one level down, and remembered as the ``base``;
    - one of the same level is a previous result passed in again: ignored;
    - one without ``base`` is a hand-made replacement (``update_state``): it replaces
      the channel's ledger. To replace with a ledger read from state, write
      ``langgraph.types.Overwrite(ledger)``.

    A guarded graph's root ledger is made by its first write (``GuardedStateGraph``
    writes one for every new input), so a subgraph always enters with its parent's.

    Args:
        current: The channel's value (``{}`` before the first write).
        update: The write.

    Returns:
        A new ledger; ``current`` and ``update`` are never mutated.
    """
    if not update:
        return current if current else {}  # type: ignore[return-value,typeddict-item]
    if type(update) is list:
        out: Ledger = current if current is not None else {}  # type: ignore[typeddict-item]
        for item in update:
            out = fold_ledger(out, item)
        return out
    if type(update) is StepWrite:
        folded = update.folded
        if folded is not None and folded[0] is current:
            return folded[1]  # type: ignore[no-any-return]
        result = _apply(current or {}, update)  # type: ignore[arg-type]
        update.folded = (current, result)
        return result
    if "v" not in update:
        return _apply(current or {}, update)  # type: ignore[arg-type]
    if not update.get("base"):
        return _complete(update)  # a hand-made ledger (update_state) replaces
    there = update.get("depth", 0)
    if not current:
        return _adopt(update, there + 1)
    here = current.get("depth", 0)
    if there > here:
        # A subgraph handing its ledger back: fold in only what it added.
        return _merge_child(current, update)
    if there < here:
        # Entering a subgraph that kept its state from an earlier call.
        return _adopt(update, here)
    # The same level's own ledger coming back as input (a previous result passed to
    # invoke again): the channel already holds the truth.
    return current
