"""Step fingerprints: a short, stable digest of what an agent produced."""

from __future__ import annotations

from hashlib import blake2b
from typing import Any


def digest(envelope: dict[str, Any]) -> str:
    """A 16-hex-digit digest of an envelope's status, result and reason.

    Envelopes in state are JSON-ready dicts (``envelope_to_dict``), whose ``repr`` is
    stable across processes, and ``repr`` is several times cheaper than ``json.dumps``
    on this per-step path.
    """
    payload = repr((envelope.get("status"), envelope.get("result"), envelope.get("reason")))
    return blake2b(payload.encode(), digest_size=8).hexdigest()
