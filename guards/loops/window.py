"""The layout of a loop-window entry: what the ledger keeps of each step.

Entries are stored in the ledger as JSON-ready lists (compact, and readable by every
checkpointer's serializer without an allow-list); :class:`WindowEntry` names their
fields for the code that reads them.
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = ("ENTRY_FIELDS", "SIZE", "WindowEntry")


class WindowEntry(NamedTuple):
    """One step in the loop window (stored as a list in this field order)."""

    agent: str
    """The agent."""
    fp: str
    """Its action fingerprint (12 hex; ``""`` if its fingerprint covers nothing)."""
    hop: int
    """The hop of the step (parallel steps of one superstep share it)."""
    out: str
    """Hash of the normalized result; ``""`` for a result under 16 characters."""
    sim: str
    """The near-duplicate signature (``""`` when the detector is off or the text is short)."""
    tools: str
    """The tool calls seen: space-separated ``name:args:result:call`` tokens (hashes;
    ``result`` is ``""`` while pending and starts with ``!`` for an error)."""
    progress: str
    """Hash of what changed in the watched state (``""``: nothing)."""
    stalls: int
    """The stall count after the step."""
    text: str
    """At most 60 characters of the step's result or reason, for people."""


ENTRY_FIELDS: tuple[str, ...] = WindowEntry._fields
"""The field names of a window entry, in the order it is stored."""

AGENT, FP, HOP, OUT, SIM, TOOLS, PROG, STALL, TEXT = range(len(ENTRY_FIELDS))
"""Positions of the fields in a stored entry (for the hot path, which reads lists)."""
SIZE = len(ENTRY_FIELDS)
"""Fields in an entry of this layout; shorter entries (an older layout) are skipped."""
