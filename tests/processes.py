"""Killing a child process at a known point of its work, as a power cut or `kill -9` would."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path


def kill_when(marker: Path, child: subprocess.Popen, timeout: float, what: str) -> None:
    """SIGKILL ``child`` once it has written ``marker`` (``what`` names that point if it never gets there)."""
    deadline = time.time() + timeout
    while not marker.exists() and time.time() < deadline and child.poll() is None:
        time.sleep(0.2)
    assert marker.exists(), f"the child never reached {what}"
    os.kill(child.pid, signal.SIGKILL)
    child.wait(30)
