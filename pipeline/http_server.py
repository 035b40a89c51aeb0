"""`mlflow models serve` as a child process: start it, wait until it answers, post JSON, stop it.

Used by the HTTP tests and the serving benchmark, the way an operator runs the registry model:
``mlflow models serve -m models:/NAME@champion --env-manager local``. That command starts a bare
``uvicorn``, so this interpreter's ``bin`` goes first on PATH (else it exits with code 127).
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


@contextmanager
def model_server(
    model_uri: str, tracking_uri: str, log_file: Path, workers: int = 1, startup_timeout: float = 120.0
) -> Iterator[str]:
    """Serve ``model_uri`` on 127.0.0.1 and yield its base URL; the process is stopped on exit.

    The server's output goes to ``log_file``. Raises RuntimeError (with the log's tail) when it
    exits before answering ``/ping``, TimeoutError when it does not answer in time.
    """
    bin_dir = Path(sys.executable).parent
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        "MLFLOW_TRACKING_URI": tracking_uri,
    }
    port = free_port()
    command = [str(bin_dir / "mlflow"), "models", "serve", "-m", model_uri, "--env-manager", "local"]
    command += ["--host", "127.0.0.1", "--port", str(port), "--workers", str(workers)]
    with log_file.open("wb") as log:
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            _wait_for_ping(url, process, log_file, startup_timeout)
            yield url
        finally:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _wait_for_ping(url: str, process: subprocess.Popen, log_file: Path, timeout: float) -> None:
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
