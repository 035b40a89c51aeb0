"""The MLflow UI on the project's store: ``sentiment ui`` and the browser test start it here.

``mlflow ui`` runs in its own process (its own process group, so stopping it stops its workers
too) on 127.0.0.1 and a free port, pointed at the very store URI the pipeline resolved: a database
path typed by hand that differs by one character opens another, empty store.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.signals import raise_on_signals
from pipeline.stores import Stores
from pipeline.tracking import experiment_link


class UiError(RuntimeError):
    """The UI did not start; the message says what it printed."""


@dataclass
class RunningUi:
    process: subprocess.Popen
    url: str
    log: Path

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM to its process group, SIGKILL after ``grace`` seconds."""
        if self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(grace)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def command(stores: Stores, host: str, port: int) -> list[str]:
    """``mlflow ui`` on ``stores``, from this interpreter's environment."""
    mlflow = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", stores.tracking_uri]
    if stores.registry_uri != stores.tracking_uri:
        mlflow += ["--registry-store-uri", stores.registry_uri]
    return [*mlflow, "--host", host, "--port", str(port), "--workers", "1"]


def start(stores: Stores, log: Path, host: str = "127.0.0.1", port: int | None = None, timeout: float = 90.0) -> RunningUi:
    """Start the UI and wait until it answers ``/health``; its output goes to ``log``.

    Raises UiError with the end of that output when it exits or stays silent for ``timeout`` s.
    """
    port = port or free_port(host)
    url = f"http://{host}:{port}"
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as out:
        process = subprocess.Popen(
            command(stores, host, port), stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    ui = RunningUi(process, url, log)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise UiError(f"mlflow ui exited ({process.returncode}): {_tail(log)}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as answer:
                if answer.status == 200:
                    return ui
        except OSError:
            time.sleep(0.5)
    ui.stop()
    raise UiError(f"mlflow ui did not answer {url}/health within {timeout:.0f} s: {_tail(log)}")


def serve_until_stopped(
    stores: Stores, experiment_name: str, show: Callable[[str], Any], port: int | None = None
) -> None:
    """Start the UI, ``show`` the link to the experiment's runs table, and keep the UI until Ctrl-C
    or SIGTERM; then stop its process group. Raises UiError when it does not start."""
    raise_on_signals()  # SIGTERM too reaches the finally below, not only Ctrl-C
    log = Path(tempfile.mkdtemp(prefix="sentiment-ui-")) / "mlflow-ui.log"
    running = start(stores, log, port=port)
    try:
        show(f"MLflow UI for {stores.tracking_uri} (Ctrl-C stops it; log: {log}):")
        show(landing_url(stores, running.url, experiment_name))
        running.process.wait()
    except KeyboardInterrupt:
        pass
    finally:
        running.stop()


def landing_url(stores: Stores, ui_url: str, experiment_name: str) -> str:
    """Where a person starts: the experiment's runs table in model-training mode with the "Model
    selection" view, or the UI's home while the experiment does not exist yet."""
    experiment = stores.mlflow_client().get_experiment_by_name(experiment_name)
    return ui_url if experiment is None else experiment_link(ui_url, experiment.experiment_id)


def _tail(log: Path, chars: int = 600) -> str:
    return log.read_text(errors="replace")[-chars:].strip() or "(no output)"
