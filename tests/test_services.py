"""The scale-out services themselves: the MLflow server proxies artifacts into its own folder, and
an Optuna study on the private PostgreSQL survives a server restart."""

from __future__ import annotations

import optuna
import pytest

pytestmark = pytest.mark.integration


def test_server_run_artifacts_are_proxied_into_its_folder(mlflow_server, tmp_path):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(mlflow_server.url)
    experiment_id = client.create_experiment("services-check")
    run = client.create_run(experiment_id)
    client.log_text(run.info.run_id, "hello", "notes/hello.txt")
    client.set_terminated(run.info.run_id)

    stored = client.get_run(run.info.run_id)
    assert stored.info.artifact_uri.startswith("mlflow-artifacts:/")
    assert stored.info.status == "FINISHED"
    landed = list(mlflow_server.artifacts_dir.rglob("hello.txt"))
    assert [path.read_text() for path in landed] == ["hello"]
    assert run.info.run_id in landed[0].as_posix()
    assert not (tmp_path / "mlruns").exists()  # nothing written on the client's side


def test_optuna_study_on_postgres_survives_a_restart(postgres):
    url = postgres.url("optuna_services")
    storage = optuna.storages.RDBStorage(url, engine_kwargs={"pool_pre_ping": True})
    study = optuna.create_study(study_name="services", storage=storage, direction="maximize")
    study.optimize(lambda trial: trial.suggest_float("x", 0, 1), n_trials=2)

    postgres.restart()  # cuts the pooled connections; pre-ping replaces them
    study.optimize(lambda trial: trial.suggest_float("x", 0, 1), n_trials=1)

    reloaded = optuna.load_study(study_name="services", storage=url)
    assert [t.state for t in reloaded.trials] == [optuna.trial.TrialState.COMPLETE] * 3
