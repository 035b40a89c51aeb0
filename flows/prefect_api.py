"""A Prefect API for the CLI's flow runs: the configured one, else a temporary local server.

Prefect starts its own temporary server when ``PREFECT_API_URL`` is unset, but in this process's
group: the Ctrl-C a terminal sends to the group killed it too, and the flow then spent minutes in
connection errors while closing its runs. This one runs the same app in a session of its own, so
only this process decides when it stops: after the runs are closed, or when this process is gone
(``flows.prefect_server`` watches its parent).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import prefect
from prefect.settings import (
    PREFECT_API_URL,
    PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS,
    get_current_settings,
    temporary_settings,
)

from pipeline.http_server import free_port
from pipeline.signals import stop


@contextmanager
def prefect_api() -> Iterator[str]:
    """Yield the Prefect API URL this process's flows report to, starting a local one if needed."""
    if PREFECT_API_URL.value():
        yield PREFECT_API_URL.value()
        return
    port = free_port()
    # flows.prefect_server: uvicorn that stops when this process is gone, even SIGKILLed
    command = [sys.executable, "-m", "flows.prefect_server", str(os.getpid())]
    command += ["--app-dir", str(prefect.__module_path__.parent)]
    command += ["--factory", "prefect.server.api.server:create_app", "--host", "127.0.0.1"]
    command += ["--port", str(port), "--log-level", "error", "--lifespan", "on"]
    env = {
        **os.environ,
        "PREFECT_UI_ENABLED": "0",
        "PREFECT__SERVER_EPHEMERAL": "1",
        "PREFECT__SERVER_FINAL": "1",
        **get_current_settings().to_environment_variables(exclude_unset=True),
    }
    server = subprocess.Popen(command, env=env, start_new_session=True, stdout=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/api"
    try:
        _wait_until_healthy(url, server, PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value())
        with temporary_settings(updates={PREFECT_API_URL: url}):
            yield url
    finally:
        _flush_logs()
        stop(server, grace=10)


def _wait_until_healthy(url: str, server: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the temporary Prefect API exited with code {server.returncode}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"the temporary Prefect API did not answer in {timeout:.0f} s ({url})")


def _flush_logs() -> None:
    """Send what Prefect still queues for the API (logs, events) before the API goes away; at
    exit its workers would otherwise retry a closed port for a minute."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for worker in (APILogWorker, EventsWorker):
        with contextlib.suppress(Exception):  # a lost log line must not hide the real outcome
            worker.drain_all(timeout=5)


def cancelled_if_interrupted(flow, flow_run, state) -> None:
    """An ``on_crashed`` hook: a run a user stopped (Ctrl-C, SIGTERM: ``Interrupted``, or
    Prefect's ``TerminationSignal`` where its handler was the one installed) was
    cancelled, not crashed. Prefect records every BaseException as Crashed; this sets the run
    Cancelled with the signal's name, and keeps Crashed for real crashes. The hook runs while
    the engine handles the exception, so ``sys.exc_info()`` is what stopped the run."""
    import signal

    from prefect.client.orchestration import get_client
    from prefect.exceptions import TerminationSignal
    from prefect.states import Cancelled

    from pipeline.signals import Interrupted

    stopped = sys.exc_info()[1]
    if isinstance(stopped, TerminationSignal):  # Prefect's own SIGTERM handler, outside ours
        stopped = Interrupted(stopped.signal if isinstance(stopped.signal, int) else signal.SIGTERM)
    if not isinstance(stopped, Interrupted):
        return
    with get_client(sync_client=True) as client:
        client.set_flow_run_state(flow_run.id, Cancelled(message=f"{stopped} (stopped by its user)"), force=True)
