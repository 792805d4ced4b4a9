"""sanegraph.cli: the ``sanegraph`` command (``demo``, ``runs``, ``show``) and the demo.

The only sanegraph package that may import all the others: ``guards``, ``graphs`` and
``checkpoints`` never import it.
"""

from .app import main
from .demo import DemoReport, DemoRun, run_demo
from .threads import ThreadSummary, list_threads, thread_summary

__all__ = (
    "DemoReport",
    "DemoRun",
    "ThreadSummary",
    "list_threads",
    "main",
    "run_demo",
    "thread_summary",
)
