"""Start a test worker script in a subprocess of its own (a real second process)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def spawn(worker: Path, *args: str) -> subprocess.Popen[str]:
    """Run ``python worker args...`` with this environment, capturing text output."""
    return subprocess.Popen(
        [sys.executable, str(worker), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ),
    )
