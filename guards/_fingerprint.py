"""Step fingerprints: a short, stable digest of what an agent produced."""

from __future__ import annotations

from typing import Any
from zlib import crc32


def digest(envelope: dict[str, Any]) -> str:
    """A short digest of an envelope's status, result and reason.

    Envelopes in state are JSON-ready dicts (``envelope_to_dict``), whose ``repr`` is
    stable across processes. CRC-32 plus the length is a fraction of the cost of a
    cryptographic hash on this per-step path; a fingerprint only has to tell apart the
    few dozen steps of a loop-detection window, not resist an adversary.
    """
    payload = repr((envelope.get("status"), envelope.get("result"), envelope.get("reason")))
    data = payload.encode()
    return f"{crc32(data):08x}{len(data):x}"
