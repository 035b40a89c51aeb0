"""The only module that touches MLflow runs.

Every call names its run id explicitly (``MlflowClient``) instead of relying on MLflow's
per-thread "active run": Prefect may run tasks on other threads, and trials may run in other
processes, and both must still land in the right run.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import keras
import mlflow
import optuna
import pandas as pd
from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param, RunStatus
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature, infer_signature
from mlflow.tracking import MlflowClient
from mlflow.types.schema import AnyType, ColSpec, Schema
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME

from pipeline.config import PipelineConfig, TrackingConfig
from pipeline.data import PreparedData
from pipeline.evaluate import Evaluation, confusion_figure, learning_curves
from pipeline.serve import SentimentModel, stage_model
from pipeline.train import TrainResult

log = logging.getLogger(__name__)

MODEL_ARTIFACT = "model"
_INPUT_EXAMPLE = [
    "A moving, beautifully acted film; I was hooked from the first scene.",
    "Dull, predictable and far too long. I want my two hours back.",
]


def client_for(cfg: TrackingConfig) -> MlflowClient:
    """A client on the configured store; creates the SQLite folder when the store is local."""
    if cfg.tracking_uri.startswith("sqlite:///"):
        Path(cfg.tracking_uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(cfg.tracking_uri)
    mlflow.set_registry_uri(cfg.tracking_uri)
    return MlflowClient(cfg.tracking_uri, registry_uri=cfg.tracking_uri)


def experiment_id(client: MlflowClient, cfg: TrackingConfig) -> str:
    """The experiment's id, creating it with artifacts under the store (not the current folder)."""
    experiment = client.get_experiment_by_name(cfg.experiment_name)
    if experiment is not None:
        return experiment.experiment_id
    location = f"{cfg.artifact_location().rstrip('/')}/{cfg.experiment_name}"
    return client.create_experiment(cfg.experiment_name, artifact_location=location)


@dataclass
class RunHandle:
    """An open MLflow run: its id and the client that writes to it."""

    client: MlflowClient
    run_id: str
    experiment_id: str
    tracking_uri: str

    def log_params(self, params: dict[str, Any]) -> None:
        items = [Param(key, _param_value(value)) for key, value in params.items()]
        for start in range(0, len(items), 100):  # MLflow caps a batch at 100 params
            self.client.log_batch(self.run_id, params=items[start : start + 100])

    def log_metrics(self, metrics: dict[str, float], step: int = 0) -> None:
        now = int(time.time() * 1000)
        items = [Metric(key, float(value), now, step) for key, value in metrics.items()]
        self.client.log_batch(self.run_id, metrics=items)

    def set_tags(self, tags: dict[str, Any]) -> None:
        for key, value in tags.items():
            self.client.set_tag(self.run_id, key, str(value))

    def epoch_callback(self, prefix: str = "") -> keras.callbacks.Callback:
        return _EpochMetrics(self, prefix)

    @property
    def url(self) -> str:
        return f"#/experiments/{self.experiment_id}/runs/{self.run_id}"


class _EpochMetrics(keras.callbacks.Callback):
    """Per-epoch loss, accuracy, val_loss, val_accuracy to one explicit run (step = epoch, 1-based),
    names prefixed (``bigrams_val_accuracy``) when two models train under one run.

    ``mlflow.keras.MlflowCallback`` writes to the thread's active run; this one names its run.
    """

    def __init__(self, run: RunHandle, prefix: str = "") -> None:
        super().__init__()
        self._run = run
        self._prefix = prefix

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        metrics = {self._prefix + k: v for k, v in (logs or {}).items() if k != "learning_rate"}
        self._run.log_metrics(metrics, step=epoch + 1)


def _param_value(value: Any) -> str:
    text = json.dumps(value) if isinstance(value, (list, tuple, dict)) else str(value)
    return text[:6000]


@contextmanager
def _run(
    client: MlflowClient, cfg: TrackingConfig, run_name: str, tags: dict[str, str]
) -> Iterator[RunHandle]:
    """A run that always ends: FINISHED, or KILLED when pruned, or FAILED with the reason tagged."""
    exp_id = experiment_id(client, cfg)
    run = client.create_run(exp_id, run_name=run_name, tags={MLFLOW_RUN_NAME: run_name, **tags})
    handle = RunHandle(client, run.info.run_id, exp_id, cfg.tracking_uri)
    try:
        yield handle
    except optuna.TrialPruned as pruned:
        handle.set_tags({"outcome": "pruned", "pruned_reason": str(pruned) or "pruned by the study's pruner"})
        client.set_terminated(handle.run_id, RunStatus.to_string(RunStatus.KILLED))
        raise
    except BaseException as error:
        reason = f"{type(error).__name__}: {error}"[:5000]
        handle.set_tags({"outcome": "failed", "failure_reason": reason})
        client.set_terminated(handle.run_id, RunStatus.to_string(RunStatus.FAILED))
        raise
    else:
        client.set_terminated(handle.run_id, RunStatus.to_string(RunStatus.FINISHED))


@contextmanager
def pipeline_run(cfg: PipelineConfig, data: PreparedData, run_name: str | None = None) -> Iterator[RunHandle]:
    """The parent run of one pipeline run: whole config as dotted params, the dataset as input."""
    client = client_for(cfg.tracking)
    name = run_name or f"pipeline-{time.strftime('%Y%m%d-%H%M%S')}"
    with _run(client, cfg.tracking, name, {"stage": "pipeline"}) as run:
        run.log_params(cfg.flat_params())
        log_dataset(run, data)
        yield run


def log_dataset(run: RunHandle, data: PreparedData) -> None:
    """Dataset digest, sizes and class balance as params and as the run's input dataset."""
    summary = data.summary()
    run.log_params(summary)
    dataset = Dataset(
        name="aclImdb",
        digest=data.digest[:32],
        source_type="local",
        source=json.dumps({"uri": data.source}),
        profile=json.dumps(summary),
    )
    context = InputTag("mlflow.data.context", "training")
    run.client.log_inputs(run.run_id, [DatasetInput(dataset, [context])])


@dataclass(frozen=True)
class TrialTracker:
    """Opens a nested child run per Optuna trial under the parent run.

    Holds only ids and config, so it pickles into the processes that run trials side by side.
    """

    parent_run_id: str
    cfg: TrackingConfig

    def __call__(self, number: int, params: dict[str, Any]) -> AbstractContextManager[RunHandle]:
        client = client_for(self.cfg)
        parent = RunHandle(client, self.parent_run_id, experiment_id(client, self.cfg), self.cfg.tracking_uri)
        return _trial_run(parent, self.cfg, number, params)


def trial_tracker(parent: RunHandle, cfg: TrackingConfig) -> TrialTracker:
    return TrialTracker(parent.run_id, cfg)


@contextmanager
def _trial_run(
    parent: RunHandle, cfg: TrackingConfig, number: int, params: dict[str, Any]
) -> Iterator[RunHandle]:
    tags = {MLFLOW_PARENT_RUN_ID: parent.run_id, "stage": "trial", "optuna_trial": str(number)}
    with _run(parent.client, cfg, f"trial-{number:03d}", tags) as run:
        run.log_params(params)
        yield run
        run.set_tags({"outcome": "complete"})


def log_training(run: RunHandle, result: TrainResult, prefix: str = "") -> None:
    """Summary of a finished training: best epoch and value, epochs run and speed."""
    run.log_metrics(
        {
            f"{prefix}best_epoch": result.best_epoch,
            f"{prefix}best_value": result.best_value,
            f"{prefix}epochs_run": result.epochs,
            f"{prefix}seconds_per_epoch": result.seconds_per_epoch,
            f"{prefix}train_seconds": result.seconds,
        }
    )


def log_evaluation(run: RunHandle, evaluation: Evaluation, history: dict[str, list[float]]) -> None:
    """Test metrics, the confusion matrix (PNG and JSON) and the learning curves (PNG)."""
    run.log_metrics({k: v for k, v in evaluation.metrics.items() if math.isfinite(v)})
    run.client.log_figure(run.run_id, learning_curves(history), "plots/learning_curves.png")
    run.client.log_figure(run.run_id, confusion_figure(evaluation.confusion), "plots/confusion_matrix.png")
    run.client.log_dict(
        run.run_id,
        {"rows_true": ["negative", "positive"], "matrix": evaluation.confusion.tolist()},
        "evaluation/confusion_matrix.json",
    )


def log_model(run: RunHandle, keras_model, data: PreparedData, widths: tuple[int, ...]) -> str:
    """Log the raw-text pyfunc (signature, input example) under the run; returns its ``runs:/`` URI."""
    with tempfile.TemporaryDirectory() as tmp:
        artifacts, code_paths = stage_model(
            keras_model, data.vocabulary, data.max_len, widths, Path(tmp) / "staging"
        )
        example = pd.DataFrame({"text": _INPUT_EXAMPLE})
        sample_output = pd.DataFrame({"probability": [0.9, 0.1], "label": ["positive", "negative"]})
        model_dir = Path(tmp) / MODEL_ARTIFACT
        mlflow.pyfunc.save_model(
            model_dir,
            python_model=SentimentModel(),
            artifacts=artifacts,
            code_paths=code_paths,
            signature=_signature(sample_output),
            input_example=example,
            pip_requirements=_requirements(),
        )
        run.client.log_artifacts(run.run_id, str(model_dir), MODEL_ARTIFACT)
    return f"runs:/{run.run_id}/{MODEL_ARTIFACT}"


def _signature(sample_output: pd.DataFrame) -> ModelSignature:
    """``text`` in, (probability, label) out. The input column is typed Any so that MLflow hands a
    None or a number to the model, which names the row, instead of casting it to "None" or "1"."""
    inputs = Schema([ColSpec(AnyType(), "text")])
    return ModelSignature(inputs=inputs, outputs=infer_signature(None, sample_output).outputs)


def _requirements() -> list[str]:
    names = ("mlflow", "keras", "tensorflow-cpu", "tensorflow", "numpy", "pandas")
    pinned = []
    for name in names:
        try:
            pinned.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            continue
    return pinned


# --- scheduled retraining: is the champion already trained on this data and config? -------

# Where things live, not what is trained: a moved cache or store does not call for retraining.
_PLACE_PARAMS = ("data.path", "data.cache_dir", "search.storage", "search.workers")
_PLACE_PREFIXES = ("tracking.",)


@dataclass(frozen=True)
class ChampionCheck:
    """How the current champion's training run compares with this data and config."""

    unchanged: bool
    reason: str
    champion_version: str | None = None
    champion_run_id: str | None = None


def training_params(cfg: PipelineConfig) -> dict[str, str]:
    """The config as logged params, less where data and stores live: what defines the training."""
    return {
        key: _param_value(value)
        for key, value in cfg.flat_params().items()
        if key not in _PLACE_PARAMS and not key.startswith(_PLACE_PREFIXES)
    }


def check_champion(cfg: PipelineConfig, dataset_digest: str) -> ChampionCheck:
    """Compare the dataset digest and the training params with the champion's training run.

    Reads the ``champion`` alias of ``cfg.tracking.model_name`` (its ``dataset_digest`` tag) and
    the params of the run that trained it. Raises MlflowException when the store cannot be read.
    """
    from pipeline.registry import CHAMPION  # registry imports this module: import late

    client = client_for(cfg.tracking)
    try:
        version = client.get_model_version_by_alias(cfg.tracking.model_name, CHAMPION)
    except MlflowException as error:
        if error.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return ChampionCheck(False, f"no {CHAMPION} for model '{cfg.tracking.model_name}' yet")
        raise
    run_id = version.tags.get("run_id") or version.run_id
    logged = client.get_run(run_id).data.params
    changed = sorted(key for key, value in training_params(cfg).items() if logged.get(key) != value)
    who = {"champion_version": str(version.version), "champion_run_id": run_id}
    if version.tags.get("dataset_digest") != dataset_digest:
        return ChampionCheck(False, f"dataset changed since champion v{version.version}", **who)
    if changed:
        shown = ", ".join(f"{key} {logged.get(key)} → {training_params(cfg)[key]}" for key in changed[:5])
        return ChampionCheck(False, f"config changed since champion v{version.version}: {shown}", **who)
    reason = f"dataset and config unchanged since champion v{version.version} (run {run_id})"
    return ChampionCheck(True, reason, **who)


def record_skipped_run(cfg: PipelineConfig, data: PreparedData, check: ChampionCheck) -> RunHandle:
    """A FINISHED pipeline run tagged ``outcome=skipped`` with the reason; nothing is trained."""
    name = f"skipped-{time.strftime('%Y%m%d-%H%M%S')}"
    with pipeline_run(cfg, data, run_name=name) as run:
        run.set_tags(
            {
                "outcome": "skipped",
                "skip_reason": check.reason,
                "champion_version": check.champion_version,
                "champion_run_id": check.champion_run_id,
            }
        )
    return run


def run_link(run: RunHandle, ui_url: str | None = None) -> str:
    """The run's page in the MLflow UI: ``ui_url``, else an http(s) tracking server, else localhost."""
    if ui_url is None:
        remote = run.tracking_uri.startswith(("http://", "https://"))
        ui_url = run.tracking_uri if remote else "http://127.0.0.1:5000"
    return f"{ui_url.rstrip('/')}/{run.url}"
