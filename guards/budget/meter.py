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

import logging
from collections.abc import Callable, Collection, Mapping
from contextlib import AbstractContextManager
from contextvars import ContextVar
from typing import Any
from uuid import UUID

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import BaseMessage
from langchain_core.messages.utils import count_tokens_approximately
from langchain_core.outputs import LLMResult
from langchain_core.tracers.context import register_configure_hook

from ..errors import ConfigurationError
from ..trips import Trip
from .account import Account, PoolHolds, SpendGroup
from .calls import FinishedCall, InFlight, call_model, key_prefix, max_tokens_of, refused_message
from .policy import Budget
from .pricing import Price, Pricer, pricer
from .spend import Spend, SpendPool, spend
from .tokens import TokenCounter

__all__ = ("BudgetMeter", "metering")


class BudgetMeter(BaseCallbackHandler):
    """Meters one guarded step's model calls and blocks a call the budget cannot cover
    (see the module docstring for the rules; the numbers are kept by an
    :class:`~.account.Account`).

    Attach it with :func:`metering` (every call made in the context, whatever config the
    call is given; nested guarded steps meter their own calls) or pass it in
    ``config={"callbacks": [meter]}`` (calls under that config only).

    Args:
        budget: The limits.
        agent: The agent the step's calls are attributed to.
        spent_before: The thread's spend before this step (``Ledger.spent``).
        spent_by_agent_before: Spend per agent before this step.
        prices: Policy prices; defaults to ``budget.prices``.
        pool: A shared pool to reserve each call in.
        on_call: Called with each metered call's record (the journal hook).
        grants: Extra allowance granted by humans, by limit key (``Ledger.grants``).
        warned: Limit keys already warned about (``Ledger.warned``).
        hops: The thread's hop count, for trip records.
        key: Prefix of the call keys.
        first_call: The index of the step's first call: a re-run of a task whose earlier
            attempt made calls continues after them.
        group: The accounts of steps running at the same time in the thread: each call's
            check also counts what the others spent and have in flight.
        tokens: The token counter to count input messages with (a run shares one).
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
        "_outer",
        "_priced",
        "_refused",
        "_tokens",
        "account",
        "agent",
        "budget",
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
        spent_before: Spend | Mapping[str, int] | None = None,
        spent_by_agent_before: Mapping[str, Spend | Mapping[str, int]] | None = None,
        prices: Mapping[str, Price] | None = None,
        pool: SpendPool | None = None,
        on_call: Callable[[dict[str, Any]], None] | None = None,
        grants: Mapping[str, float] | None = None,
        warned: Collection[str] = (),
        hops: int = 0,
        key: str | None = None,
        first_call: int = 0,
        group: SpendGroup | None = None,
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
        self.on_call = on_call
        self.key = key
        self.account = Account(
            budget,
            agent=agent,
            spent_before=spent_before,
            spent_by_agent_before=spent_by_agent_before,
            grants=grants,
            warned=warned,
            hops=hops,
            first_call=first_call,
            group=group,
        )
        self._tokens = tokens if tokens is not None else TokenCounter()
        self._refused = refused if refused is not None else set()
        self._outer: BudgetMeter | None = None
        self._holds = PoolHolds(pool, self.account) if pool is not None else None
        self._priced: tuple[str | None, str, Pricer] | None = None

    @property
    def trip(self) -> Trip | None:
        """The step's first trip record, or None."""
        return self.account.trip

    @property
    def spent(self) -> Spend:
        """What this step's finished calls spent."""
        t = self.account.tally
        with self.account.lock:
            return spend(t.usd, t.inp, t.out)

    @property
    def nested_spent(self) -> Spend:
        """What calls metered by meters nested in this one (guarded steps inside this
        step, see :func:`metering`) spent. Not in :attr:`spent`; counted in the checks."""
        t = self.account.tally
        with self.account.lock:
            return spend(t.n_usd, t.n_in, t.n_out)

    @property
    def calls(self) -> list[dict[str, Any]]:
        """The records of this step's finished calls, in the order they finished (a copy):
        ``key``, ``index``, ``run_id``, ``parent_run_id``, ``agent``, ``provider``,
        ``model``, ``input_tokens``, ``output_tokens``, ``usd_micros``, ``estimated``,
        ``max_tokens``, ``projected`` (a ``Spend`` dict), ``thread_id``,
        ``checkpoint_ns``, ``node``."""
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
        self._intake(run_id, parent_run_id, metadata or {}, params, counted)

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
        self._intake(run_id, parent_run_id, metadata or {}, params, counted)

    def _intake(
        self,
        run_id: UUID,
        parent_run_id: UUID | None,
        metadata: Mapping[str, Any],
        params: Mapping[str, Any],
        input_tokens: int,
    ) -> None:
        active = _ACTIVE.get()
        if active is not None and active is not self:
            return  # a meter nested in this one (an inner guarded step) meters the call
        provider, model = call_model(metadata, params)
        if self.budget.no_usage == "refuse" and (provider, model) in self._refused:
            raise ConfigurationError(refused_message(provider, model))
        max_tokens = max_tokens_of(metadata, params)
        output_tokens = max_tokens or 0
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
        call = InFlight(
            0,
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
        call = self.account.admit(run_id, call)
        if self._holds is not None:
            self._holds.reserve(run_id, call)

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
        """Record what the call used, commit its reservation, and call ``on_call``."""
        account = self.account
        call = account.pending.get(run_id)  # one dict read: atomic, no lock needed
        if call is None:
            return  # not a call this meter admitted (it started before the meter)
        done = FinishedCall.of(call, run_id=run_id, response=response, prices=self.prices)
        account.settle(done)
        if self._holds is not None:
            self._holds.commit(run_id, done.spend)
        if self.on_call is not None:
            self.on_call(done.record(self.agent))
        if done.estimated and self.budget.no_usage == "refuse":
            self._refused.add((call.provider, call.model))
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
        """Forget the failed call and release its pool reservation."""
        self.account.forget(run_id)
        if self._holds is not None:
            self._holds.release(run_id)

    def close(self) -> None:
        """Release the reservations of calls that never ended (call when the step ends)."""
        self.account.clear()
        if self._holds is not None:
            self._holds.release_all()


_ACTIVE: ContextVar[BudgetMeter | None] = ContextVar("sanegraph_budget_meter", default=None)
# LangChain adds the active meter to every callback manager it configures in this context,
# even for a call given its own ``callbacks`` (as get_usage_metadata_callback does).
register_configure_hook(_ACTIVE, inheritable=True)


class _QuietTrips(logging.Filter):
    """Drop LangChain's warning for a call the meter blocked on purpose.

    LangChain logs "Error in BudgetMeter.on_chat_model_start callback: BudgetExceeded(...)"
    at WARNING before re-raising a ``raise_error`` handler's exception. A blocked call is
    the budget working, recorded as a trip in the ledger; other callback errors (a
    ``ConfigurationError`` for an unpriced model) still show.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not (message.startswith("Error in BudgetMeter.") and "BudgetExceeded(" in message)


logging.getLogger("langchain_core.callbacks.manager").addFilter(_QuietTrips())


def metering(meter: BudgetMeter) -> AbstractContextManager[BudgetMeter]:
    """Meter every model call made in this context (and in tasks and runnables it starts).

    Inside the block, LangChain adds ``meter`` to the callbacks of every runnable it
    configures: model calls made with no config, with the node's original config, with a
    config of their own (even one with explicit ``callbacks``), inside chains, tools,
    ``RunnableLambda``s, ``batch`` and subgraphs, sync or async (contextvars follow
    ``asyncio`` tasks). Calls made from threads started by hand (a raw
    ``ThreadPoolExecutor``) are not seen: contextvars do not cross into them.

    Blocks nest: a meter activated inside another's block (a guarded step inside a
    guarded step) meters the calls made in its block alone, so each call is metered once,
    by the innermost step; what it spends is passed up as the outer meter's
    :attr:`~BudgetMeter.nested_spent`, and its checks count what the enclosing steps
    spent themselves.

    Example:
        ```python
        meter = BudgetMeter(Budget(usd=5), agent="analyst")
        with metering(meter):
            agent(state)  # every model call inside is projected, checked and recorded
        ```
    """
    return _Metering(meter)


class _Metering(AbstractContextManager[BudgetMeter]):
    """What :func:`metering` returns (a class: cheaper to enter than a generator's)."""

    __slots__ = ("_meter", "_token")

    def __init__(self, meter: BudgetMeter) -> None:
        self._meter = meter

    def __enter__(self) -> BudgetMeter:
        meter = self._meter
        outer = _ACTIVE.get()
        if outer is not meter:
            meter._outer = outer
            meter.account.outer = outer.account if outer is not None else None
        self._token = _ACTIVE.set(meter)
        return meter

    def __exit__(self, *exc_info: object) -> None:
        _ACTIVE.reset(self._token)
