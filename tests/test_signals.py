"""Ctrl-C and SIGTERM: a real `sentiment run` in its own process group, stopped mid-trial and
mid-training, must close every run and trial, register nothing and leave no process behind."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from pipeline.config import SAMPLE_ARCHIVE
from pipeline.signals import Interrupted, deferred, descendants, raise_if_stopped, stop_on_signals


def test_a_signal_raises_interrupted_with_the_shells_exit_code():
    for signum, code in ((signal.SIGINT, 130), (signal.SIGTERM, 143)):
        with pytest.raises(Interrupted) as stopped, stop_on_signals():
            os.kill(os.getpid(), signum)
            time.sleep(1)
        assert stopped.value.exit_code == code and str(stopped.value) == f"interrupted by {signum.name}"
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # restored


def test_inside_a_deferred_block_the_signal_waits_for_the_next_safe_point():
    reached = []
    with pytest.raises(Interrupted), stop_on_signals(), deferred():
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.2)
        reached.append("after the signal")  # not interrupted here...
        raise_if_stopped()  # ...but here
        reached.append("never")
    assert reached == ["after the signal"]


def test_a_second_signal_exits_at_once_and_takes_the_children_along(tmp_path):
    script = textwrap.dedent(
        """
        import subprocess, sys, time
        from pipeline.signals import stop_on_signals
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        print(child.pid, flush=True)
        with stop_on_signals():
            try:
                time.sleep(60)
            except KeyboardInterrupt:
                time.sleep(60)  # a slow cleanup, cut short by the second signal
        """
    )
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    child = int(process.stdout.readline())
    time.sleep(0.5)
    process.send_signal(signal.SIGINT)
    time.sleep(0.5)
    started = time.monotonic()
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=10) == 130
    assert time.monotonic() - started < 2
    time.sleep(0.2)
    assert not _alive(child)


# --- a real pipeline run, stopped ------------------------------------------------------------


def _alive(pid: int) -> bool:
    """Running, not a zombie waiting to be reaped."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _group(pgid: int) -> list[int]:
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(stat.parent.name))
    return members


def _query(db: Path, sql: str) -> list[tuple]:
    if not db.exists():
        return []
    with sqlite3.connect(db, timeout=30) as connection:
        try:
            return connection.execute(sql).fetchall()
        except sqlite3.OperationalError:  # tables not created yet
            return []


def _start_run(tmp_path: Path, cache: Path, workers: int = 2) -> subprocess.Popen:
    command = [str(Path(sys.executable).parent / "sentiment"), "run", "--data", str(SAMPLE_ARCHIVE)]
    command += ["--limit", "400", "--max-len", "200", "--vocab-size", "2000", "--cell", "gru"]
    command += ["--trials", "6", "--workers", str(workers), "--search-epochs", "4", "--epochs", "8", "--patience", "8"]
    command += ["--tracking-uri", f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}", "--cache-dir", str(cache)]
    log = (tmp_path / "run.log").open("wb")
    # The run's own temporary Prefect API, on a database the test reads afterwards.
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env["PREFECT_API_DATABASE_CONNECTION_URL"] = f"sqlite+aiosqlite:///{tmp_path / 'prefect.db'}"
    return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env)


def _wait_until(condition, process: subprocess.Popen, log: Path, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        assert process.poll() is None, log.read_text()[-3000:]
        time.sleep(0.3)
    pytest.fail(f"timed out waiting\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("signals-cache")


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.parametrize(
    ("signum", "moment", "workers"),
    [
        (signal.SIGINT, "trial", 2),
        (signal.SIGTERM, "final training", 2),
        # Prefect's own SIGTERM handler raised its TerminationSignal (a BaseException) inside the
        # Keras step; Optuna fails a trial only on Exception or KeyboardInterrupt: it stayed RUNNING.
        (signal.SIGTERM, "trial", 1),
    ],
)
def test_a_signal_to_the_group_stops_everything_cleanly(tmp_path, cache, signum, moment, workers):
    mlflow_db, optuna_db, log = (
        tmp_path / "store" / "mlflow.db",
        tmp_path / "store" / "optuna.db",
        tmp_path / "run.log",
    )
    process = _start_run(tmp_path, cache, workers)
    try:
        if moment == "trial":
            running = "select count(*) from runs r join tags t on r.run_uuid = t.run_uuid where t.key = 'stage' and t.value = 'trial' and r.status = 'RUNNING'"
            _wait_until(lambda: (_query(mlflow_db, running) or [(0,)])[0][0] > 0, process, log)
        else:
            _wait_until(lambda: "final gru: epoch 1/" in log.read_text(errors="replace"), process, log)
        time.sleep(1.5)
        children = descendants(process.pid)
        assert children, "the run has its Prefect API and search workers by now"
        started = time.monotonic()
        os.killpg(process.pid, signum)
        code = process.wait(timeout=60)
        seconds = time.monotonic() - started
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    output = log.read_text(errors="replace")
    assert code == 128 + signum, output[-3000:]
    assert seconds < 15, f"{seconds:.1f} s to stop"
    assert f"interrupted by {signum.name}" in output.splitlines()[-1]
    statuses = _query(mlflow_db, "select name, status from runs")
    assert statuses and not [name for name, status in statuses if status == "RUNNING"], statuses
    parent = [status for name, status in statuses if name.startswith("pipeline-")]
    assert parent == ["KILLED"]
    assert _query(mlflow_db, "select count(*) from model_versions") == [(0,)]  # nothing registered
    trials = [state for (state,) in _query(optuna_db, "select state from trials")]
    assert "RUNNING" not in trials
    if moment == "trial":
        assert "FAIL" in trials
    # Stopped by its user: Cancelled in the Prefect UI, not Crashed (kept for real crashes).
    flow_runs = _query(tmp_path / "prefect.db", "select state_type, state_name from flow_run")
    assert flow_runs and all(state == ("CANCELLED", "Cancelled") for state in flow_runs), flow_runs
    time.sleep(0.5)
    assert not _group(process.pid), "a process of the run's group is still alive"
    assert not [pid for pid in children if _alive(pid)], "a child (search worker, Prefect API) is still alive"


@pytest.mark.integration
@pytest.mark.slow
def test_after_a_sigkill_of_the_whole_run_the_next_ui_start_up_closes_its_runs_and_trials(tmp_path, cache):
    """Issue 24: after a SIGKILL of the embedded run, its trials and runs stayed RUNNING until a
    later `run` of the same study (and past the heartbeat grace). The owner's pid is known on this
    machine: any command that opens the store closes them, `sentiment ui` here."""
    mlflow_db, optuna_db, log = (tmp_path / "store" / "mlflow.db", tmp_path / "store" / "optuna.db", tmp_path / "run.log")
    process = _start_run(tmp_path, cache, workers=1)
    try:
        running = "select count(*) from runs r join tags t on r.run_uuid = t.run_uuid where t.key = 'stage' and t.value = 'trial' and r.status = 'RUNNING'"
        _wait_until(lambda: (_query(mlflow_db, running) or [(0,)])[0][0] > 0, process, log)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
    time.sleep(0.5)
    assert "RUNNING" in [state for (state,) in _query(optuna_db, "select state from trials")]

    ui = subprocess.Popen(
        [str(Path(sys.executable).parent / "sentiment"), "ui", "--tracking-uri", f"sqlite:///{mlflow_db}"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        started = time.monotonic()
        lines = []  # up to the link: the store was opened before the UI started
        while not any("http://127.0.0.1:" in line for line in lines) and time.monotonic() - started < 60:
            lines.append(ui.stdout.readline())
        assert any("http://127.0.0.1:" in line for line in lines), lines
    finally:
        os.killpg(ui.pid, signal.SIGTERM)
        ui.wait(timeout=30)
    assert time.monotonic() - started < 60
    assert [state for (state,) in _query(optuna_db, "select state from trials") if state == "RUNNING"] == []
    statuses = _query(mlflow_db, "select name, status from runs")
    assert not [name for name, status in statuses if status == "RUNNING"], statuses
