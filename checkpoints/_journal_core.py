"""The I/O-free core of the journal: task keys, row shapes, and the rules of a call's life.

Each model call is journaled under ``(thread_id, checkpoint_ns, checkpoint_id, task_id,
call_index)`` and each guarded step under the same key without the index (a
:class:`TaskKey`). After a crash LangGraph re-runs the interrupted task with the same key
(FACTS.md), so a call journaled before the crash is not counted again and the re-run's
calls continue after it (:func:`sum_prior_calls`).

A call row goes through at most two states (:data:`CallStatus`): it is written
``reserved`` at its projection before the call is made, then ``settled`` at what it cost
(:func:`settled`) or ``released`` when the call failed before it was billed
(:func:`released`). The spend columns always hold what counts: the projection while
reserved, the cost once settled, zero once released (the projection stays in the
``projected_*`` columns). A reservation never settled (the process died mid-call) keeps
counting at its projection.

What a store writes is built and checked here (:func:`call_row`, :func:`step_row`,
:func:`record_values`) with the same messages for every backend, and
:class:`JournalBase` turns what a guarded step passes (LangGraph's
``runtime.execution_info``, a ``BudgetMeter.calls`` record) into those rows: a store
implements a few small methods that run its SQL and inherits the rest.
"""

from __future__ import annotations

import json
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

from langgraph.runtime import ExecutionInfo

from sanegraph.guards import ConfigurationError
from sanegraph.guards.budget import Spend

from ._values import SPEND_COLUMNS, nonempty_str, optional_str, spend_of, spend_row, whole_number

__all__ = (
    "CALLS_TABLE",
    "CALL_STATUSES",
    "PROJECTED_COLUMNS",
    "RECORD_KEYS",
    "SETTLE_COLUMNS",
    "STEPS_TABLE",
    "TASK_COLUMNS",
    "CallStatus",
    "JournalBase",
    "TaskKey",
    "call_row",
    "check_call_index",
    "paid_of_sums",
    "prior_of_sums",
    "record_values",
    "released",
    "reservation_values",
    "settled",
    "step_row",
    "sum_prior_calls",
    "sum_thread_paid",
    "task_of",
    "task_values",
)

CALLS_TABLE = "sanegraph_model_calls"
"""The journal's table of model calls (one row per call, idempotent key)."""

STEPS_TABLE = "sanegraph_steps"
"""The journal's table of guarded steps (one row per task run, idempotent key)."""

TASK_COLUMNS = ("thread_id", "checkpoint_ns", "checkpoint_id", "task_id")
"""The columns of a task's key, in the order of :func:`task_values`."""

CallStatus = Literal["reserved", "settled", "released"]
"""Where a journaled call is in its life (the ``status`` column):

- ``"reserved"``: journaled before the call was made; counts at its projection until it
  is settled or released (for ever, if its process died mid-call).
- ``"settled"``: the call ended; counts at what it cost. Never changed again.
- ``"released"``: the call failed before it was billed; counts nothing. Never changed
  again (a late settle does not bring it back).
"""

CALL_STATUSES: tuple[CallStatus, ...] = get_args(CallStatus)
"""Every :data:`CallStatus`."""

PROJECTED_COLUMNS = tuple(f"projected_{column}" for column in SPEND_COLUMNS)
"""The columns keeping a call's projection (its reservation), whatever its status."""

SETTLE_COLUMNS = ("provider", "model", "status", *SPEND_COLUMNS, "estimated", "usage_details")
"""What settling a reserved row writes over it (with ``updated_at``); the key, agent,
projection and ``created_at`` stay the reservation's."""

RECORD_KEYS = ("index", "agent", *SPEND_COLUMNS)
"""What :meth:`JournalBase.log_call` needs from a ``BudgetMeter.calls`` record, and
:meth:`JournalBase.reserve_call` from a projection."""


# -- keys -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskKey:
    """Which task run a step or a model call belongs to: the journal's idempotency key.

    Inside a node, build it from ``runtime.execution_info`` with :meth:`of`. A task that
    LangGraph re-runs after a crash keeps its key.

    Example:
        ```python
        def node(state: State, runtime: Runtime) -> dict:
            task = TaskKey.of(runtime.execution_info)
            journal.record_call(task, 0, agent="analyst", spend=spend)
        ```
    """

    thread_id: str
    """The thread (``config["configurable"]["thread_id"]``)."""
    checkpoint_ns: str = ""
    """The task's checkpoint namespace, as ``execution_info.checkpoint_ns`` gives it."""
    checkpoint_id: str
    """The parent checkpoint the task runs from."""
    task_id: str
    """LangGraph's task id."""

    def __post_init__(self) -> None:
        for column in TASK_COLUMNS:
            value = getattr(self, column)
            if not isinstance(value, str) or (not value and column != "checkpoint_ns"):
                raise ConfigurationError(
                    f"TaskKey.{column} must be a non-empty str, got {value!r}. Build the key "
                    "inside a node with TaskKey.of(runtime.execution_info)."
                )

    @classmethod
    def of(cls, info: ExecutionInfo) -> TaskKey:
        """The key of the running task, from ``runtime.execution_info``.

        Raises:
            ConfigurationError: The graph runs without a checkpointer (no thread id).
        """
        if info.thread_id is None:
            raise ConfigurationError(
                "The graph runs without a checkpointer, so its tasks have no thread to "
                "journal under. Compile it with checkpointer=... and pass "
                "config={'configurable': {'thread_id': ...}}."
            )
        return cls(
            thread_id=info.thread_id,
            checkpoint_ns=info.checkpoint_ns,
            checkpoint_id=info.checkpoint_id,
            task_id=info.task_id,
        )

    def call_key(self, call_index: int) -> str:
        """A string naming one model call of this task (e.g. a ``SharedBudget`` key).

        A JSON array ``[thread_id, checkpoint_ns, checkpoint_id, task_id, call_index]``:
        unambiguous whatever the ids contain, and the same for the re-run of the task.
        """
        values = [*task_values(self), check_call_index(call_index)]
        return json.dumps(values, separators=(",", ":"))


def task_values(task: TaskKey) -> tuple[str, str, str, str]:
    """The key's values in :data:`TASK_COLUMNS` order (e.g. for a ``WHERE``)."""
    return (task.thread_id, task.checkpoint_ns, task.checkpoint_id, task.task_id)


def check_call_index(value: Any) -> int:
    """``value`` if it is a usable call index (a whole number >= 0)."""
    return whole_number(
        value, "call_index", remedy="Number the calls of one task 0, 1, 2... in call order."
    )


def task_of(info: ExecutionInfo | TaskKey) -> TaskKey:
    """``info`` if it is a :class:`TaskKey`, else :meth:`TaskKey.of` of it."""
    return info if isinstance(info, TaskKey) else TaskKey.of(info)


# -- rows -------------------------------------------------------------------------------


def call_row(
    task: TaskKey,
    call_index: int,
    *,
    agent: str,
    spend: Spend,
    provider: str | None,
    model: str | None,
    now: float,
    status: CallStatus = "settled",
    projected: Spend | None = None,
    estimated: bool | None = None,
    usage_details: Mapping[str, int] | None = None,
) -> dict[str, Any]:
    """The row of :data:`CALLS_TABLE` for one model call, checked.

    Args:
        task: The task run making the call.
        call_index: The call's number within the task run.
        agent: The guarded agent the call is attributed to.
        spend: What counts: the projection for a reservation, the cost once settled.
        provider: The model provider, if known.
        model: The model name, if known.
        now: The time written to ``created_at`` and ``updated_at``.
        status: ``"reserved"`` or ``"settled"`` (a row is released by :func:`released`).
        projected: The call's projection (None: not known, e.g. a call journaled only
            when it ended).
        estimated: Whether the cost was estimated (the answer carried no usage).
        usage_details: Usage beyond input and output tokens (cache reads...), kept as
            JSON text; NULL when empty.

    Raises:
        ConfigurationError: A value is not usable (negative counts, empty agent...).
    """
    if status not in CALL_STATUSES:
        raise ConfigurationError(
            f"status must be one of {', '.join(CALL_STATUSES)}, got {status!r}."
        )
    counts = spend_row(spend, "spend")
    projection = (
        dict(zip(PROJECTED_COLUMNS, spend_row(projected, "projected").values(), strict=True))
        if projected is not None
        else dict.fromkeys(PROJECTED_COLUMNS)
    )
    return {
        **dict(zip(TASK_COLUMNS, task_values(task), strict=True)),
        "call_index": check_call_index(call_index),
        "agent": nonempty_str(agent, "agent"),
        "provider": optional_str(provider, "provider"),
        "model": optional_str(model, "model"),
        "status": status,
        **counts,
        **projection,
        "estimated": None if estimated is None else int(bool(estimated)),
        "usage_details": json.dumps(dict(usage_details), sort_keys=True) if usage_details else None,
        "created_at": now,
        "updated_at": now,
    }


def step_row(
    task: TaskKey,
    *,
    agent: str,
    hop: int,
    status: str,
    latency_us: int,
    tripped: str | None,
    now: float,
) -> dict[str, Any]:
    """The row of :data:`STEPS_TABLE` for one guarded step, checked.

    Raises:
        ConfigurationError: A value is not usable.
    """
    return {
        **dict(zip(TASK_COLUMNS, task_values(task), strict=True)),
        "agent": nonempty_str(agent, "agent"),
        "hop": whole_number(hop, "hop", remedy="Pass the thread's hop count after the step."),
        "status": nonempty_str(status, "status"),
        "latency_us": whole_number(latency_us, "latency_us", remedy="Pass whole microseconds."),
        "tripped": optional_str(tripped, "tripped"),
        "created_at": now,
    }


def _missing(record: Mapping[str, Any], method: str, what: str) -> None:
    missing = [key for key in RECORD_KEYS if key not in record]
    if missing:
        raise ConfigurationError(
            f"{method} needs {what} with {', '.join(RECORD_KEYS)}; "
            f"this one has no {', '.join(missing)}."
        )


def _spend_in(record: Mapping[str, Any]) -> Spend:
    return Spend(**{column: record[column] for column in SPEND_COLUMNS})


def record_values(record: Mapping[str, Any]) -> dict[str, Any]:
    """What a ``BudgetMeter.calls`` record journals: :func:`call_row`'s arguments for a
    settled call (its ``projected``, ``estimated`` and ``usage_details`` when present).

    Raises:
        ConfigurationError: The record lacks one of :data:`RECORD_KEYS`.
    """
    _missing(record, "log_call", "a BudgetMeter.calls record")
    projected = record.get("projected")
    return {
        "call_index": record["index"],
        "agent": record["agent"],
        "spend": _spend_in(record),
        "provider": record.get("provider"),
        "model": record.get("model"),
        "projected": None if projected is None else Spend.coerce(projected),
        "estimated": record.get("estimated"),
        "usage_details": record.get("usage_details"),
    }


def reservation_values(record: Mapping[str, Any]) -> dict[str, Any]:
    """What a call's projection (``index``, ``agent``, ``model``, ``provider`` and the
    spend columns) journals: :func:`call_row`'s arguments for a reserved call.

    Raises:
        ConfigurationError: The record lacks one of :data:`RECORD_KEYS`.
    """
    _missing(record, "reserve_call", "a projection")
    projection = _spend_in(record)
    return {
        "call_index": record["index"],
        "agent": record["agent"],
        "spend": projection,
        "provider": record.get("provider"),
        "model": record.get("model"),
        "status": "reserved",
        "projected": projection,
    }


# -- a call's life: the rules every store applies ----------------------------------------


def settled(existing: Mapping[str, Any] | None, row: Mapping[str, Any]) -> dict[str, Any] | None:
    """The row settling a call writes, or None when it must change nothing.

    Args:
        existing: The call's journaled row (None: the call was never reserved).
        row: The settled :func:`call_row`.

    Returns:
        ``row`` when nothing was journaled; the reservation with :data:`SETTLE_COLUMNS`
        taken from ``row`` (a provider or model ``row`` lacks stays the reservation's)
        when it was reserved; None when it is already settled or released.
    """
    if existing is None:
        return dict(row)
    if existing["status"] != "reserved":
        return None
    update = {column: row[column] for column in SETTLE_COLUMNS}
    for column in ("provider", "model"):
        if update[column] is None:
            update[column] = existing[column]
    return {**existing, **update, "updated_at": row["updated_at"]}


def released(existing: Mapping[str, Any] | None, *, now: float) -> dict[str, Any] | None:
    """The row releasing a call writes (status ``released``, spend zero), or None when it
    must change nothing: the call was never reserved, or is settled or released already."""
    if existing is None or existing["status"] != "reserved":
        return None
    return {**existing, "status": "released", **dict.fromkeys(SPEND_COLUMNS, 0), "updated_at": now}


def _counts(call: Mapping[str, Any]) -> bool:
    status: str = call.get("status", "settled")  # a row of an old file has none
    return status != "released"


def sum_prior_calls(calls: Iterable[Mapping[str, Any]]) -> tuple[int, Spend]:
    """What a task's journaled calls add up to: ``(next call index, spend)``.

    The next index is the highest ``call_index`` of any status + 1, or 0 when there is
    none (an index a released, reserved or unjournaled call used is never reused); the
    spend is the sum of the calls not released. A SQL store computes the same in one
    statement and reads it with :func:`prior_of_sums`.
    """
    next_index, total = 0, Spend()
    for call in calls:
        next_index = max(next_index, int(call["call_index"]) + 1)
        if _counts(call):
            total = total + spend_of([call[column] for column in SPEND_COLUMNS])
    return next_index, total


def prior_of_sums(values: Sequence[Any]) -> tuple[int, Spend]:
    """``(next call index, spend)`` from an aggregate row: the next index, then the sums
    of :data:`~sanegraph.checkpoints._values.SPEND_COLUMNS` (as :func:`sum_prior_calls`)."""
    next_index, *sums = values
    return int(next_index or 0), spend_of(sums)


def sum_thread_paid(calls: Iterable[Mapping[str, Any]]) -> tuple[Spend, dict[str, Spend]]:
    """What a thread's journaled calls add up to, in total and by agent: the calls not
    released (settled at their cost, reserved at their projection). A SQL store sums
    them by agent in one statement and reads it with :func:`paid_of_sums`."""
    return paid_of_sums(
        (call["agent"], *(call[column] for column in SPEND_COLUMNS))
        for call in calls
        if _counts(call)
    )


def paid_of_sums(rows: Iterable[Sequence[Any]]) -> tuple[Spend, dict[str, Spend]]:
    """``(total, {agent: spend})`` from rows ``(agent, *SPEND_COLUMNS sums)``; an agent
    may come in several rows."""
    total, by_agent = Spend(), dict[str, Spend]()
    for agent, *sums in rows:
        spend = spend_of(sums)
        total = total + spend
        by_agent[agent] = by_agent.get(agent, Spend()) + spend
    return total, by_agent


# -- what every journal store shares -----------------------------------------------------


class JournalBase(ABC):
    """The journal's writes and its ``SpendJournal`` methods, whatever the database.

    A store implements the ``_``-methods below, each one atomic (one transaction): they
    apply :func:`settled` and :func:`released` to a key's row and sum rows as
    :func:`sum_prior_calls` and :func:`sum_thread_paid` do. The values are built and
    checked here before the store sees them.
    """

    @abstractmethod
    def _insert_call(self, row: dict[str, Any]) -> bool:
        """Insert a :func:`call_row` unless its key exists; whether it was inserted."""

    @abstractmethod
    def _settle_call(self, row: dict[str, Any]) -> bool:
        """Write what :func:`settled` says for ``row``'s key; whether it wrote."""

    @abstractmethod
    def _release_call(self, task: TaskKey, call_index: int, *, now: float) -> bool:
        """Write what :func:`released` says for the call's key; whether it wrote."""

    @abstractmethod
    def _upsert_step(self, row: dict[str, Any]) -> bool:
        """Insert or replace a :func:`step_row`; whether its key was new."""

    @abstractmethod
    def _task_calls(self, task: TaskKey) -> tuple[int, Spend]:
        """:func:`sum_prior_calls` of the task's journaled calls."""

    @abstractmethod
    def _thread_paid(self, thread_id: str) -> tuple[Spend, dict[str, Spend]]:
        """:func:`sum_thread_paid` of the thread's journaled calls."""

    # -- writes and reads by TaskKey

    def record_call(
        self,
        task: TaskKey,
        call_index: int,
        *,
        agent: str,
        spend: Spend,
        provider: str | None = None,
        model: str | None = None,
    ) -> bool:
        """Journal one model call of ``task`` at what it cost, once.

        Settles the call's reservation if it has one (:func:`settled`).

        Args:
            task: The task run making the call (:meth:`TaskKey.of`).
            call_index: The call's number within the task run: 0, 1, 2... in call order.
            agent: The guarded agent the call is attributed to.
            spend: What the call cost (tokens and micro-dollars).
            provider: The model provider (e.g. ``"openai"``), if known.
            model: The model name, if known.

        Returns:
            True if the call was journaled now; False if that key was already settled
            (a re-run after a crash) or released: nothing is counted twice.

        Raises:
            ConfigurationError: A value is not usable (negative counts, empty agent...).
        """
        row = call_row(
            task,
            call_index,
            agent=agent,
            spend=spend,
            provider=provider,
            model=model,
            now=time.time(),
        )
        return self._settle_call(row)

    def record_step(
        self,
        task: TaskKey,
        *,
        agent: str,
        hop: int,
        status: str,
        latency_us: int,
        tripped: str | None = None,
    ) -> bool:
        """Journal one guarded step (one task run).

        A re-run of the same task (a retry, a crash recovery) replaces the row: the journal
        shows the step's latest attempt.

        Args:
            task: The task run (:meth:`TaskKey.of`).
            agent: The guarded agent.
            hop: The thread's hop count after this step.
            status: How the step ended (e.g. the envelope status, or ``"tripped"``).
            latency_us: Wall-clock microseconds the step took.
            tripped: The trip kind (``"hop_cap"``, ``"budget"``...) or None.

        Returns:
            True if the step was not journaled before.

        Raises:
            ConfigurationError: A value is not usable.
        """
        row = step_row(
            task,
            agent=agent,
            hop=hop,
            status=status,
            latency_us=latency_us,
            tripped=tripped,
            now=time.time(),
        )
        return self._upsert_step(row)

    def task_spend(self, task: TaskKey) -> Spend:
        """What the journaled model calls of one task run count (released ones do not)."""
        return self._task_calls(task)[1]

    def thread_spend(self, thread_id: str) -> Spend:
        """What the thread's journaled model calls count, all tasks and branches: the
        total of :meth:`thread_paid`."""
        return self._thread_paid(thread_id)[0]

    # -- SpendJournal: what a guarded step calls, keyed by runtime.execution_info

    def thread_paid(self, thread_id: str) -> tuple[Spend, dict[str, Spend]]:
        """What the thread paid, in total and by agent: settled calls at their cost,
        reservations never settled at their projection, released calls not at all."""
        return self._thread_paid(thread_id)

    def prior_calls(self, info: ExecutionInfo | TaskKey) -> tuple[int, Spend]:
        """What earlier attempts of the running task journaled: ``(next call index, spend)``.

        The task is ``TaskKey.of(info)``. The next index is the highest journaled
        ``call_index`` + 1 whatever its status (0 when the task journaled nothing, so
        ``(0, Spend())`` on a first attempt; an index is never reused), and ``spend`` is
        what those calls count (:meth:`task_spend`). A re-run of the task numbers its
        calls from that index, so they add to the earlier attempts' spend.

        Args:
            info: The running task's ``runtime.execution_info`` (or its :class:`TaskKey`).

        Raises:
            ConfigurationError: The graph runs without a checkpointer.
        """
        return self._task_calls(task_of(info))

    def reserve_call(self, info: ExecutionInfo | TaskKey, record: Mapping[str, Any]) -> bool:
        """Journal a call about to be made, at its projection (status ``reserved``).

        Args:
            info: The running task's ``runtime.execution_info`` (or its :class:`TaskKey`).
            record: The projection: ``index`` (the call index), ``agent``,
                ``usd_micros``, ``input_tokens``, ``output_tokens`` and (when set)
                ``model`` and ``provider``.

        Returns:
            True if reserved now; False if the key was journaled already (nothing changes).

        Raises:
            ConfigurationError: The graph runs without a checkpointer, or the record lacks
                a key or holds an unusable value.
        """
        values = reservation_values(record)
        task = task_of(info)
        row = call_row(task, values.pop("call_index"), **values, now=time.time())
        return self._insert_call(row)

    def log_call(self, info: ExecutionInfo | TaskKey, record: Mapping[str, Any]) -> bool:
        """Settle one metered call of the running task at what it cost, once.

        Its reservation becomes ``settled`` with the record's cost; a call never
        reserved is journaled settled; a settled or released call is not changed.

        Args:
            info: The running task's ``runtime.execution_info`` (or its :class:`TaskKey`).
            record: A ``BudgetMeter.calls`` record. Its ``index`` is the call index; its
                ``agent``, spend, ``provider``, ``model``, ``projected``, ``estimated``
                and ``usage_details`` are journaled; other keys are not.

        Returns:
            True if the call was settled now; False if ``(task, index)`` was already
            settled or released.

        Raises:
            ConfigurationError: The graph runs without a checkpointer, or the record lacks
                a key or holds an unusable value.
        """
        values = record_values(record)
        task = task_of(info)
        row = call_row(task, values.pop("call_index"), **values, now=time.time())
        return self._settle_call(row)

    def release_call(self, info: ExecutionInfo | TaskKey, index: int) -> bool:
        """Release the reservation of a call that failed before it was billed: it counts
        nothing from now on (its index stays used).

        Returns:
            True if released now; False if the call was not reserved (never journaled,
            settled, or released already).

        Raises:
            ConfigurationError: The graph runs without a checkpointer, or ``index`` is
                not a call index.
        """
        task = task_of(info)
        return self._release_call(task, check_call_index(index), now=time.time())

    def log_step(
        self,
        info: ExecutionInfo | TaskKey,
        *,
        agent: str,
        hop: int,
        status: str,
        latency_us: int,
        tripped: str | None = None,
    ) -> bool:
        """Journal the running task's guarded step: :meth:`record_step` under
        ``TaskKey.of(info)`` (a re-run replaces the row).

        Returns:
            True if the step was not journaled before.

        Raises:
            ConfigurationError: The graph runs without a checkpointer, or a value is not
                usable.
        """
        return self.record_step(
            task_of(info),
            agent=agent,
            hop=hop,
            status=status,
            latency_us=latency_us,
            tripped=tripped,
        )
