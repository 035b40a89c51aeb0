"""Ctrl-C and SIGTERM: stop the work in hand cleanly, once; a second signal stops at once.

SIGTERM is what Prefect cancellation, Kubernetes and systemd send, and by default it kills a
Python process on the spot: no ``finally``, runs left RUNNING, trials never failed. Inside
``stop_on_signals()`` SIGINT and SIGTERM both raise ``Interrupted`` in the main thread instead, a
``KeyboardInterrupt``, so every layer treats it as one: Optuna fails the trial and re-raises,
``tracking`` closes the open runs KILLED with the reason, the registry deletes a version it had
not finished, and nothing after the signal registers or promotes. A second signal while that
cleanup runs ends the process and its children at once.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger(__name__)

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """The process was asked to stop by ``signum``."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(f"interrupted by {signal.Signals(signum).name}")

    def __reduce__(self):  # crosses from search workers to the parent process intact
        return (Interrupted, (self.signum,))

    @property
    def exit_code(self) -> int:
        """128 + the signal's number, as a shell reports it: 130 for SIGINT, 143 for SIGTERM."""
        return 128 + self.signum


# Signals received and not yet raised, and how deep we are in code that must not be interrupted
# at an arbitrary bytecode (inside TensorFlow's C++ calls an exception raised by a signal handler
# can be swallowed or leave the graph half-built): there, ``raise_if_stopped`` raises at the next
# safe point (a Keras batch end) instead.
_pending: list[int] = []
_deferring = [0]


def _handle(signum: int, frame) -> None:
    if _pending:  # the second signal: no more cleaning up
        kill_descendants()
        os._exit(128 + signum)
    _pending.append(signum)
    if not _deferring[0]:
        raise Interrupted(signum)


def raise_if_stopped() -> None:
    """Raise ``Interrupted`` if a signal arrived (the safe point of a ``deferred`` block)."""
    if _pending:
        raise Interrupted(_pending[0])


@contextmanager
def deferred() -> Iterator[None]:
    """Inside, a signal is raised at the next ``raise_if_stopped`` call rather than at once."""
    _deferring[0] += 1
    try:
        yield
    finally:
        _deferring[0] -= 1
    raise_if_stopped()


@contextmanager
def stop_on_signals() -> Iterator[None]:
    """Within the block, the first SIGINT/SIGTERM raises ``Interrupted`` (at once, or at the next
    safe point of a ``deferred`` block); the next one kills this process's children and exits at
    once with 128 + its number. A no-op off the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.signal(signum, _handle) for signum in SIGNALS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if previous[signal.SIGINT] is not _handle:  # the outermost block: a signal seen is dealt with
            _pending.clear()


def raise_on_signals() -> None:
    """In a worker process: SIGINT and SIGTERM stop it as in ``stop_on_signals`` (the default
    SIGTERM would kill it before its trial and run are closed). A worker often gets two (the
    terminal's to the whole group, then its parent's): the second changes nothing, and the parent
    kills a worker that has not finished its cleanup in time."""

    def handle(signum: int, frame) -> None:
        if _pending:
            return
        _pending.append(signum)
        if not _deferring[0]:
            raise Interrupted(signum)

    for signum in SIGNALS:
        signal.signal(signum, handle)


def stop(process: subprocess.Popen, grace: float) -> None:
    """SIGTERM ``process``, SIGKILL it if it is still alive after ``grace`` seconds; reap it."""
    process.terminate()
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def descendants(pid: int | None = None) -> list[int]:
    """Every live process below ``pid`` (default: this one), children first."""
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, pending = [], [pid or os.getpid()]
    while pending:
        children = parents.get(pending.pop(), [])
        found += children
        pending += children
    return found


def kill_descendants(sig: int = signal.SIGKILL) -> None:
    for pid in descendants():
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            continue
