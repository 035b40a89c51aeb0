"""MLflow's scoring server for a registered model: the command ``sentiment serve`` runs, and the
same as a child process (start it, wait until it answers, post JSON, stop it) for the HTTP tests
and the serving benchmark.

``mlflow models serve -m models:/NAME@champion --env-manager local`` starts a bare ``uvicorn``, so
this interpreter's ``bin`` goes first on PATH (else it exits with code 127).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def serve_command(
    model_uri: str, tracking_uri: str, host: str = "127.0.0.1", port: int = 5001, workers: int = 1
) -> tuple[list[str], dict[str, str]]:
    """(argv, environment) of ``mlflow models serve`` for ``model_uri`` in the store at ``tracking_uri``."""
    bin_dir = Path(sys.executable).parent
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        "MLFLOW_TRACKING_URI": tracking_uri,
        "MLFLOW_REGISTRY_URI": tracking_uri,
    }
    command = [str(bin_dir / "mlflow"), "models", "serve", "-m", model_uri, "--env-manager", "local"]
    command += ["--host", host, "--port", str(port), "--workers", str(workers)]
    return command, env


@contextmanager
def model_server(
    model_uri: str, tracking_uri: str, log_file: Path, workers: int = 1, startup_timeout: float = 120.0
) -> Iterator[str]:
    """Serve ``model_uri`` on 127.0.0.1 and yield its base URL; the process is stopped on exit.

    The server's output goes to ``log_file``. Raises RuntimeError (with the log's tail) when it
    exits before answering ``/ping``, TimeoutError when it does not answer in time.
    """
    port = free_port()
    command, env = serve_command(model_uri, tracking_uri, "127.0.0.1", port, workers)
    with log_file.open("wb") as log:
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            wait_for_ping(url, process, log_file, startup_timeout)
            yield url
        finally:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def wait_for_ping(url: str, process: subprocess.Popen, log_file: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = log_file.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"mlflow models serve exited with {process.returncode}:\n{tail}")
        try:
            with urllib.request.urlopen(f"{url}/ping", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"no /ping answer from {url} in {timeout} s (log: {log_file})")


def post_json(url: str, body: bytes | dict[str, Any], timeout: float = 120.0) -> tuple[int, dict[str, Any]]:
    """POST ``body`` (a dict is JSON-encoded) and return (status, decoded JSON answer)."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(url, data, {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")
