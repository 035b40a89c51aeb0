"""Is the process that owns a trial or a run still alive? Told at once on the same machine.

A process killed with SIGKILL (or by the out-of-memory killer) cannot close what it owns. Trials
and runs therefore carry where they run (``here()``), and whoever starts next on the same machine
closes what belongs to a process that is gone. Other machines' leftovers are told by heartbeats.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from typing import Any

import psutil


def here() -> dict[str, Any]:
    """This process: host name, pid and start time (a pid alone may be reused)."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "pid_started": round(psutil.Process().create_time(), 2)}


def is_gone(owner: Mapping[str, Any]) -> bool:
    """True only when ``owner`` (``here()`` of some process, values possibly as strings) ran on
    this machine and that process no longer exists; False when unknown or on another machine."""
    if owner.get("host") != socket.gethostname() or owner.get("pid") in (None, ""):
        return False
    try:
        started = psutil.Process(int(owner["pid"])).create_time()
    except psutil.NoSuchProcess:
        return True
    return abs(started - float(owner.get("pid_started") or 0.0)) > 1.0
