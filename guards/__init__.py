"""sanegraph.guards: the ledger, policies, guard checks, envelopes, guard nodes and edges.

Compose a guarded graph from these pieces, or start from :mod:`sanegraph.graphs`.

Example:
    ```python
    from sanegraph.guards import GuardPolicy, GuardedState, guarded, guard_route, task_owner
    ```
"""

from .budget import Price, Spend
from .checks import check_deadline, check_envelope, check_hops, make_trip
from .envelope import Envelope, EnvelopeStatus, coerce_envelope, envelope_to_dict
from .errors import (
    LOOP_KINDS,
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
from .graph import DurableCompiledGraph, GuardedStateGraph
from .ledger import (
    DEFAULT_WINDOW,
    MAX_ENVELOPES,
    MAX_RECENT,
    MAX_TRIPS,
    EnvelopeRecord,
    GuardedState,
    Ledger,
    RunStatus,
    StepDelta,
    Trip,
    envelopes_of,
    fold_ledger,
    new_ledger,
    read_ledger,
)
from .loops import LoopPolicy
from .node import BRANCH_KEY, guarded
from .owner import (
    AbortRun,
    AcceptPartial,
    ContinueRun,
    Decision,
    Escalation,
    best_partial,
    outcome_of,
    task_owner,
)
from .policy import Budget, EnvelopePolicy, GuardPolicy, HopCap, OwnerAction, OwnerPolicy
from .route import guard_route, guard_sends, is_tripped

__all__ = (
    "BRANCH_KEY",
    "DEFAULT_WINDOW",
    "LOOP_KINDS",
    "MAX_ENVELOPES",
    "MAX_RECENT",
    "MAX_TRIPS",
    "AbortRun",
    "AcceptPartial",
    "Budget",
    "BudgetExceeded",
    "ConfigurationError",
    "ContinueRun",
    "DeadlineExceeded",
    "Decision",
    "DurableCompiledGraph",
    "Envelope",
    "EnvelopePolicy",
    "EnvelopeRecord",
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
    "OwnerAction",
    "OwnerPolicy",
    "Price",
    "RunStatus",
    "SanegraphError",
    "Spend",
    "StepDelta",
    "Trip",
    "best_partial",
    "check_deadline",
    "check_envelope",
    "check_hops",
    "coerce_envelope",
    "envelope_to_dict",
    "envelopes_of",
    "fold_ledger",
    "guard_route",
    "guard_sends",
    "guarded",
    "is_tripped",
    "make_trip",
    "new_ledger",
    "outcome_of",
    "read_ledger",
    "task_owner",
)
