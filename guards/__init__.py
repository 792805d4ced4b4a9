"""sanegraph.guards: the pieces a guarded LangGraph graph is built from.

Build the graph with :class:`GuardedStateGraph` and a state that includes
:class:`GuardedState`; wrap each agent with :func:`guarded`; route the edges out of
guarded nodes with :func:`guard_route` (and fan out with :func:`guard_sends`); add the
:func:`task_owner` that every trip goes to. One :class:`GuardPolicy` says what is allowed.
Or start from :mod:`sanegraph.graphs`.

Everything else is importable from its submodule, documented there: the ledger's parts
(:mod:`.ledger`, :mod:`.reducer`), the checks (:mod:`.checks`), budgets and the meter
(:mod:`.budget`), loop detection (:mod:`.loops`), envelopes (:mod:`.envelope`),
escalations (:mod:`.escalation`), trips (:mod:`.trips`) and scripted models for tests
(:mod:`.testing`).

Example:
    ```python
    from sanegraph.guards import (
        GuardedState, GuardedStateGraph, GuardPolicy, guard_route, guarded, task_owner,
    )
    ```
"""

from .budget.policy import Budget
from .budget.pricing import Price
from .budget.spend import Spend
from .envelope import Envelope, EnvelopeStatus
from .errors import (
    BudgetExceeded,
    ConfigurationError,
    DeadlineExceeded,
    GuardTripped,
    HopCapExceeded,
    InvalidDecision,
    InvalidEnvelope,
    LoopDetected,
    SanegraphError,
)
from .escalation import AbortRun, AcceptPartial, ContinueRun, Decision, Escalation
from .graph import GuardedStateGraph
from .ledger import Ledger, envelopes_of, read_ledger
from .loops.policy import LoopPolicy
from .node import guarded
from .owner import outcome_of, task_owner
from .policy import EnvelopePolicy, GuardPolicy, HopCap, OwnerPolicy
from .route import guard_route, guard_sends, is_tripped
from .state import GuardedState
from .trips import Trip

__all__ = (
    "AbortRun",
    "AcceptPartial",
    "Budget",
    "BudgetExceeded",
    "ConfigurationError",
    "ContinueRun",
    "DeadlineExceeded",
    "Decision",
    "Envelope",
    "EnvelopePolicy",
    "EnvelopeStatus",
    "Escalation",
    "GuardPolicy",
    "GuardTripped",
    "GuardedState",
    "GuardedStateGraph",
    "HopCap",
    "HopCapExceeded",
    "InvalidDecision",
    "InvalidEnvelope",
    "Ledger",
    "LoopDetected",
    "LoopPolicy",
    "OwnerPolicy",
    "Price",
    "SanegraphError",
    "Spend",
    "Trip",
    "envelopes_of",
    "guard_route",
    "guard_sends",
    "guarded",
    "is_tripped",
    "outcome_of",
    "read_ledger",
    "task_owner",
)
