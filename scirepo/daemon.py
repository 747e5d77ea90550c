"""Background processes of the operator's machine (the local registry, the mail catcher):
a pid file says which process it is."""

from __future__ import annotations

import os
import signal
from pathlib import Path


def running(pidfile: Path) -> bool:
    """Whether the process named in `pidfile` is alive."""
    try:
        os.kill(int(pidfile.read_text()), 0)
        return True
    except (OSError, ValueError):
        return False


def stop(pidfile: Path) -> None:
    """Stop the process named in `pidfile` (if alive) and forget it."""
    if running(pidfile):
        os.kill(int(pidfile.read_text()), signal.SIGTERM)
    pidfile.unlink(missing_ok=True)
