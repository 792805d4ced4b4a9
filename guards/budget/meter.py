"""The budget meter: the LangChain callback handler that applies a :class:`Budget` to the
model calls of one guarded step.

A sync handler with ``raise_error = True`` and ``run_inline = True``: raising in
``on_chat_model_start`` aborts the call before the model runs, for ``invoke`` and
``ainvoke`` alike (an async handler could not stop a sync call).

Before each call (``on_chat_model_start``) it reads the provider, model and ``max_tokens``
from the run metadata LangChain adds for every chat model (``ls_provider``,
``ls_model_name``, ``ls_max_tokens``; falling back to ``invocation_params``), counts the
input tokens with ``count_tokens_approximately`` (messages, plus tool schemas found in
``invocation_params["tools"]``; see :class:`~.tokens.TokenCounter`) and projects the call
as ``input tokens + max_tokens`` (input only when the model sets no ``max_tokens``: then
the output of the last allowed call can overshoot a limit). It runs :func:`check_spend`
(skipped when every limit stays below its warning threshold, where it would neither trip
nor warn) against everything spent so far (``spent_before`` plus this step's calls, ended
and in flight, plus what steps running alongside it spent), then reserves the projection
in ``pool`` if one is set. Either refusing raises :class:`BudgetExceeded` carrying the trip
record; the first trip is also kept in :attr:`BudgetMeter.trip` (an agent may swallow the
exception).

After each call (``on_llm_end``) it reads ``usage_metadata`` from the answer (estimating
it, or refusing the model, per ``Budget.no_usage``), prices it, adds it to
:attr:`BudgetMeter.spent`, commits the pool reservation and calls ``on_call`` with the
call's record. A failed call (``on_llm_error``) releases its reservation.

Call keys: ``"<key>|<index>"``, where ``index`` counts the step's calls in the order they
start and ``key`` defaults to ``"<thread_id>|<checkpoint_ns>"`` from the first call's
metadata (``thread_id`` and ``langgraph_checkpoint_ns``, i.e. ``node:task_id``, which a
re-run task keeps), or a random ``"meter-<hex>"`` outside a graph.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Collection, Mapping
from typing import Any, Protocol
from uuid import UUID

from langchain_core.callbacks import AsyncCallbackHandler, BaseCallbackHandler
from langchain_core.messages import BaseMessage
from langchain_core.messages.utils import count_tokens_approximately
from langchain_core.outputs import LLMResult

from ..errors import ConfigurationError
from ..trips import Trip
from ._active import ACTIVE, metering
from .account import Account, PoolHolds
from .calls import FinishedCall, InFlight, call_model, key_prefix, max_tokens_of, refused_message
from .log import ThreadSpend
from .policy import Budget
from .pricing import Price, Pricer, pricer
from .spend import Spend, SpendPool
from .tokens import TokenCounter, shared_counter

__all__ = ("AsyncBudgetMeter", "BudgetMeter", "CallHooks", "metering")


class CallHooks(Protocol):
    """What a meter tells a journal about each call (``guarded`` wires the run's journal)."""

    def reserved(self, call: InFlight) -> object:
        """The call was admitted: journal its reservation (its projection) before it is made."""

    def settled(self, record: Mapping[str, Any]) -> object:
        """The call ended: journal what it cost (a :attr:`BudgetMeter.calls` record)."""

    def released(self, call: InFlight) -> object:
        """The call failed before it was billed: drop its reservation."""


class BudgetMeter(BaseCallbackHandler):
    """Meters one guarded step's model calls and blocks a call the budget cannot cover
    (see the module docstring for the rules; the numbers are kept by an
    :class:`~.account.Account` against the thread's :class:`~.log.ThreadSpend`).

    Attach it with :func:`metering` (every call made in the context, whatever config the
    call is given; nested guarded steps meter their own calls) or pass it in
    ``config={"callbacks": [meter]}`` (calls under that config only).

    Args:
        budget: The limits.
        agent: The agent the step's calls are attributed to.
        thread: The thread's spend (``guarded`` passes the run's); by default a fresh one
            starting from ``spent_before``.
        spent_before: Without ``thread``: what the thread spent before this step.
        spent_by_agent_before: Without ``thread``: spend per agent before this step.
        prices: Policy prices; defaults to ``budget.prices``.
        pool: A shared pool to reserve each call in.
        hooks: Told of each call's reservation, settlement and release (the journal).
        on_call: Called with each finished call's record (as :attr:`calls` has it).
        grants: Extra allowance granted by humans, by limit key (``Ledger.grants``).
        warned: Limit keys already warned about (``Ledger.warned``).
        hops: The thread's hop count, for trip records.
        key: Prefix of the call keys (``"<thread_id>|<checkpoint_ns>"`` in a graph).
        first_call: The lowest index the step's first call may take.
        tokens: The token counter to count input messages with (default: the process's,
            :func:`~.tokens.shared_counter`).
        refused: ``(provider, model)`` pairs to refuse under ``no_usage="refuse"`` (a run
            shares one set).

    Example:
        ```python
        meter = BudgetMeter(Budget(usd=5), agent="analyst")
        model = ScriptedChatModel(["hi"], max_tokens=256)
        model.invoke("hello", config={"callbacks": [meter]})
        print(meter.spent.usd, meter.calls[0]["model"], meter.warnings)
        ```
    """

    raise_error = True
    run_inline = True
    # Read by LangChain for every event of every run the meter is attached to: class
    # attributes, read without a call. Only model events are metered.
    ignore_chain = True
    ignore_agent = True
    ignore_retriever = True
    ignore_retry = True
    ignore_custom_event = True
    ignore_llm = False
    ignore_chat_model = False

    __slots__ = (
        "_holds",
        "_priced",
        "_refused",
        "_tokens",
        "account",
        "agent",
        "budget",
        "hooks",
        "key",
        "on_call",
        "pool",
        "prices",
    )

    def __init__(
        self,
        budget: Budget,
        *,
        agent: str,
        thread: ThreadSpend | None = None,
        spent_before: Spend | Mapping[str, int] | None = None,
        spent_by_agent_before: Mapping[str, Spend | Mapping[str, int]] | None = None,
        prices: Mapping[str, Price] | None = None,
        pool: SpendPool | None = None,
        hooks: CallHooks | None = None,
        on_call: Callable[[dict[str, Any]], object] | None = None,
        grants: Mapping[str, float] | None = None,
        warned: Collection[str] = (),
        hops: int = 0,
        key: str | None = None,
        first_call: int = 0,
        tokens: TokenCounter | None = None,
        refused: set[tuple[str | None, str]] | None = None,
    ) -> None:
        if not isinstance(budget, Budget):
            raise ConfigurationError(
                f"BudgetMeter needs a Budget, got {type(budget).__name__}. Pass e.g. "
                "BudgetMeter(Budget(usd=5), agent='analyst')."
            )
        self.budget = budget
        self.agent = agent
        self.prices = budget.prices if prices is None else prices
        self.pool = pool
        self.hooks = hooks
        self.on_call = on_call
        self.key = key
        if thread is None:
            before = Spend.coerce(spent_before)
            by_agent = {a: Spend.coerce(v) for a, v in (spent_by_agent_before or {}).items()}
            thread = ThreadSpend("standalone", paid=before, paid_by_agent=by_agent)
        self.account = Account(
            budget,
            agent=agent,
            thread=thread,
            task=key or "",
            grants=grants,
            warned=warned,
            hops=hops,
            first_call=first_call,
        )
        self._tokens = tokens if tokens is not None else shared_counter()
        self._refused = refused if refused is not None else set()
        self._holds = PoolHolds(pool, self.account) if pool is not None else None
        self._priced: tuple[str | None, str, Pricer] | None = None

    @property
    def trip(self) -> Trip | None:
        """The step's first trip record, or None."""
        return self.account.trip

    @property
    def spent(self) -> Spend:
        """What this step's finished calls spent."""
        return self.account.spent()

    @property
    def calls(self) -> list[dict[str, Any]]:
        """The records of this step's finished calls, in the order they finished (a copy):
        ``key``, ``index``, ``run_id``, ``parent_run_id``, ``agent``, ``provider``,
        ``model``, ``input_tokens``, ``output_tokens``, ``usd_micros``, ``estimated``,
        ``max_tokens``, ``projected`` (a ``Spend`` dict), ``thread_id``,
        ``checkpoint_ns``, ``node``, ``usage_details``."""
        with self.account.lock:
            calls = list(self.account.calls)
        return [call.record(self.agent) for call in calls]

    @property
    def warnings(self) -> list[str]:
        """Limit keys whose ``warn_at`` threshold this step's calls reached (each once)."""
        with self.account.lock:
            return list(self.account.warnings)

    # -- before the call ----------------------------------------------------------------

    def on_chat_model_start(
        self,
        serialized: dict[str, Any],
        messages: list[list[BaseMessage]],
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        """Project the call and block it if the budget or the pool cannot cover it."""
        params: Mapping[str, Any] = kwargs.get("invocation_params") or {}
        tools = params.get("tools")
        count = self._tokens.count
        # count_tokens_approximately(batch, tools=tools) for each batch, from cached parts.
        counted = count(messages[0]) if len(messages) == 1 else sum(map(count, messages))
        if isinstance(tools, list) and tools:
            counted += self._tokens.tools(tools) * len(messages)
        call = self._intake(run_id, parent_run_id, metadata or {}, params, counted)
        if call is not None:
            self._reserve(run_id, call)

    def on_llm_start(
        self,
        serialized: dict[str, Any],
        prompts: list[str],
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        """Same as :meth:`on_chat_model_start`, for completion (non-chat) models."""
        params: Mapping[str, Any] = kwargs.get("invocation_params") or {}
        counted = count_tokens_approximately([("human", p) for p in prompts])
        call = self._intake(run_id, parent_run_id, metadata or {}, params, counted)
        if call is not None:
            self._reserve(run_id, call)

    def _intake(
        self,
        run_id: UUID,
        parent_run_id: UUID | None,
        metadata: Mapping[str, Any],
        params: Mapping[str, Any],
        input_tokens: int,
    ) -> InFlight | None:
        """Project the call and check it against the thread's spend (CPU only): the call
        admitted and reserved in the thread, or None when an inner meter meters it."""
        active = ACTIVE.get()
        if active is not None and active is not self:
            return None  # a meter nested in this one (an inner guarded step) meters it
        provider, model = call_model(metadata, params)
        if self.budget.no_usage == "refuse" and (provider, model) in self._refused:
            raise ConfigurationError(refused_message(provider, model))
        max_tokens = max_tokens_of(metadata, params)
        output_tokens = max_tokens or self.budget.assume_output_tokens
        priced = self._priced
        if priced is None or priced[1] != model or priced[0] != provider:
            priced = self._priced = (
                provider,
                model,
                pricer(model, provider=provider, prices=self.prices),
            )
        price = priced[2]
        prefix = self.key
        if prefix is None:
            prefix = self.key = key_prefix(metadata)
            self.account.task = prefix
        account = self.account
        call = InFlight(
            account.thread.take_index(prefix, account.first_call),
            prefix,
            provider,
            model,
            input_tokens,
            max_tokens,
            price(input_tokens, output_tokens),
            output_tokens,
            price,
            parent_run_id,
            metadata,
        )
        account.admit(run_id, call)
        return call

    def _reserve(self, run_id: UUID, call: InFlight) -> None:
        """The admitted call's reservations outside the thread: the pool, the journal."""
        if self._holds is not None:
            self._holds.reserve(run_id, call)
        if self.hooks is not None:
            try:
                self.hooks.reserved(call)
            except BaseException:
                self._release(run_id)
                raise

    # -- after the call -------------------------------------------------------------------

    def on_llm_end(
        self,
        response: LLMResult,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        **kwargs: Any,
    ) -> None:
        """Record what the call used, commit its reservation, and journal it."""
        done = self._settle(run_id, response)
        if done is None:
            return
        if self._holds is not None:
            self._holds.commit(run_id, done.spend)
        if self.hooks is not None:
            self.hooks.settled(done.record(self.agent))
        if self.on_call is not None:
            self.on_call(done.record(self.agent))
        self._refuse_if_no_usage(done)

    def _settle(self, run_id: UUID, response: LLMResult) -> FinishedCall | None:
        """What the call used, settled in the thread (CPU only); None for a call this
        meter did not admit (it started before the meter)."""
        call = self.account.pending.get(run_id)  # one dict read: atomic, no lock needed
        if call is None:
            return None
        done = FinishedCall.of(call, run_id=run_id, response=response, prices=self.prices)
        self.account.settle(done)
        return done

    def _refuse_if_no_usage(self, done: FinishedCall) -> None:
        if done.estimated and self.budget.no_usage == "refuse":
            self._refused.add((done.flight.provider, done.flight.model))
            raise ConfigurationError(done.no_usage_message())

    def on_llm_error(
        self,
        error: BaseException,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        **kwargs: Any,
    ) -> None:
        """Forget the failed call and release its reservations."""
        self._release(run_id)

    def _release(self, run_id: UUID) -> None:
        """Take back a call that failed before it was billed, everywhere."""
        call = self.account.forget(run_id)
        if self._holds is not None:
            self._holds.release(run_id)
        if call is not None and self.hooks is not None:
            self.hooks.released(call)

    def _left(self) -> list[FinishedCall]:
        """The step ended: its calls that never ended, settled in the thread at their
        projection (they may have been billed)."""
        left = [(run_id, call) for run_id, call in self.account.pending.items()]
        self.account.close()
        return [
            FinishedCall(c, run_id, c.input_tokens, c.output_tokens, c.usd_micros, True, {})
            for run_id, c in left
        ]

    def close(self) -> None:
        """The step ended: calls that never ended count at their projection (they may
        have been billed), in the thread's spend, the pool and the journal."""
        for done in self._left():
            if self._holds is not None:
                self._holds.commit(done.run_id, done.spend)
            if self.hooks is not None:
                self.hooks.settled(done.record(self.agent))


class AsyncBudgetMeter(BudgetMeter, AsyncCallbackHandler):
    """A :class:`BudgetMeter` for async steps: its checks are the same, and its journal
    and pool I/O runs in a worker thread (or the journal's own ``a``-methods), never on
    the event loop. Model calls awaited with ``ainvoke`` await its callbacks."""

    async def on_chat_model_start(  # type: ignore[override]
        self,
        serialized: dict[str, Any],
        messages: list[list[BaseMessage]],
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        """Project the call and block it if the budget or the pool cannot cover it."""
        params: Mapping[str, Any] = kwargs.get("invocation_params") or {}
        tools = params.get("tools")
        count = self._tokens.count
        counted = count(messages[0]) if len(messages) == 1 else sum(map(count, messages))
        if isinstance(tools, list) and tools:
            counted += self._tokens.tools(tools) * len(messages)
        call = self._intake(run_id, parent_run_id, metadata or {}, params, counted)
        if call is not None:
            await asyncio.to_thread(self._reserve, run_id, call)

    async def on_llm_start(  # type: ignore[override]
        self,
        serialized: dict[str, Any],
        prompts: list[str],
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        """Same as :meth:`on_chat_model_start`, for completion (non-chat) models."""
        params: Mapping[str, Any] = kwargs.get("invocation_params") or {}
        counted = count_tokens_approximately([("human", p) for p in prompts])
        call = self._intake(run_id, parent_run_id, metadata or {}, params, counted)
        if call is not None:
            await asyncio.to_thread(self._reserve, run_id, call)

    async def on_llm_end(  # type: ignore[override]
        self,
        response: LLMResult,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        **kwargs: Any,
    ) -> None:
        """Record what the call used, commit its reservation, and journal it."""
        done = self._settle(run_id, response)
        if done is None:
            return
        if self._holds is not None or self.hooks is not None:
            await asyncio.to_thread(self._record_settled, done)
        if self.on_call is not None:
            self.on_call(done.record(self.agent))
        self._refuse_if_no_usage(done)

    def _record_settled(self, done: FinishedCall) -> None:
        if self._holds is not None:
            self._holds.commit(done.run_id, done.spend)
        if self.hooks is not None:
            self.hooks.settled(done.record(self.agent))

    async def on_llm_error(  # type: ignore[override]
        self,
        error: BaseException,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        **kwargs: Any,
    ) -> None:
        """Forget the failed call and release its reservations."""
        await asyncio.to_thread(self._release, run_id)

    async def aclose(self) -> None:
        """:meth:`close`, with its I/O off the event loop."""
        left = self._left()
        if left and (self._holds is not None or self.hooks is not None):
            for done in left:
                await asyncio.to_thread(self._record_settled, done)
