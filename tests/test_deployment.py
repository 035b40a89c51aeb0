"""Scheduled retraining against a real Prefect server: serve, trigger as the scheduler would, skip.

Starts ``prefect server start`` on 127.0.0.1 with its own home and database under tmp_path, serves
the deployment with ``sentiment serve`` in a second process, triggers runs through the API and
checks the MLflow runs and the registry. Every process it starts is stopped afterwards.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from pipeline.config import SAMPLE_ARCHIVE

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
FLOW = "imdb-sentiment-training"
DEPLOYMENT = f"{FLOW}/test-retraining"
CRON = "30 4 * * 0"
MODEL = "deploy-test-model"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    out = log.open("w")
    return subprocess.Popen(
        command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
    )


def _stop(process: subprocess.Popen) -> None:
    """SIGTERM the process group (a server or runner and its children), then SIGKILL if needed."""
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


def _wait_for(check, timeout: float, what: str, log: Path, process: subprocess.Popen):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if result := check():
                return result
        except Exception:
            pass
        time.sleep(1)
    raise AssertionError(f"{what} not ready (exit code {process.poll()}); log:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory):
    """A real Prefect server on a free port; yields (api_url, env for child processes)."""
    root = tmp_path_factory.mktemp("prefect")
    port = _free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env |= {
        "PREFECT_HOME": str(root / "home"),
        "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{root / 'prefect.db'}",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_UI_ENABLED": "false",
        "PREFECT_LOGGING_LEVEL": "INFO",
    }
    log = root / "server.log"
    server = _start(
        [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env,
        log,
    )
    try:
        _wait_for(
            lambda: urllib.request.urlopen(f"{api_url}/health", timeout=2).status == 200,
            120,
            "server",
            log,
            server,
        )
        yield api_url, env | {"PREFECT_API_URL": api_url}
    finally:
        _stop(server)


@pytest.fixture(scope="module")
def served(prefect_server, tmp_path_factory):
    """``sentiment schedule`` on the tiny sample; yields (api_url, tracking_uri) once registered."""
    api_url, env = prefect_server
    store = tmp_path_factory.mktemp("store")
    tracking_uri = f"sqlite:///{store / 'mlruns' / 'mlflow.db'}"
    options = {
        "--name": "test-retraining",
        "--cron": CRON,
        "--data": str(SAMPLE_ARCHIVE),
        # Enough to learn: the first champion must beat the majority class significantly.
        "--limit": "600",
        "--max-len": "200",
        "--vocab-size": "3000",
        "--trials": "1",
        "--search-epochs": "1",
        "--epochs": "4",
        "--cell": "gru",
        "--study-name": "deploy-test",
        "--cache-dir": str(store / "cache"),
        "--tracking-uri": tracking_uri,
        "--experiment-name": "deploy-test",
        "--model-name": MODEL,
    }
    command = [
        sys.executable,
        "-m",
        "flows.cli",
        "schedule",
        *[part for item in options.items() for part in item],
    ]
    log = store / "serve.log"
    runner = _start(command, env, log)
    try:
        with _api(api_url):
            _wait_for(lambda: _deployment(), 180, "deployment", log, runner)
        yield api_url, tracking_uri, log
    finally:
        _stop(runner)


def _api(api_url: str):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    return temporary_settings(updates={PREFECT_API_URL: api_url})


def _deployment():
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return client.read_deployment_by_name(DEPLOYMENT)


def _trigger(log: Path, **parameters):
    """Create a flow run of the deployment, as the scheduler does, and wait for its final state."""
    from prefect.deployments import run_deployment

    flow_run = run_deployment(DEPLOYMENT, parameters=parameters, timeout=240, poll_interval=2)
    assert flow_run.state is not None and flow_run.state.is_final(), log.read_text()[-3000:]
    assert flow_run.state.is_completed(), f"{flow_run.state}\n{log.read_text()[-5000:]}"
    return flow_run


def _markdown(flow_run_id) -> str:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
    return "\n".join(str(artifact.data) for artifact in artifacts if artifact.type == "markdown")


def _mlflow(tracking_uri: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri, registry_uri=tracking_uri)
    experiment = client.get_experiment_by_name("deploy-test")
    return client, client.search_runs([experiment.experiment_id], "tags.stage = 'pipeline'")


def test_deployment_stores_cron_schedule_parameters_and_a_one_run_limit(served):
    api_url, _, _ = served
    with _api(api_url):
        deployment = _deployment()
    assert [schedule.schedule.cron for schedule in deployment.schedules] == [CRON]
    assert deployment.schedules[0].active
    assert deployment.global_concurrency_limit is not None
    assert deployment.global_concurrency_limit.limit == 1
    config = deployment.parameters["config"]  # a partial dict: only what the command set
    assert config["search"]["trials"] == 1 and config["tracking"]["model_name"] == MODEL
    assert "train" in config and "batch_size" not in config["train"]


def test_triggered_run_trains_and_registers_then_unchanged_rerun_is_skipped(served):
    api_url, tracking_uri, log = served
    with _api(api_url):
        first = _trigger(log)
        assert first.name.startswith(f"train-{MODEL}-")
        assert "| Outcome | trained |" in _markdown(first.id)
        client, runs = _mlflow(tracking_uri)
        assert [run.info.status for run in runs] == ["FINISHED"]
        champion = client.get_model_version_by_alias(MODEL, "champion")
        assert champion.run_id == runs[0].info.run_id

        second = _trigger(log)
        assert "| Outcome | skipped |" in _markdown(second.id)
    client, runs = _mlflow(tracking_uri)
    skipped = [run for run in runs if run.data.tags.get("outcome") == "skipped"]
    assert len(runs) == 2 and len(skipped) == 1
    assert skipped[0].info.status == "FINISHED"
    assert "unchanged since champion" in skipped[0].data.tags["skip_reason"]
    assert len(client.search_model_versions(f"name = '{MODEL}'")) == 1  # nothing new registered
    assert client.get_model_version_by_alias(MODEL, "champion").version == champion.version


def test_forced_rerun_retrains_despite_unchanged_data_and_config(served):
    api_url, tracking_uri, log = served
    with _api(api_url):
        forced = _trigger(log, force=True)  # merged with the deployment's own parameters
    assert forced.name.startswith(f"force-train-{MODEL}-")
    client, runs = _mlflow(tracking_uri)
    trained = [run for run in runs if run.data.tags.get("outcome") != "skipped"]
    assert len(trained) == 2 and all(run.info.status == "FINISHED" for run in trained)
    assert len(client.search_model_versions(f"name = '{MODEL}'")) == 2
