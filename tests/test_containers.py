"""The image and the Compose stack, run for real on a Docker engine (marker ``containers``).

One image build (``make images``: the layer cache makes it seconds when only code changed), one
Compose stack on the host network (deploy/compose.yaml + deploy/compose.host.yaml, every server on
127.0.0.1 with ports of its own), tiny runs on the shipped sample. Without an engine these tests
skip, and fail under ``CI=true`` with the reason.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from pipeline.config import PROJECT_ROOT

pytestmark = [pytest.mark.containers, pytest.mark.integration]

IMAGE = "imdb-sentiment:0.1.0"
DEPLOY = PROJECT_ROOT / "deploy"
PASSWORD = "container-test-s3cret"
TINY = """\
data: {limit: 200, vocab_size: 2000, max_len: 200}
search: {trials: 3, epochs: 1}
train: {epochs: 1}
"""
# The kill phase: trials long enough to be killed mid-way.
SLOW = """\
data: {limit: 400, vocab_size: 2000, max_len: 200}
search: {trials: 4, epochs: 4, cells: [lstm]}
train: {epochs: 1}
"""


def _engine_or_skip() -> None:
    reason = None
    if shutil.which("docker") is None or shutil.which("docker-compose") is None:
        reason = "docker and docker-compose are not installed (.ci/run installs them)"
    else:
        done = subprocess.run(["docker", "info"], capture_output=True, text=True)
        if done.returncode != 0:
            reason = f"no Docker engine answers: {done.stderr.strip()[-300:]}"
    if reason:
        if os.environ.get("CI") == "true":
            pytest.fail(f"container tests cannot run: {reason}")
        pytest.skip(reason)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def images():
    """The project's and PostgreSQL's images, built once per session from this checkout."""
    _engine_or_skip()
    done = subprocess.run(["make", "-s", "images"], cwd=PROJECT_ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return IMAGE


def _sh(*argv: str, env=None, check=True, timeout=600) -> subprocess.CompletedProcess:
    done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=timeout)
    if check:
        assert done.returncode == 0, f"{' '.join(argv)}: {done.stdout[-2000:]}{done.stderr[-2000:]}"
    return done


def test_the_image_runs_as_app_and_trains_and_registers_in_its_home(images, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    home.chmod(0o777)
    done = _sh(
        "docker", "run", "--rm", "--network", "host", "-v", f"{home}:/home/app/.imdb-sentiment",
        images, "run", "--config", "configs/sample.yaml",
        "--trials", "2", "--search-epochs", "1", "--epochs", "1", "--limit", "200",
    )  # fmt: skip
    assert "v1 promoted to champion" in done.stdout, done.stdout[-2000:]
    assert (home / "mlruns" / "mlflow.db").is_file()  # the default store, in the user's home
    who = _sh("docker", "run", "--rm", "--entrypoint", "id", images, "-un").stdout.strip()
    assert who == "app"
    leftovers = _sh(
        "docker", "run", "--rm", "--entrypoint", "sh", images, "-c",
        "ls /tmp/build /opt/venv/lib/python3.11/site-packages/tensorflow/include 2>/dev/null; "
        "find /opt/venv -name extra-ca.crt -o -type d -name tests | head -3",
    ).stdout  # fmt: skip
    assert leftovers.strip() == ""


# --- the Compose stack --------------------------------------------------------------------------


class Stack:
    def __init__(self, tmp: Path):
        configs = tmp / "configs"
        configs.mkdir()
        (configs / "tiny.yaml").write_text(TINY)
        (configs / "slow.yaml").write_text(SLOW)
        self.ports = {name: _free_port() for name in ("POSTGRES_PORT", "MLFLOW_PORT", "PREFECT_PORT")}
        self.env = {
            **os.environ,
            "POSTGRES_PASSWORD": PASSWORD,
            "CONFIG_DIR": str(configs),
            "CONFIG": "configs/tiny.yaml",
            "STUDY": "compose-test",
            "HEARTBEAT_SECONDS": "2",
            "COMPOSE_PROJECT_NAME": f"ctest{os.getpid()}",
            "COMPOSE_FILE": f"{DEPLOY / 'compose.yaml'}:{DEPLOY / 'compose.host.yaml'}",
            **{name: str(port) for name, port in self.ports.items()},
        }
        self.project = self.env["COMPOSE_PROJECT_NAME"]

    def compose(self, *argv: str, check=True, **env) -> subprocess.CompletedProcess:
        return _sh("docker-compose", *argv, env={**self.env, **env}, check=check)

    @property
    def storage(self) -> str:
        return f"postgresql://sentiment:{PASSWORD}@127.0.0.1:{self.ports['POSTGRES_PORT']}/optuna"

    @property
    def tracking(self) -> str:
        return f"http://127.0.0.1:{self.ports['MLFLOW_PORT']}"

    def study(self, name: str = "compose-test"):
        import optuna

        return optuna.load_study(study_name=name, storage=self.storage)

    def exit_codes(self, service: str) -> list[int]:
        ids = self.compose("ps", "-q", service).stdout.split()
        return [int(_sh("docker", "inspect", "-f", "{{.State.ExitCode}}", i).stdout) for i in ids]

    def wait_exited(self, service: str, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ids = self.compose("ps", "-q", service).stdout.split()
            states = [_sh("docker", "inspect", "-f", "{{.State.Status}}", i).stdout.strip() for i in ids]
            if ids and all(state == "exited" for state in states):
                return
            time.sleep(2)
        raise AssertionError(
            f"{service} still running after {timeout} s: {self.compose('logs', '--tail=30').stdout}"
        )


@pytest.fixture(scope="module")
def stack(images, tmp_path_factory):
    """One stack for the whole scenario; down (volumes too) at the end."""
    stack = Stack(tmp_path_factory.mktemp("compose"))
    started = time.monotonic()
    try:
        stack.compose("up", "--no-build", "-d", "--scale", "worker=2")
        stack.wait_exited("train")
        stack.elapsed = time.monotonic() - started
        yield stack
    finally:
        stack.compose("down", "-v", "--remove-orphans", check=False)


def test_compose_search_with_two_workers_trains_and_registers_through_the_server(stack):
    import optuna
    from mlflow.tracking import MlflowClient

    print(f"compose up to train done: {stack.elapsed:.0f} s")
    assert stack.exit_codes("study") == [0] and stack.exit_codes("worker") == [0, 0]
    assert stack.exit_codes("train") == [0], stack.compose("logs", "train").stdout[-3000:]
    study = stack.study()
    finished = [
        t
        for t in study.trials
        if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    ]
    assert len(finished) >= 3 and not [t for t in study.trials if t.state == optuna.trial.TrialState.RUNNING]
    assert len({t.user_attrs["worker"] for t in study.trials}) == 2  # both containers ran trials

    client = MlflowClient(stack.tracking)
    champion = client.get_model_version_by_alias("imdb-sentiment", "champion")
    assert champion.version == "1"
    experiment = client.get_experiment_by_name("imdb-sentiment")
    runs = client.search_runs([experiment.experiment_id])
    trials = [r for r in runs if "optuna_trial" in r.data.tags]
    assert {int(r.data.tags["optuna_trial"]) for r in trials} == {t.number for t in study.trials}
    assert len({r.data.tags["mlflow.parentRunId"] for r in trials}) == 1  # one parent
    # Proxied artifacts: every run's artifacts live in the server's volume.
    assert all(r.info.artifact_uri.startswith("mlflow-artifacts:/") for r in runs)
    listed = _sh(
        "docker", "run", "--rm", "-v", f"{stack.project}_mlflow-artifacts:/a:ro", "--entrypoint", "sh", IMAGE,
        "-c", f"ls /a/{experiment.experiment_id}",
    ).stdout.split()  # fmt: skip
    # The password is in the services' environment only: not on the MLflow server's command line,
    # not in any run's params or tags (the study storage is recorded as postgresql://sentiment:***@…).
    (mlflow_id,) = stack.compose("ps", "-q", "mlflow").stdout.split()
    assert PASSWORD not in _sh("docker", "inspect", "-f", "{{.Path}} {{.Args}}", mlflow_id).stdout
    assert not [r.info.run_id for r in runs if PASSWORD in repr((r.data.params, r.data.tags))]
    with_artifacts = {r.info.run_id for r in runs if client.list_artifacts(r.info.run_id)}
    parent_id = trials[0].data.tags["mlflow.parentRunId"]
    assert parent_id in with_artifacts and with_artifacts <= set(listed)


def _container_of_pid_namespace(stack: Stack, namespace: str) -> str | None:
    for cid in stack.compose("ps", "-q", "worker").stdout.split():
        pid = _sh("docker", "inspect", "-f", "{{.State.Pid}}", cid).stdout.strip()
        if pid != "0" and os.readlink(f"/proc/{pid}/ns/pid") == f"pid:[{namespace}]":
            return cid
    return None


def test_a_killed_worker_loses_nothing(stack):
    """``docker kill`` one worker mid-trial: its trial is failed and retried, the study reaches its
    target with the worker left (or the restarted one), and nothing stays RUNNING."""
    import optuna

    State = optuna.trial.TrialState
    stack.compose(
        "up",
        "--no-build",
        "-d",
        "--scale",
        "worker=2",
        "study",
        "worker",
        STUDY="kill",
        CONFIG="configs/slow.yaml",
    )
    deadline, victim = time.monotonic() + 180, None
    while victim is None and time.monotonic() < deadline:
        try:
            running = [
                t
                for t in stack.study("kill").trials
                if t.state == State.RUNNING and t.user_attrs.get("epochs") is None
            ]
        except KeyError:  # the study is not made yet
            running = []
        for trial in running:
            # A trial's owner is written one attribute at a time: this one may not be there yet.
            namespace = trial.user_attrs.get("pid_namespace")
            if namespace is not None and (cid := _container_of_pid_namespace(stack, namespace)) is not None:
                victim = (trial.number, cid)
                break
        time.sleep(0.5)
    assert victim is not None, "no trial was seen running"
    number, cid = victim
    time.sleep(2)  # mid-trial: well into its first epochs
    _sh("docker", "kill", cid)
    stack.wait_exited("worker", timeout=300)

    trials = stack.study("kill").trials
    states = {t.number: t.state for t in trials}
    assert states[number] == State.FAIL
    retried = [t for t in trials if t.system_attrs.get("failed_trial") == number]
    finished = [t for t in trials if t.state in (State.COMPLETE, State.PRUNED)]
    assert not [t for t in trials if t.state in (State.RUNNING, State.WAITING)], states
    assert len(finished) >= 4, states
    assert retried and retried[0].state in (State.COMPLETE, State.PRUNED), states


def test_down_and_up_keeps_study_runs_and_models_and_study_create_changes_nothing(stack):
    from mlflow.tracking import MlflowClient

    before = len(stack.study().trials)
    stack.compose("down")  # containers and the network, not the volumes
    stack.compose("up", "--no-build", "-d", "study")  # postgres, mlflow, prefect, then study create
    stack.wait_exited("study")
    assert stack.exit_codes("study") == [0]
    assert '"created": false' in stack.compose("logs", "study").stdout
    assert len(stack.study().trials) == before
    client = MlflowClient(stack.tracking)
    assert client.get_model_version_by_alias("imdb-sentiment", "champion").version == "1"
    assert len(client.search_model_versions("name = 'imdb-sentiment'")) == 1


# --- the Kubeflow pipeline, every task in the image ---------------------------------------------


def test_the_kubeflow_pipeline_runs_every_task_in_the_image(images, postgres, mlflow_server, tmp_path):
    """KFP's DockerRunner on the host network: a PostgreSQL study, an MLflow server, two search
    workers whose trials nest under one parent run, a version registered; every trial ran in a
    container (a PID namespace other than this machine's)."""
    import optuna
    from mlflow.tracking import MlflowClient

    from flows import kubeflow
    from pipeline.config import build_config

    cfg = build_config(
        {
            "data.limit": 300,
            "data.max_len": 200,
            "data.vocab_size": 3000,
            "search.trials": 3,
            "search.epochs": 1,
            "search.cells": ("gru",),
            "search.study_name": "kfp-docker",
            "search.workers": 2,
            "search.storage": postgres.url("kfp_docker"),
            "train.epochs": 1,
            "tracking.tracking_uri": mlflow_server.url,
            "tracking.experiment_name": "kfp-docker",
            "tracking.model_name": "kfp-docker-model",
        }
    )
    started = time.monotonic()
    summary = kubeflow.run_local(cfg, root=tmp_path / "kfp", image=images)
    print(f"Kubeflow pipeline with DockerRunner: {time.monotonic() - started:.0f} s")

    client = MlflowClient(mlflow_server.url)
    experiment = client.get_experiment_by_name("kfp-docker")
    runs = client.search_runs([experiment.experiment_id])
    (parent,) = [run for run in runs if run.info.run_id == summary["run_id"]]
    assert parent.info.status == "FINISHED" and parent.data.tags["orchestrator"] == "kubeflow"
    trials = [run for run in runs if run.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    study = optuna.load_study(study_name="kfp-docker", storage=cfg.search.storage)
    assert {int(run.data.tags["optuna_trial"]) for run in trials} == {t.number for t in study.trials}
    assert len(study.trials) >= 3 and len({t.user_attrs["worker"] for t in study.trials}) == 2
    here = str(os.stat("/proc/self/ns/pid").st_ino)  # pipeline.liveness's measure
    assert all(str(t.user_attrs["pid_namespace"]) != here for t in study.trials)
    assert summary["registered_version"] == "1"
    champion = client.get_model_version_by_alias("kfp-docker-model", "champion")
    assert champion.run_id == parent.info.run_id
    assert all(run.info.artifact_uri.startswith("mlflow-artifacts:/") for run in runs)

