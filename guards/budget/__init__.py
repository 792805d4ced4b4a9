"""Budgets: what model calls cost, the intake check, and the meter that applies it.

- :class:`Budget` (``policy``): the limits, plain data.
- :class:`Spend` and the store protocols :class:`SpendPool`, :class:`SpendJournal`
  (``spend``): what was spent, in integer micro-dollars and tokens.
- :func:`price_call` and :class:`Price` (``pricing``): prices from genai-prices.
- :func:`check_spend` (``check``): the "would exceed" rule, pure.
- :class:`BudgetMeter` and :func:`metering` (``meter``): the LangChain callback handler that
  projects each call before it is made and records what it used.

Limit keys name each limit in warnings, grants and trips: ``"usd"``, ``"tokens"``,
``"input_tokens"``, ``"output_tokens"``, ``"per_call_tokens"``, ``"pool"`` and, per agent,
``"usd:<agent>"``, ``"tokens:<agent>"``... (as ``"hops:<agent>"`` for hop grants).
"""

from ..errors import BudgetExceeded
from .check import check_spend
from .log import SpendLog, ThreadSpend
from .meter import AsyncBudgetMeter, BudgetMeter, metering
from .policy import AgentLimits, Budget, ExhaustedAction, NoUsage
from .pricing import Price, price_call
from .spend import AsyncSpendJournal, Spend, SpendJournal, SpendPool

__all__ = (
    "AgentLimits",
    "AsyncBudgetMeter",
    "AsyncSpendJournal",
    "Budget",
    "BudgetExceeded",
    "BudgetMeter",
    "ExhaustedAction",
    "NoUsage",
    "Price",
    "Spend",
    "SpendJournal",
    "SpendLog",
    "SpendPool",
    "ThreadSpend",
    "check_spend",
    "metering",
    "price_call",
)
