"""The Kubeflow pipeline (flows/kubeflow.py): its compiled YAML, a real run with KFP's local runner,
a failing task, and the image it runs in."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

pytest.importorskip("kfp", reason="the [kubeflow] extra (pulled by [dev]) is not installed")

from flows import kubeflow, kubeflow_tasks  # noqa: E402
from pipeline.config import PROJECT_ROOT, SAMPLE_ARCHIVE, build_config, fields  # noqa: E402

TASKS = {"prepare", "create-study", "search-worker", "train-best", "evaluate", "register"}
SECRET_VALUES = {
    "MLFLOW_TRACKING_URI": "postgresql://mlflow:s3cret-tracking@db.internal:5432/mlflow",
    "SENTIMENT_SEARCH_STORAGE": "postgresql://optuna:s3cret-study@db.internal:5432/optuna",
}


def _compile(path: Path, **options) -> tuple[dict, dict]:
    """(the pipeline spec, the Kubernetes platform spec): two YAML documents in one file."""
    kubeflow.compile_pipeline(path, **options)
    spec, platform = yaml.safe_load_all(path.read_text())
    return spec, platform["platforms"]["kubernetes"]


def _tasks(spec: dict) -> dict[str, dict]:
    """Every task of the pipeline, those inside the loop included, by name."""
    tasks = dict(spec["root"]["dag"]["tasks"])
    for component in spec["components"].values():
        tasks |= component.get("dag", {}).get("tasks", {})
    return tasks


def _upstream(task: dict) -> set[str]:
    """The tasks a task waits for: its explicit dependencies and the producers of its inputs."""
    found = set(task.get("dependentTasks", []))
    for kind in ("parameters", "artifacts"):
        for value in task.get("inputs", {}).get(kind, {}).values():
            for key in ("taskOutputParameter", "taskOutputArtifact"):
                if key in value:
                    found.add(value[key]["producerTask"])
    return found


# --- compile --------------------------------------------------------------------------------


def test_compiled_pipeline_has_the_stages_the_loop_and_a_parameter_per_config_field(tmp_path, monkeypatch):
    from kfp.components import load_component_from_file

    for name, value in SECRET_VALUES.items():  # the stores as the compiling machine may have them
        monkeypatch.setenv(name, value)
    path = tmp_path / "imdb_sentiment.yaml"
    spec, kubernetes = _compile(path, image="registry.example/imdb-sentiment:1.2.3", workers=3, secret="stores")
    text = path.read_text()

    assert load_component_from_file(str(path)).name == "imdb-sentiment"  # KFP's own loader reads it
    tasks = _tasks(spec)
    loop = next(name for name in spec["root"]["dag"]["tasks"] if name.startswith("for-loop"))
    assert set(tasks) - {loop} == TASKS
    assert _upstream(tasks["create-study"]) == {"prepare"}
    assert {"prepare", "create-study"} <= _upstream(tasks[loop])
    assert {"create-study"} <= _upstream(tasks["search-worker"]) | _upstream(tasks[loop])
    assert loop in _upstream(tasks["train-best"])  # after every worker (dsl.Collected)
    assert _upstream(tasks["evaluate"]) >= {"train-best"}
    assert _upstream(tasks["register"]) >= {"train-best", "evaluate"}
    assert tasks[loop]["iteratorPolicy"]["parallelismLimit"] == 3
    assert json.loads(tasks[loop]["parameterIterator"]["items"]["raw"]) == [0, 1, 2]
    assert all(not task.get("cachingOptions", {}).get("enableCache") for task in tasks.values())

    # One pipeline input per config field a training run reads, but the stores (from the secret)
    # and the worker count (the loop's width, a compile option).
    expected = {
        dotted.replace(".", "_")
        for dotted, _ in fields()
        if dotted.split(".")[0] in ("data", "search", "train", "tracking")
        and dotted not in ("tracking.tracking_uri", "tracking.artifact_root", "search.storage", "search.workers")
    }
    inputs = spec["root"]["inputDefinitions"]["parameters"]
    assert set(inputs) == expected
    assert inputs["data_max_len"] == {
        "defaultValue": 500,
        "description": "data.max_len: tokens kept per review, from its end",
        "isOptional": True,
        "parameterType": "NUMBER_INTEGER",
    }

    executors = spec["deploymentSpec"]["executors"]
    assert len(executors) == len(TASKS)
    for executor in executors.values():
        container = executor["container"]
        assert container["image"] == "registry.example/imdb-sentiment:1.2.3"
        assert {"cpuLimit", "cpuRequest", "memoryLimit", "memoryRequest"} <= set(container["resources"])
    assert tasks["search-worker"]["retryPolicy"]["maxRetryCount"] == kubeflow.SEARCH_RETRIES

    # The stores reach the tasks from the named secret, never as text in the YAML.
    platform = kubernetes["deploymentSpec"]["executors"]
    assert len(platform) == len(TASKS) - 1  # prepare touches no store
    for executor in platform.values():
        (secret,) = executor["secretAsEnv"]
        assert secret["secretName"] == "stores"
        assert {m["secretKey"]: m["envVar"] for m in secret["keyToEnv"]} == kubeflow.SECRET_KEYS
    for value in SECRET_VALUES.values():
        assert value not in text
    assert not re.search(r"(sqlite|postgresql|mysql|https?)://", text)
    assert str(PROJECT_ROOT) not in text  # no path of the compiling machine


def test_compiling_twice_gives_the_same_bytes(tmp_path):
    first, second = tmp_path / "a.yaml", tmp_path / "b.yaml"
    kubeflow.compile_pipeline(first, workers=4)
    kubeflow.compile_pipeline(second, workers=4)
    assert first.read_bytes() == second.read_bytes()
    kubeflow.compile_pipeline(second, workers=2)
    assert first.read_bytes() != second.read_bytes()


def test_parameters_round_trip_as_kfp_hands_them_over(monkeypatch):
    """A run's arguments, as text the way KFP's local runner passes them (``300.0``), give back
    the same config; an untouched parameter keeps the config's default where the task runs."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # the task's stores come from its env
    cfg = build_config(
        {
            "data.max_len": 300,
            "data.limit": 400,
            "search.cells": ("gru", "lstm"),
            "search.timeout": 90.5,
            "train.jit_compile": False,
            "tracking.model_name": "kfp-model",
        }
    )
    arguments = kubeflow_tasks.pipeline_arguments(cfg)
    assert arguments == {
        "data_max_len": 300,
        "data_limit": "400",
        "search_cells": "gru,lstm",
        "search_timeout": "90.5",
        "train_jit_compile": "false",
        "search_study_name": cfg.search.study_name,  # derived from the settings: given to every task
        "tracking_model_name": "kfp-model",
    }
    by_name = {p.name: p for p in kubeflow_tasks.parameters()}
    as_text = {by_name[name].dotted: f"{value}.0" if isinstance(value, int) else value for name, value in arguments.items()}
    assert kubeflow_tasks.config_from_parameters(as_text) == cfg
    assert kubeflow_tasks.config_from_parameters({}).data.path == SAMPLE_ARCHIVE


def test_a_bad_parameter_names_the_field():
    from pipeline.config import ConfigError

    with pytest.raises(ConfigError, match=r"data\.max_len \(--max-len\)"):
        kubeflow_tasks.config_from_parameters({"data.max_len": "0"})


def test_cli_compiles_and_an_unreachable_kfp_api_is_one_line(tmp_path):
    from typer.testing import CliRunner

    from flows.cli import app

    runner = CliRunner()
    out = tmp_path / "p.yaml"
    result = runner.invoke(app, ["kubeflow", "compile", "-o", str(out), "--workers", "3"])
    assert result.exit_code == 0, result.output
    assert "parallelismLimit: 3" in out.read_text()

    result = runner.invoke(app, ["kubeflow", "submit", "--host", "http://127.0.0.1:9"])
    assert result.exit_code == 1
    assert result.output.strip().startswith("error: Kubeflow Pipelines API http://127.0.0.1:9:")
    assert len(result.output.strip().splitlines()) == 1


# --- the image ------------------------------------------------------------------------------


def test_dockerfile_installs_the_locked_project_and_runs_sentiment():
    """Read here; built and run by tests/test_containers.py where a Docker engine runs."""
    dockerfile = (PROJECT_ROOT / "Dockerfile").read_text()
    project = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]
    lines = [line.strip() for line in dockerfile.splitlines() if line.strip() and not line.startswith("#")]

    # The versions are the lock's (the file CI's venv installs too), the requirements pyproject.toml's
    # with the extra the components need; the Dockerfile pins nothing of its own.
    assert "PIP_CONSTRAINT=/tmp/build/constraints.txt" in dockerfile
    assert any(line.startswith("COPY pyproject.toml requirements/constraints.txt") for line in lines)
    assert "p['optional-dependencies']['kubeflow']" in dockerfile
    assert "-c $(LOCK)" in (PROJECT_ROOT / "Makefile").read_text()
    assert not re.search(r"pip install[^\n]*==", dockerfile)
    assert "kubeflow" in project["optional-dependencies"]
    # Python as pyproject.toml requires it, the base a build argument, in both stages.
    assert "ARG PYTHON_IMAGE=python:3.11-slim-bookworm" in lines
    assert project["requires-python"] == ">=3.11,<3.12"
    assert dockerfile.count("FROM ${PYTHON_IMAGE}") == 2
    # The final stage: the environment and the configs, a non-root user, the `sentiment` command,
    # and neither build tools nor the CA bundle the build stage was given.
    final = dockerfile.split("FROM ${PYTHON_IMAGE}\n")[-1]
    # The dependencies and the project in layers of their own: a code change rebuilds the last.
    assert "COPY --from=deps /opt/venv /opt/venv" in final and "COPY --from=build /opt/project /opt/project" in final
    assert not re.search(r"apt-get|gcc|build-essential|pip install|extra-ca|/tmp/build", final)
    assert "USER app" in final and "SENTIMENT_HOME=/home/app/.imdb-sentiment" in final
    assert final.strip().splitlines()[-2:] == ['ENTRYPOINT ["sentiment"]', 'CMD ["--help"]']
    assert project["scripts"]["sentiment"] == "flows.cli:app"
    ignored = (PROJECT_ROOT / ".dockerignore").read_text().split()
    assert ignored[ignored.index("*") :][:5] == ["*", "!pyproject.toml", "!README.md", "!pipeline/", "!flows/"]


def test_run_local_in_an_image_refuses_embedded_stores_in_one_line(tmp_path):
    """Containers cannot share this machine's SQLite files: said before any container starts
    (tests/test_containers.py runs the pipeline in the image)."""
    done = subprocess.run(
        [str(Path(sys.executable).parent / "sentiment"), "kubeflow", "run-local", "--image", "imdb-sentiment:0.1.0",
         "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", "--storage", f"sqlite:///{tmp_path / 'optuna.db'}"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    lines = done.stderr.strip().splitlines()
    assert done.returncode != 0 and len(lines) == 1 and "invalid option --image" in lines[0], done.stderr


# --- a real run with KFP's local runner -----------------------------------------------------


def _config(store: Path, **overrides):
    options = {
        "data.path": SAMPLE_ARCHIVE,
        "data.cache_dir": store / "cache",
        "data.limit": 600,  # per split: 480 train / 120 validation, 600 test
        "data.max_len": 200,
        "data.vocab_size": 5000,
        "search.trials": 4,
        "search.epochs": 1,
        "search.cells": ("gru",),
        "search.study_name": "kfp-test",
        "search.workers": 2,  # two search pods
        "search.storage": f"sqlite:///{store / 'optuna.db'}",
        "train.epochs": 2,
        "tracking.tracking_uri": f"sqlite:///{store / 'mlflow.db'}",
        "tracking.experiment_name": "kfp-test",
        "tracking.model_name": "kfp-test-model",
    }
    return build_config({**options, **overrides})


@pytest.fixture
def local_env():
    """run_local hands the stores to the tasks through the environment: restore it afterwards."""
    with pytest.MonkeyPatch.context() as patch:
        for name in ("MLFLOW_TRACKING_URI", "SENTIMENT_SEARCH_STORAGE", "PATH"):
            patch.setenv(name, os.environ.get(name, ""))
        yield


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """The pipeline run twice on the same data and config, 2 search workers each."""
    store = tmp_path_factory.mktemp("kfp")
    cfg = _config(store)
    with pytest.MonkeyPatch.context() as patch:
        for name in ("MLFLOW_TRACKING_URI", "SENTIMENT_SEARCH_STORAGE", "PATH"):
            patch.setenv(name, os.environ.get(name, ""))
        first = kubeflow.run_local(cfg, root=store / "kfp-1")
        second = kubeflow.run_local(cfg, root=store / "kfp-2")
    return cfg, first, second


@pytest.mark.integration
@pytest.mark.slow
def test_local_run_tracks_one_parent_with_both_workers_trials_and_registers_a_champion(two_runs):
    import optuna
    from mlflow.tracking import MlflowClient

    cfg, first, second = two_runs
    client = MlflowClient(cfg.tracking.tracking_uri)
    experiment = client.get_experiment_by_name("kfp-test")
    runs = client.search_runs([experiment.experiment_id])
    parents = [run for run in runs if run.info.run_id == first["run_id"]]
    (parent,) = parents
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["orchestrator"] == "kubeflow" and parent.data.tags["kfp_run_id"]
    assert {"kfp_task.train-best", "kfp_task.evaluate", "kfp_task.register"} <= set(parent.data.tags)
    assert parent.data.params["data.max_len"] == "200"
    # The test metrics and the final training's summary (named test_accuracy, or model/test_accuracy).
    for metric in ("test_accuracy", "test_f1", "best_epoch"):
        assert any(name.split("/")[-1] == metric for name in parent.data.metrics), metric

    # The trials of the first run's two search pods, nested under its parent run.
    trials = [run for run in runs if run.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    study = optuna.load_study(study_name="kfp-test", storage=cfg.search.storage)
    by_number = {trial.number: trial for trial in study.trials}
    mine = [by_number[int(run.data.tags["optuna_trial"])] for run in trials]
    assert len(mine) >= cfg.search.trials
    assert len({trial.user_attrs["worker"] for trial in mine}) == 2  # both pods ran trials
    assert len({tuple(sorted(trial.params.items())) for trial in mine}) == len(mine)  # no repeats
    assert all(run.info.status in ("FINISHED", "KILLED") for run in trials)

    assert first["registered_version"] == "1" and first["promoted"], first["promotion_reason"]
    assert first["best_trial"] in {trial.number for trial in mine}
    champion = client.get_model_version_by_alias("kfp-test-model", "champion")
    assert str(champion.version) == "1" and champion.run_id == parent.info.run_id


@pytest.mark.integration
@pytest.mark.slow
def test_a_second_run_on_the_same_data_is_gated_by_promotion(two_runs):
    """The second run adds its trials to the study under a parent of its own, registers version 2
    and compares it with the champion on the same test reviews, as the Prefect flow does."""
    from mlflow.tracking import MlflowClient

    cfg, first, second = two_runs
    client = MlflowClient(cfg.tracking.tracking_uri)
    assert second["run_id"] != first["run_id"]
    nested = client.search_runs(
        [client.get_experiment_by_name("kfp-test").experiment_id],
        f"tags.mlflow.parentRunId = '{second['run_id']}'",
    )
    assert len(nested) >= cfg.search.trials
    assert second["registered_version"] == "2"
    assert second["previous_champion_version"] == "1"  # compared with the champion
    champion = str(client.get_model_version_by_alias("kfp-test-model", "champion").version)
    tag = client.get_model_version("kfp-test-model", "2").tags["decision"]
    if second["promoted"]:
        assert champion == "2" and second["promotion_p_value"] < cfg.tracking.promotion_alpha
    else:
        assert champion == "1" and tag == "not promoted: v1 stayed champion"
        assert "champion v1" in second["promotion_reason"]  # "kept champion: not more accurate; …"


@pytest.mark.integration
def test_a_failing_task_fails_with_the_library_error_and_leaves_nothing_running(tmp_path, local_env, capfd):
    from mlflow.tracking import MlflowClient

    broken = tmp_path / "not-an-archive.tar.gz"
    broken.write_bytes(b"these are not reviews")
    cfg = _config(tmp_path, **{"data.path": broken})

    with pytest.raises(RuntimeError, match="Inner task failed: .*prepare"):
        kubeflow.run_local(cfg, root=tmp_path / "kfp")
    logs = capfd.readouterr()
    assert f"pipeline.reviews.DataError: cannot read archive {broken}" in logs.out + logs.err

    client = MlflowClient(cfg.tracking.tracking_uri)
    running = client.search_runs(
        [e.experiment_id for e in client.search_experiments()], "attributes.status = 'RUNNING'"
    )
    assert running == []
    assert client.search_model_versions("name = 'kfp-test-model'") == []


# --- the parent run -------------------------------------------------------------------------


def test_with_the_kfp_mlflow_plugin_the_pipeline_nests_under_its_run(tmp_path, monkeypatch, sample_data):
    """The plugin opens a run per pipeline run and gives each task a nested run (``MLFLOW_RUN_ID``):
    the pipeline logs to the plugin's pipeline run instead of opening a second parent."""
    from mlflow.tracking import MlflowClient

    from pipeline.stores import resolve

    cfg = _config(tmp_path)
    stores = resolve(cfg)
    client = MlflowClient(cfg.tracking.tracking_uri)
    experiment = client.create_experiment("kfp-test")
    plugin_run = client.create_run(experiment, run_name="kfp-plugin-pipeline-run").info.run_id
    task_run = client.create_run(experiment, tags={"mlflow.parentRunId": plugin_run}).info.run_id
    monkeypatch.setenv("MLFLOW_RUN_ID", task_run)

    with kubeflow_tasks.parent_run(stores, cfg, sample_data, "run-123") as run_id:
        assert run_id == plugin_run
    logged = client.get_run(plugin_run).data
    assert logged.tags["kfp_run_id"] == "run-123"
    assert logged.params["data.max_len"] == "200"
    assert logged.params["dataset_digest"] == sample_data.digest
    assert len(client.search_runs([experiment])) == 2  # no parent of our own


def test_without_the_plugin_the_pipeline_opens_its_own_parent_run(tmp_path, monkeypatch, sample_data):
    from mlflow.tracking import MlflowClient

    from pipeline.stores import resolve

    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    cfg = _config(tmp_path)
    with kubeflow_tasks.parent_run(resolve(cfg), cfg, sample_data, "run-123") as run_id:
        pass
    run = MlflowClient(cfg.tracking.tracking_uri).get_run(run_id)
    assert run.info.run_name == "kfp-run-123" and run.info.status == "FINISHED"
    assert run.data.tags["kfp_run_id"] == "run-123" and run.data.tags["orchestrator"] == "kubeflow"
