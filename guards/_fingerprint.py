"""Step fingerprints: a short, stable digest of what an agent produced."""

from __future__ import annotations

import hashlib
import json
from typing import Any


def digest(envelope: dict[str, Any]) -> str:
    """A 16-hex-digit digest of an envelope's status, result and reason."""
    payload = json.dumps(
        (envelope.get("status"), envelope.get("result"), envelope.get("reason")),
        sort_keys=True,
        separators=(",", ":"),
        default=str,
        ensure_ascii=False,
    )
    return hashlib.blake2b(payload.encode(), digest_size=8).hexdigest()
