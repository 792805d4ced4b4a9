"""Which meter meters the model calls made in this context: :func:`metering`.

LangChain adds the active meter to every callback manager it configures in the context
(a configure hook), so every model call made inside a guarded step is metered, whatever
config it is given.
"""

from __future__ import annotations

import logging
from contextlib import AbstractContextManager
from contextvars import ContextVar
from typing import Any

from langchain_core.tracers.context import register_configure_hook

__all__ = ("ACTIVE", "metering")

ACTIVE: ContextVar[Any] = ContextVar("sanegraph_budget_meter", default=None)
# LangChain adds the active meter to every callback manager it configures in this context,
# even for a call given its own ``callbacks`` (as get_usage_metadata_callback does).
register_configure_hook(ACTIVE, inheritable=True)


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


def metering(meter: Any) -> AbstractContextManager[Any]:
    """Meter every model call made in this context (and in tasks and runnables it starts).

    Inside the block, LangChain adds ``meter`` to the callbacks of every runnable it
    configures: model calls made with no config, with the node's original config, with a
    config of their own (even one with explicit ``callbacks``), inside chains, tools,
    ``RunnableLambda``s, ``batch`` and subgraphs, sync or async (contextvars follow
    ``asyncio`` tasks). Calls made from threads started by hand (a raw
    ``ThreadPoolExecutor``) are not seen: contextvars do not cross into them.

    Blocks nest: a meter activated inside another's block (a guarded step inside a
    guarded step) meters the calls made in its block alone, so each call is metered once,
    by the innermost step; meters of one thread share its spend (``thread=``), so every
    check counts what the enclosing steps spent too.

    Example:
        ```python
        meter = BudgetMeter(Budget(usd=5), agent="analyst")
        with metering(meter):
            agent(state)  # every model call inside is projected, checked and recorded
        ```
    """
    return _Metering(meter)


class _Metering(AbstractContextManager[Any]):
    """What :func:`metering` returns (a class: cheaper to enter than a generator's)."""

    __slots__ = ("_meter", "_token")

    def __init__(self, meter: Any) -> None:
        self._meter = meter

    def __enter__(self) -> Any:
        self._token = ACTIVE.set(self._meter)
        return self._meter

    def __exit__(self, *exc_info: object) -> None:
        ACTIVE.reset(self._token)
