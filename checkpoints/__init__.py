"""sanegraph.checkpoints: SQLite checkpointers and rollback to the last sane checkpoint.

Open the checkpointer with :func:`sqlite_saver` (sync) or :func:`async_sqlite_saver`
(async); after a trip, fork the thread from its last sane checkpoint with
:func:`rollback` and resume it with ``graph.invoke(None, config)``. In the same file,
:class:`Journal` journals each model call (reserved before it is made, then settled or
released) and each guarded step under its task's key (the SQLite ``SpendJournal``), and
:class:`SharedBudget` keeps a spend pool that many threads and processes reserve from
before each model call.

Example:
    ```python
    from sanegraph.checkpoints import rollback, sqlite_saver

    with sqlite_saver("runs/checkpoints.sqlite") as saver:
        graph = builder.compile(checkpointer=saver)
        graph.invoke({"topic": "tides"}, config)
        graph.invoke(None, rollback(graph, config, patch={"topic": "spring tides"}))
    ```
"""

from .journal import Journal, TaskKey
from .pool import PoolLimits, PoolStatus, Reservation, SharedBudget
from .rollback import (
    NoSaneCheckpoint,
    RollbackError,
    UnknownThread,
    alast_sane_checkpoint,
    arollback,
    last_sane_checkpoint,
    rollback,
)
from .saver import DEFAULT_BUSY_TIMEOUT, async_sqlite_saver, open_sqlite_saver, sqlite_saver

__all__ = (
    "DEFAULT_BUSY_TIMEOUT",
    "Journal",
    "NoSaneCheckpoint",
    "PoolLimits",
    "PoolStatus",
    "Reservation",
    "RollbackError",
    "SharedBudget",
    "TaskKey",
    "UnknownThread",
    "alast_sane_checkpoint",
    "arollback",
    "async_sqlite_saver",
    "last_sane_checkpoint",
    "open_sqlite_saver",
    "rollback",
    "sqlite_saver",
)
