"""Wiring a guarded step's model calls to its thread's spend log and the run's journal.

A step's meter checks and reserves each call in its thread's
:class:`~.budget.log.ThreadSpend` (shared by every step of the thread, in every branch),
and tells the journal, if the graph has one, of each call's reservation, settlement and
release. The thread's spend is read from the journal the first time a process meets the
thread, and never falls below what the ledger's copy says (another worker may have run the
thread since). Sync and async forms: an async step never runs journal I/O on the event
loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from .budget.calls import InFlight
from .budget.log import ThreadSpend
from .budget.spend import AsyncSpendJournal, Spend
from .ledger import Ledger

__all__ = ("JournalHooks", "athread_of", "call_key_prefix", "thread_of")

_ZERO = Spend()


def call_key_prefix(info: Any) -> str:
    """The prefix of a task's call keys: ``"<thread_id>|<checkpoint_ns>"`` (a retried or
    re-run task keeps both, and numbers its calls after the earlier ones)."""
    return f"{info.thread_id}|{info.checkpoint_ns}"


def _reserve_record(call: InFlight, agent: str) -> dict[str, Any]:
    return {
        "index": call.call_index,
        "agent": agent,
        "model": call.model,
        "provider": call.provider,
        "usd_micros": call.usd_micros,
        "input_tokens": call.input_tokens,
        "output_tokens": call.output_tokens,
    }


class JournalHooks:
    """Tells a journal of each call of one step (the meter's ``hooks``)."""

    __slots__ = ("agent", "info", "journal")

    def __init__(self, journal: Any, info: Any, agent: str) -> None:
        self.journal = journal
        self.info = info
        self.agent = agent

    def reserved(self, call: InFlight) -> object:
        """Journal the call's reservation before it is made."""
        return self.journal.reserve_call(self.info, _reserve_record(call, self.agent))

    def settled(self, record: Mapping[str, Any]) -> object:
        """Journal what the call cost."""
        return self.journal.log_call(self.info, record)

    def released(self, call: InFlight) -> object:
        """Journal that the call failed before it was billed."""
        return self.journal.release_call(self.info, call.call_index)


def _ledger_paid(ledger: Ledger) -> tuple[Spend, Mapping[str, Any]]:
    return Spend.coerce(ledger["spent"]), ledger["spent_by_agent"]


def _floor(seed: tuple[Spend, Mapping[str, Spend]] | None, ledger: Ledger) -> Any:
    return seed if seed is not None else (_ZERO, {})


def thread_of(scope: Any, info: Any, ledger: Ledger) -> tuple[ThreadSpend, int]:
    """The step's thread spend (read from the journal on first meeting), and the lowest
    index its first call may take (what the journal says earlier attempts used)."""
    if info is None or not info.thread_id:
        return scope.unthreaded(), 0
    log = scope.spend
    journal = log.journal
    thread = log.known(info.thread_id)
    if thread is None:
        seed = journal.thread_paid(info.thread_id) if journal is not None else None
        thread = log.thread(info.thread_id, seed=_floor(seed, ledger))
    thread.catch_up(*_ledger_paid(ledger))
    first = journal.prior_calls(info)[0] if journal is not None else 0
    return thread, first


async def athread_of(scope: Any, info: Any, ledger: Ledger) -> tuple[ThreadSpend, int]:
    """:func:`thread_of` for an async step: journal reads run off the event loop."""
    if info is None or not info.thread_id:
        return scope.unthreaded(), 0
    log = scope.spend
    journal = log.journal
    if journal is None:
        return thread_of(scope, info, ledger)
    thread = log.known(info.thread_id)
    if thread is None:
        if isinstance(journal, AsyncSpendJournal):
            seed = await journal.athread_paid(info.thread_id)
        else:
            seed = await asyncio.to_thread(journal.thread_paid, info.thread_id)
        thread = log.thread(info.thread_id, seed=_floor(seed, ledger))
    thread.catch_up(*_ledger_paid(ledger))
    if isinstance(journal, AsyncSpendJournal):
        first = (await journal.aprior_calls(info))[0]
    else:
        first = (await asyncio.to_thread(journal.prior_calls, info))[0]
    return thread, first
