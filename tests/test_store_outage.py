"""A tracking server that dies mid-search: the search stops at once, in one line, and the next run
(once the server is back) closes what was left RUNNING and goes on.

A real ``mlflow server`` (tests/services.py) on a SQLite backend, a real ``sentiment run`` in its
own process group; the server is stopped while a trial trains, then started again on the same
backend.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from services import start_mlflow_server

from pipeline.config import SAMPLE_ARCHIVE

pytestmark = [pytest.mark.integration, pytest.mark.slow]

STUDY = "outage"


def _run(tmp_path: Path, tracking_uri: str, log: Path) -> subprocess.Popen:
    command = [str(Path(sys.executable).parent / "sentiment"), "run", "--data", str(SAMPLE_ARCHIVE)]
    command += ["--limit", "400", "--max-len", "200", "--vocab-size", "2000", "--cell", "gru", "--workers", "1"]
    command += ["--trials", "4", "--search-epochs", "4", "--epochs", "1", "--study-name", STUDY]
    command += ["--tracking-uri", tracking_uri, "--storage", f"sqlite:///{tmp_path / 'optuna.db'}"]
    command += ["--cache-dir", str(tmp_path / "cache")]
    return subprocess.Popen(command, stdout=log.open("wb"), stderr=subprocess.PIPE, start_new_session=True)


def _states(tmp_path: Path) -> list[str]:
    with sqlite3.connect(tmp_path / "optuna.db", timeout=30) as connection:
        return [row[0] for row in connection.execute("SELECT state FROM trials ORDER BY number")]


def _running_runs(backend: Path) -> list[str]:
    with sqlite3.connect(backend, timeout=30) as connection:
        return [row[0] for row in connection.execute("SELECT name FROM runs WHERE status = 'RUNNING'")]


def test_a_tracking_server_lost_mid_search_stops_it_in_one_line_and_the_next_run_goes_on(tmp_path):
    backend = tmp_path / "backend.db"
    server = start_mlflow_server(f"sqlite:///{backend}", tmp_path / "server")
    log = tmp_path / "run.log"
    process = _run(tmp_path, server.url, log)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and process.poll() is None:
            if backend.exists() and any(name.startswith("trial-") for name in _running_runs(backend)):
                break
            time.sleep(0.3)
        assert process.poll() is None, log.read_text()[-3000:]
        time.sleep(2)  # inside the trial's epochs
        server.stop()
        _, stderr = process.communicate(timeout=180)
    finally:
        if process.poll() is None:
            process.kill()
    lines = [line for line in stderr.decode().splitlines() if line.strip()]
    assert process.returncode != 0
    assert len(lines) == 1 and "MLflow tracking store" in lines[0] and "Connection refused" in lines[0], lines
    assert "***" not in lines[0] or "@" in server.url  # nothing to redact: the URL has no password
    states = _states(tmp_path)
    assert states.count("FAIL") <= 1 and len(states) <= 2, states  # no burst of failed trials
    assert "RUNNING" not in states

    # The server is back: the next run closes what the lost one left RUNNING and reaches the target.
    server = start_mlflow_server(f"sqlite:///{backend}", tmp_path / "server")
    try:
        again = _run(tmp_path, server.url, tmp_path / "again.log")
        _, stderr = again.communicate(timeout=400)
        assert again.returncode == 0, stderr.decode()[-3000:]
        assert _running_runs(backend) == []
        finished = [state for state in _states(tmp_path) if state in ("COMPLETE", "PRUNED")]
        assert len(finished) >= 4
    finally:
        server.stop()
