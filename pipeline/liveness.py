"""Is the process that owns a trial or a run still alive? Told at once on the same machine.

A process killed with SIGKILL (or by the out-of-memory killer) cannot close what it owns. Trials
and runs therefore carry where they run (``here()``), and whoever starts next on the same machine
closes what belongs to a process that is gone. Other machines' leftovers are told by heartbeats.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import psutil


def _pid_namespace() -> str:
    """The process-id namespace this process lives in: containers on one host with host
    networking share the host name, but each numbers its processes alone (each worker is pid 1)."""
    try:
        return str(os.stat("/proc/self/ns/pid").st_ino)
    except OSError:  # not Linux: one namespace per host
        return "host"


def here() -> dict[str, Any]:
    """This process: host name, pid namespace, pid and start time (a pid alone may be reused)."""
    return {
        "host": socket.gethostname(),
        "pid_namespace": _pid_namespace(),
        "pid": os.getpid(),
        "pid_started": round(psutil.Process().create_time(), 2),
    }


def is_gone(owner: Mapping[str, Any]) -> bool:
    """True only when ``owner`` (``here()`` of some process, values possibly as strings) ran on
    this machine, in this pid namespace, and that process no longer exists; False when unknown or
    elsewhere (another machine or container: its heartbeat tells).

    An owner without its start time is unknown, not gone: a trial's attributes are written one at
    a time, and a neighbour that read one between ``pid`` and ``pid_started`` failed a live trial
    (its worker then died on "Cannot tell a FAIL trial")."""
    if owner.get("host") != socket.gethostname() or str(owner.get("pid_namespace")) != _pid_namespace():
        return False
    if any(owner.get(key) in (None, "") for key in ("pid", "pid_started")):
        return False
    try:
        started = psutil.Process(int(owner["pid"])).create_time()
    except psutil.NoSuchProcess:
        return True
    return abs(started - float(owner["pid_started"])) > 1.0


@contextmanager
def repeating(action: Callable[[], None], every: float, name: str, join_timeout: float | None = None) -> Iterator[None]:
    """``action()`` every ``every`` seconds on a daemon thread while the block runs (a heartbeat,
    a progress line); the thread is stopped and joined when the block ends."""
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(every):
            action()

    thread = threading.Thread(target=loop, name=name, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=join_timeout)
