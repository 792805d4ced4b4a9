"""Loop detection: deterministic detectors over the ledger's window of recent steps.

LangGraph's ``recursion_limit`` stops a loop only after thousands of steps and starts
again on every resume. :class:`LoopPolicy` stops it within a few repetitions, from what
the ledger already keeps: a bounded window of step entries. Each finished step becomes one
entry (:func:`step_entry`), and :func:`check_loops` runs every enabled detector for the new
entry against the window, in O(window) time whatever the length of the thread's history:

- ``repeat``: the same agent takes the same action ``max_repeats`` times;
- ``copy``: the same result is passed on unchanged between agents ``max_copies`` times;
- ``cycle``: a sequence of steps of two or more agents (A→B→A→B, A→B→C→A→B→C, ...)
  repeats with the same content ``max_cycles`` times;
- ``near_duplicate``: the same agent says nearly the same thing (re-asks in slightly
  different words) ``max_near_duplicates`` times;
- ``tool_repeat``: a tool is called with the same arguments, and answers the same, more than
  ``max_tool_repeats`` times; ``tool_errors``: a tool returns errors more than
  ``max_tool_errors`` times in a row;
- ``no_progress``: the watched state has not changed for ``max_stalls`` steps.

A trip is a ledger :class:`~sanegraph.guards.Trip` like any other (routed to the task
owner), with two more keys: ``detector`` (a :data:`LoopDetector`) and ``steps``, the
repeating steps as ``{"agent", "hop", "fp", "text"}`` dicts, so the owner and a human can see
the loop.

All loop state lives in the window entries (each carries the stall count after it), so
folding, checkpointing and rolling back the ledger's window is all the bookkeeping there is.
"""

from .detectors import check_loops
from .entry import step_entry
from .policy import FingerprintPart, LoopDetector, LoopPolicy, Similarity
from .similarity import MinHash
from .window import ENTRY_FIELDS, WindowEntry

__all__ = (
    "ENTRY_FIELDS",
    "FingerprintPart",
    "LoopDetector",
    "LoopPolicy",
    "MinHash",
    "Similarity",
    "WindowEntry",
    "check_loops",
    "step_entry",
)
