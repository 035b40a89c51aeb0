"""Scale-out on real engines: `sentiment study create` and `sentiment worker` processes against a
private PostgreSQL (the Optuna study) and an MLflow tracking server on it (runs and artifacts).

Every command runs as a user would run it, in its own process, configured by environment
variables only (``MLFLOW_TRACKING_URI``, ``SENTIMENT_*``), on 200 reviews of the shipped sample.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from pipeline.config import SAMPLE_ARCHIVE

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SENTIMENT = str(Path(sys.executable).parent / "sentiment")
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("prepared")  # prepared once, read by every process


@pytest.fixture
def engines(request, postgres, mlflow_server, cache_dir):
    """The environment of every process in a test: the server, a fresh study database, tiny data."""
    database = "optuna_" + request.node.name.split("[")[0].removeprefix("test_")[:40]
    return {
        **os.environ,
        "MLFLOW_TRACKING_URI": mlflow_server.url,
        "SENTIMENT_SEARCH_STORAGE": postgres.url(database),
        "SENTIMENT_DATA_PATH": str(SAMPLE_ARCHIVE),
        "SENTIMENT_DATA_CACHE_DIR": str(cache_dir),
        "SENTIMENT_DATA_LIMIT": "200",
        "SENTIMENT_DATA_MAX_LEN": "120",
        "SENTIMENT_DATA_VOCAB_SIZE": "1000",
        "SENTIMENT_SEARCH_EPOCHS": "3",
        "SENTIMENT_SEARCH_HEARTBEAT_SECONDS": "2",
        "SENTIMENT_TRACKING_EXPERIMENT_NAME": f"scale-out-{database}",
    }


def sentiment(env: dict[str, str], *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([SENTIMENT, *args], env=env, capture_output=True, text=True, timeout=timeout)


def start(env: dict[str, str], *args: str) -> subprocess.Popen:
    return subprocess.Popen([SENTIMENT, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(process: subprocess.Popen, timeout: float = 300) -> dict:
    out, err = process.communicate(timeout=timeout)
    assert process.returncode == 0, err[-3000:]
    return json.loads(out)


def create(env: dict[str, str], study: str, trials: int) -> dict:
    done = sentiment(env, "study", "create", "--study-name", study, "--trials", str(trials))
    assert done.returncode == 0 and done.stdout.startswith("{"), done.stderr[-3000:]
    return json.loads(done.stdout)


_STORAGES: dict[str, optuna.storages.RDBStorage] = {}


def trials_of(env: dict[str, str], study: str) -> list[optuna.trial.FrozenTrial]:
    """The study's trials, read through one small pool per database: polled ten times a second,
    a new engine per read would hold PostgreSQL's 100 connections within a minute."""
    url = env["SENTIMENT_SEARCH_STORAGE"]
    if url not in _STORAGES:
        _STORAGES[url] = optuna.storages.RDBStorage(url, engine_kwargs={"pool_size": 1, "max_overflow": 1, "pool_pre_ping": True})
    return optuna.load_study(study_name=study, storage=_STORAGES[url]).get_trials(deepcopy=False)


def runs_of(env: dict[str, str], study: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name(env["SENTIMENT_TRACKING_EXPERIMENT_NAME"])
    return client.search_runs([experiment.experiment_id], f"tags.optuna_study = '{study}'")


def wait_for(condition, timeout: float = 180, every: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout} s waiting for {condition.__doc__ or condition}")


def test_two_workers_share_one_study_and_its_parent_run(engines, mlflow_server):
    study = create(engines, "shared", trials=6)
    workers = [start(engines, "worker", "--study-name", "shared") for _ in range(2)]
    results = [finish(worker) for worker in workers]

    trials = trials_of(engines, "shared")
    finished = [t for t in trials if t.state in FINISHED]
    assert 6 <= len(finished) <= 7  # the target, overshot by at most one trial per other worker
    assert all(r["trials_run"] >= 1 for r in results) and sum(r["trials_run"] for r in results) == len(trials)
    spans = {}
    for trial in trials:
        start_, end = spans.get(trial.user_attrs["worker"], (trial.datetime_start, trial.datetime_complete))
        spans[trial.user_attrs["worker"]] = (min(start_, trial.datetime_start), max(end, trial.datetime_complete))
    (a_start, a_end), (b_start, b_end) = spans.values()
    assert a_start < b_end and b_start < a_end  # the two worked side by side

    runs = runs_of(engines, "shared")
    trial_runs = [r for r in runs if r.data.tags.get("stage") == "trial"]
    assert sorted(int(r.data.tags["optuna_trial"]) for r in trial_runs) == [t.number for t in trials]
    assert {r.data.tags["mlflow.parentRunId"] for r in trial_runs} == {study["parent_run_id"]}
    assert not [r for r in runs if r.info.status == "RUNNING"]
    assert all(r.info.artifact_uri.startswith("mlflow-artifacts:/") for r in runs)
    parent = study["parent_run_id"]
    assert list(mlflow_server.artifacts_dir.rglob(f"*{parent}*/**/search_space.json"))  # in the server's folder


def test_a_killed_worker_costs_only_its_trial_and_a_fresh_worker_finishes_the_study(engines):
    create(engines, "killed", trials=5)
    doomed, survivor = (start(engines, "worker", "--study-name", "killed") for _ in range(2))

    def doomed_trial_after_its_first_epoch():
        for trial in trials_of(engines, "killed"):
            if trial.state == TrialState.RUNNING and trial.user_attrs.get("pid") == doomed.pid:
                return trial if trial.intermediate_values else None
        return None

    victim = wait_for(doomed_trial_after_its_first_epoch)
    doomed.send_signal(signal.SIGKILL)
    doomed.wait()
    finish(survivor)

    trials = {t.number: t for t in trials_of(engines, "killed")}
    assert trials[victim.number].state == TrialState.FAIL
    retries = [t for t in trials.values() if t.system_attrs.get("failed_trial") == victim.number]
    assert len(retries) == 1 and retries[0].params == victim.params
    assert sum(t.state in FINISHED for t in trials.values()) >= 5
    runs = {r.data.tags["optuna_trial"]: r for r in runs_of(engines, "killed") if "optuna_trial" in r.data.tags}
    assert runs[str(victim.number)].info.status == "KILLED"
    reason = runs[str(victim.number)].data.tags["failure_reason"]
    assert "process is gone" in reason or "no heartbeat" in reason  # whichever saw it first

    # Every worker killed mid-study; one started later finishes it and leaves nothing RUNNING.
    create(engines, "all-killed", trials=5)
    workers = [start(engines, "worker", "--study-name", "all-killed") for _ in range(2)]

    def one_finished_and_one_before_its_first_epoch():
        # Killed then, a trial is surely left RUNNING: it has a whole epoch to go. (Waiting for a
        # finished trial alone could kill both workers between trials, or after the last.)
        trials = trials_of(engines, "all-killed")
        started = [t for t in trials if t.state == TrialState.RUNNING and not t.intermediate_values]
        return sum(t.state in FINISHED for t in trials) >= 1 and started

    wait_for(one_finished_and_one_before_its_first_epoch)
    for worker in workers:
        worker.send_signal(signal.SIGKILL)
        worker.wait()
    assert any(t.state == TrialState.RUNNING for t in trials_of(engines, "all-killed"))
    finish(start(engines, "worker", "--study-name", "all-killed"))
    trials = trials_of(engines, "all-killed")
    assert sum(t.state in FINISHED for t in trials) >= 5
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    assert not [r for r in runs_of(engines, "all-killed") if r.info.status == "RUNNING"]


def test_workers_ride_out_a_database_restart(engines, postgres):
    create(engines, "restart", trials=6)
    workers = [start(engines, "worker", "--study-name", "restart") for _ in range(2)]
    wait_for(lambda: sum(t.state in FINISHED for t in trials_of(engines, "restart")) >= 2)
    postgres.restart()  # every connection cut, the study's and the MLflow server's
    for worker in workers:
        finish(worker)
    trials = trials_of(engines, "restart")
    assert sum(t.state in FINISHED for t in trials) >= 6
    assert not [t for t in trials if t.state == TrialState.RUNNING]


def test_a_worker_refuses_a_study_made_for_other_data_or_another_space(engines, make_archive):
    create(engines, "digest", trials=2)
    other_archive = engines | {"SENTIMENT_DATA_PATH": str(make_archive())}
    refused = sentiment(other_archive, "worker", "--study-name", "digest")
    assert refused.returncode == 2, refused.stderr[-2000:]
    assert "was made for dataset" in refused.stderr and "--study-name" in refused.stderr

    for setting, value, difference in (
        ("SENTIMENT_DATA_LIMIT", "100", "data.limit: study 200, here 100"),
        ("SENTIMENT_SEARCH_EPOCHS", "4", "search.epochs: study 3, here 4"),
    ):
        refused = sentiment(engines | {setting: value}, "worker", "--study-name", "digest")
        assert refused.returncode == 2 and difference in refused.stderr, refused.stderr[-2000:]
    assert not trials_of(engines, "digest")  # nothing ran


def test_a_tracking_server_without_a_study_storage_is_refused(engines):
    alone = {k: v for k, v in engines.items() if k != "SENTIMENT_SEARCH_STORAGE"}
    refused = sentiment(alone, "study", "create", "--study-name", "nowhere", "--trials", "2", timeout=60)
    assert refused.returncode != 0
    assert "--storage" in refused.stderr and engines["MLFLOW_TRACKING_URI"] in refused.stderr
    assert "Traceback" not in refused.stderr


# --- the champion alias: two registrations finishing together --------------------------------


@pytest.fixture(params=["sqlite", "server+postgresql", "sqlite-without-lock"])
def race(request, tmp_path_factory, sample_data, monkeypatch):
    """A registered base model and the way to the alias: the embedded store (file lock), the
    server with its PostgreSQL (advisory lock), and, as the control that shows the test can
    fail, the embedded store with the lock taken away."""
    from registered_model import register_tiny_model

    settings = {}
    if request.param == "server+postgresql":
        server, postgres = request.getfixturevalue("mlflow_server"), request.getfixturevalue("postgres")
        settings = {"tracking.tracking_uri": server.url, "search.storage": postgres.url("optuna_race")}
    registered = register_tiny_model(tmp_path_factory.mktemp("race"), sample_data, "race-base", **settings)
    if request.param == "sqlite-without-lock":
        from contextlib import nullcontext

        from pipeline.stores import Stores

        monkeypatch.setattr(Stores, "alias_lock", lambda self, name: nullcontext())
    return request.param, registered


def test_two_registrations_finishing_together_leave_the_alias_on_the_better(race, monkeypatch):
    """Both decide against the same champion, then reach the alias at the same moment (a
    barrier); the worse one is slow to move it. Only a lock makes the better one win."""
    import threading

    import numpy as np

    from pipeline import registry
    from pipeline.registry import TestSplit
    from pipeline.stores import Stores

    kind, reg = race
    cfg = reg.cfg.tracking.model_copy(update={"model_name": "race"})
    n = len(reg.data.test_texts)

    def register(correct):
        evidence = {"test_accuracy": float(np.mean(correct)), "run_id": reg.run_id, "dataset_digest": "d"}
        test = TestSplit(reg.data.test_texts, reg.data.test.y)
        return registry.register_and_promote(reg.stores, cfg, reg.model_uri, reg.run_id, evidence, test=test, correct=correct)

    def with_accuracy(right, seed):
        correct = np.zeros(n, dtype=bool)
        correct[np.random.default_rng(seed).permutation(n)[:right]] = True
        return correct

    assert register(with_accuracy(int(n * 0.65), 0)).promoted  # the champion both will beat
    arrived, first_time = threading.Barrier(2), threading.local()
    locked, moved = Stores.alias_lock, registry._move_alias

    def together(self, name):
        if not getattr(first_time, "passed", False):
            first_time.passed = True
            arrived.wait(timeout=120)
        return locked(self, name)

    def slow_when_worse(client, name, version, previous):
        if threading.current_thread().name == "good":
            time.sleep(1.5)
        return moved(client, name, version, previous)

    monkeypatch.setattr(Stores, "alias_lock", together)
    monkeypatch.setattr(registry, "_move_alias", slow_when_worse)
    decisions: dict[str, registry.PromotionDecision] = {}
    threads = [
        threading.Thread(name=key, target=lambda c=correct, k=key: decisions.update({k: register(c)}))
        for key, correct in (("good", with_accuracy(int(n * 0.85), 1)), ("best", with_accuracy(n, 2)))
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)

    champion = str(reg.stores.mlflow_client().get_model_version_by_alias("race", "champion").version)
    if kind == "sqlite-without-lock":
        assert champion == decisions["good"].version  # last writer wins: what the lock prevents
    else:
        assert champion == decisions["best"].version


# --- Prefect: the search fanned out over a process work pool ----------------------------------


@pytest.fixture
def prefect_pool(tmp_path):
    """A Prefect server, the work pool ``search`` (a concurrency limit of 2), the search-worker
    deployment of prefect.yaml and one ``prefect worker start``: what docs/scale-out.md sets up."""
    import urllib.request

    from services import free_port

    from pipeline.config import PROJECT_ROOT

    prefect = str(Path(sys.executable).parent / "prefect")
    port = free_port()
    env = {
        **os.environ,
        "PREFECT_HOME": str(tmp_path / "prefect"),
        "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_UI_ENABLED": "false",
    }
    started = []

    def background(*args: str) -> None:
        log = (tmp_path / f"{args[0]}.log").open("wb")
        started.append(subprocess.Popen([prefect, *args], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=PROJECT_ROOT))

    def run(*args: str) -> None:
        done = subprocess.run([prefect, *args], env=env, capture_output=True, text=True, timeout=300, cwd=PROJECT_ROOT)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]

    background("server", "start", "--host", "127.0.0.1", "--port", str(port))
    try:

        def healthy():
            try:
                with urllib.request.urlopen(f"{env['PREFECT_API_URL']}/health", timeout=2) as reply:
                    return reply.status == 200
            except OSError:
                return False

        wait_for(healthy, timeout=180, every=0.5)
        run("work-pool", "create", "search", "--type", "process")
        run("work-pool", "set-concurrency-limit", "search", "2")
        run("--no-prompt", "deploy", "--name", "search-worker")
        background("worker", "start", "--pool", "search")
        yield env
    finally:
        for process in reversed(started):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)


def test_a_pipeline_run_fans_its_search_out_over_a_work_pool(prefect_pool, tmp_path, cache_dir):
    env = prefect_pool | {
        "SENTIMENT_TRACKING_TRACKING_URI": f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}",
        "SENTIMENT_DATA_PATH": str(SAMPLE_ARCHIVE),
        "SENTIMENT_DATA_CACHE_DIR": str(cache_dir),
        "SENTIMENT_DATA_LIMIT": "200",
        "SENTIMENT_DATA_MAX_LEN": "120",
        "SENTIMENT_DATA_VOCAB_SIZE": "1000",
    }
    done = sentiment(
        env, "run", "--dispatch", "pool", "--workers", "2", "--trials", "3", "--search-epochs", "1",
        "--epochs", "1", "--study-name", "pooled", "--json", timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout)
    assert summary["registered_version"] == "1"

    storage = f"sqlite:///{tmp_path / 'mlruns' / 'optuna.db'}"
    trials = optuna.load_study(study_name="pooled", storage=storage).trials
    assert sum(t.state in FINISHED for t in trials) >= 3
    assert len({t.user_attrs["worker"] for t in trials}) == 2  # both deployment runs took part
    from mlflow.tracking import MlflowClient

    client = MlflowClient(env["SENTIMENT_TRACKING_TRACKING_URI"])
    experiment = client.get_experiment_by_name("imdb-sentiment")
    trial_runs = client.search_runs([experiment.experiment_id], "tags.stage = 'trial'")
    assert {r.data.tags["mlflow.parentRunId"] for r in trial_runs} == {summary["run_id"]}
    assert not client.search_runs([experiment.experiment_id], "attributes.status = 'RUNNING'")
