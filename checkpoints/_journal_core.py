"""The I/O-free core of the journal: task keys, row shapes, and what a task's calls add up to.

Each model call is journaled under ``(thread_id, checkpoint_ns, checkpoint_id, task_id,
call_index)`` and each guarded step under the same key without the index (a
:class:`TaskKey`). After a crash LangGraph re-runs the interrupted task with the same key
(FACTS.md), so a call journaled before the crash is not counted again and the re-run's
calls continue after it (:func:`sum_prior_calls`).

What a store writes is built and checked here (:func:`call_row`, :func:`step_row`,
:func:`record_values`) with the same messages for every backend, and
:class:`JournalBase` turns what a guarded step passes (LangGraph's
``runtime.execution_info``, a ``BudgetMeter.calls`` record) into those rows: a store
implements three small methods that run its SQL and inherits the rest.
"""

from __future__ import annotations

import json
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from langgraph.runtime import ExecutionInfo

from sanegraph.guards import ConfigurationError
from sanegraph.guards.budget import Spend

from ._values import SPEND_COLUMNS, nonempty_str, optional_str, spend_of, spend_row, whole_number

__all__ = (
    "CALLS_TABLE",
    "RECORD_KEYS",
    "STEPS_TABLE",
    "TASK_COLUMNS",
    "JournalBase",
    "TaskKey",
    "call_row",
    "check_call_index",
    "prior_of_sums",
    "record_values",
    "step_row",
    "sum_prior_calls",
    "task_values",
)

CALLS_TABLE = "sanegraph_model_calls"
"""The journal's table of model calls (one row per call, idempotent key)."""

STEPS_TABLE = "sanegraph_steps"
"""The journal's table of guarded steps (one row per task run, idempotent key)."""

TASK_COLUMNS = ("thread_id", "checkpoint_ns", "checkpoint_id", "task_id")
"""The columns of a task's key, in the order of :func:`task_values`."""

RECORD_KEYS = ("index", "agent", *SPEND_COLUMNS)
"""What :meth:`JournalBase.log_call` needs from a ``BudgetMeter.calls`` record."""


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
) -> dict[str, Any]:
    """The row of :data:`CALLS_TABLE` for one model call, checked.

    Raises:
        ConfigurationError: A value is not usable (negative counts, empty agent...).
    """
    return {
        **dict(zip(TASK_COLUMNS, task_values(task), strict=True)),
        "call_index": check_call_index(call_index),
        "agent": nonempty_str(agent, "agent"),
        "provider": optional_str(provider, "provider"),
        "model": optional_str(model, "model"),
        **spend_row(spend, "spend"),
        "created_at": now,
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


def record_values(record: Mapping[str, Any]) -> dict[str, Any]:
    """What a ``BudgetMeter.calls`` record journals: :func:`call_row`'s arguments.

    Raises:
        ConfigurationError: The record lacks one of :data:`RECORD_KEYS`.
    """
    missing = [key for key in RECORD_KEYS if key not in record]
    if missing:
        raise ConfigurationError(
            f"log_call needs a BudgetMeter.calls record with {', '.join(RECORD_KEYS)}; "
            f"this one has no {', '.join(missing)}."
        )
    return {
        "call_index": record["index"],
        "agent": record["agent"],
        "spend": Spend(**{column: record[column] for column in SPEND_COLUMNS}),
        "provider": record.get("provider"),
        "model": record.get("model"),
    }


# -- a task's earlier calls -------------------------------------------------------------


def sum_prior_calls(calls: Iterable[Mapping[str, Any]]) -> tuple[int, Spend]:
    """What a task's journaled calls add up to: ``(next call index, spend)``.

    The next index is the highest ``call_index`` + 1, or 0 when there is none (an index a
    failed call left unjournaled is not reused); the spend is the sum of the calls'.
    A SQL store computes the same in one statement and reads it with
    :func:`prior_of_sums`.
    """
    next_index, total = 0, Spend()
    for call in calls:
        next_index = max(next_index, int(call["call_index"]) + 1)
        total = total + spend_of([call[column] for column in SPEND_COLUMNS])
    return next_index, total


def prior_of_sums(values: Sequence[Any]) -> tuple[int, Spend]:
    """``(next call index, spend)`` from an aggregate row: the next index, then the sums
    of :data:`~sanegraph.checkpoints._values.SPEND_COLUMNS` (as :func:`sum_prior_calls`)."""
    next_index, *sums = values
    return int(next_index or 0), spend_of(sums)


# -- what every journal store shares -----------------------------------------------------


class JournalBase(ABC):
    """The journal's writes and its ``SpendJournal`` methods, whatever the database.

    A store implements :meth:`_insert_call`, :meth:`_upsert_step` and :meth:`_task_calls`
    (and its reads); the values are built and checked here before the store sees them.
    """

    @abstractmethod
    def _insert_call(self, row: dict[str, Any]) -> bool:
        """Insert a :func:`call_row` unless its key exists; whether it was inserted."""

    @abstractmethod
    def _upsert_step(self, row: dict[str, Any]) -> bool:
        """Insert or replace a :func:`step_row`; whether its key was new."""

    @abstractmethod
    def _task_calls(self, task: TaskKey) -> tuple[int, Spend]:
        """:func:`sum_prior_calls` of the task's journaled calls."""

    # -- writes

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
        """Journal one model call of ``task``, once.

        Args:
            task: The task run making the call (:meth:`TaskKey.of`).
            call_index: The call's number within the task run: 0, 1, 2... in call order.
            agent: The guarded agent the call is attributed to.
            spend: What the call cost (tokens and micro-dollars).
            provider: The model provider (e.g. ``"openai"``), if known.
            model: The model name, if known.

        Returns:
            True if the call was journaled now; False if that key was already journaled
            (a re-run after a crash): the first record stands and nothing is counted twice.

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
        return self._insert_call(row)

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
        """What the journaled model calls of one task run cost."""
        return self._task_calls(task)[1]

    # -- SpendJournal: what a guarded step calls, keyed by runtime.execution_info

    def prior_calls(self, info: ExecutionInfo) -> tuple[int, Spend]:
        """What earlier attempts of the running task journaled: ``(next call index, spend)``.

        The task is ``TaskKey.of(info)``. The next index is the highest journaled
        ``call_index`` + 1 (0 when the task journaled nothing, so ``(0, Spend())`` on a
        first attempt; an index a failed call left unjournaled is not reused), and
        ``spend`` is what those calls cost (:meth:`task_spend`). A re-run of the task
        numbers its calls from that index, so they add to the earlier attempts' spend.

        Args:
            info: The running task's ``runtime.execution_info``.

        Raises:
            ConfigurationError: The graph runs without a checkpointer.
        """
        return self._task_calls(TaskKey.of(info))

    def log_call(self, info: ExecutionInfo, record: Mapping[str, Any]) -> bool:
        """Journal one metered call of the running task, once (see :meth:`record_call`).

        Args:
            info: The running task's ``runtime.execution_info``.
            record: A ``BudgetMeter.calls`` record. Its ``index`` is the call index; its
                ``agent``, ``usd_micros``, ``input_tokens``, ``output_tokens`` and (when
                set) ``provider`` and ``model`` are journaled; other keys are not.

        Returns:
            True if the call was journaled now; False if ``(task, index)`` already was.

        Raises:
            ConfigurationError: The graph runs without a checkpointer, or the record lacks
                a key or holds an unusable value.
        """
        values = record_values(record)
        return self.record_call(TaskKey.of(info), values.pop("call_index"), **values)

    def log_step(
        self,
        info: ExecutionInfo,
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
            TaskKey.of(info),
            agent=agent,
            hop=hop,
            status=status,
            latency_us=latency_us,
            tripped=tripped,
        )
