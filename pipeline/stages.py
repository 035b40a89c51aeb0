"""The pipeline's stages: typed values in, typed values out, each logging its part to MLflow.

Every orchestrator runs these and nothing else: a Prefect task (``flows/tasks.py``) wraps one
stage, the flows only put them in order, and the CLI runs the flows. The order itself is

    prepare → check_champion → [pipeline_run: search_hparams → train_final → evaluate_model
    → log_model → register_model] → RunSummary

Keras, Optuna and MLflow meet here and nowhere above: ``train``/``search`` know no MLflow,
``tracking``/``registry`` know no Keras.
"""

from __future__ import annotations

import re
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import keras
import numpy as np
from pydantic import ValidationError

from pipeline import data_checks, registry, search, study_report, tracking
from pipeline.batching import predict_proba
from pipeline.blend import choose_blend
from pipeline.config import PROJECT_ROOT, ConfigError, HParams, PipelineConfig, run_params
from pipeline.data import PreparedData
from pipeline.evaluate import (
    THRESHOLD,
    Evaluation,
    accuracy_by_length,
    calibration_figure,
    confident_errors,
    confusion_figure,
    evaluate,
    learning_curves,
    length_figure,
    precision_recall_figure,
    roc_figure,
)
from pipeline.model import PRESETS, average_models, inference_copy
from pipeline.secrets import redact
from pipeline.serve import pyfunc_spec
from pipeline.stores import Stores, resolve
from pipeline.train import (
    EpochMetrics,
    TimeBudget,
    TrainResult,
    train_and_val,
    train_bigram_model,
    train_model,
    train_nbsvm_model,
)


@dataclass(frozen=True)
class FinalModel:
    """The model to ship: the RNN, or the RNN averaged with its bag-of-bigrams companion when that
    won on validation (``kind``), with the RNN's training history and what the model is."""

    model: keras.Model
    hparams: HParams
    result: TrainResult  # the RNN's training: history, best epoch, bucket widths
    kind: Literal["rnn", "rnn+bigrams"]
    vocab_size_effective: int
    bigram_buckets: int | None = None  # the companion's, when it is part of the model
    bigram_dim: int | None = None
    # With ``train.refit``: the blend as chosen, its companion fitted on the training part only,
    # which is what scores the validation reviews (the refit companion has trained on them).
    held_out_model: keras.Model | None = None

    def details(self) -> dict[str, Any]:
        """What the model is, for its run and registry version: kind, companion size, vocabulary."""
        details: dict[str, Any] = {"model_kind": self.kind, "vocab_size_effective": self.vocab_size_effective}
        if self.kind != "rnn":
            details |= {"bigram_buckets": self.bigram_buckets, "bigram_dim": self.bigram_dim}
        return details


@dataclass(frozen=True)
class RunSummary:
    """What one pipeline run did, for people (``to_text``), machines (``to_dict``) and Prefect's UI
    (``to_markdown``)."""

    run_id: str
    run_url: str
    model_name: str
    champion_check: str
    skipped: bool = False
    forced: bool = False
    best_trial: int | None = None
    best_value: float | None = None
    best_hparams: dict[str, Any] | None = None
    model_kind: str | None = None
    test_metrics: dict[str, float] = field(default_factory=dict)
    model_uri: str | None = None
    registered_version: str | None = None
    promoted: bool | None = None
    promotion_reason: str | None = None
    promotion_p_value: float | None = None
    champion_version: str | None = None
    previous_champion_version: str | None = None
    previous_champion_accuracy: float | None = None
    ui_command: str | None = None
    # What each part scored on validation and what cut it short, in words (``_parts``).
    parts: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def rows(self, in_the_ui: bool = False) -> list[tuple[str, str]]:
        """(what, value) lines: outcome, best trial, test metrics, promotion, where to look
        (``in_the_ui``: for the run page itself, a link within the UI)."""
        if self.skipped:
            rows = [("Outcome", "skipped"), ("Reason", self.champion_check)]
            rows += [("Champion", f"v{self.champion_version}")]
        else:
            rows = [("Outcome", "trained" + (" (forced)" if self.forced else ""))]
            if self.best_trial is not None:
                rows.append(
                    (
                        "Best trial",
                        f"#{self.best_trial} ({self.best_value:.4f}): {_hparams(self.best_hparams)}",
                    )
                )
            if self.model_kind is not None:
                rows.append(("Model", self.model_kind))
            if self.test_metrics:
                rows.append(
                    (
                        "Test metrics",
                        ", ".join(f"{k.removeprefix('test_')} {v:.4f}" for k, v in self.test_metrics.items()),
                    )
                )
            if self.registered_version is not None:
                promotion = "promoted to champion" if self.promoted else "kept as challenger"
                rows.append(("Promotion", f"v{self.registered_version} {promotion}: {self.promotion_reason}"))
                rows.append(("Model URI", f"models:/{self.model_name}/{self.registered_version}"))
        if in_the_ui:
            # On the run's own page the UI's address is the page's: a link within it works on
            # whichever port `sentiment ui` chose, where http://127.0.0.1:5000 may be nothing.
            fragment = self.run_url[self.run_url.find("#") :] if "#" in self.run_url else self.run_url
            rows.append(("MLflow run", f"[this run]({fragment})"))
            return rows
        rows.append(("MLflow run", self.run_url))
        if self.ui_command:
            rows.append(("MLflow UI", self.ui_command))
        return rows

    def to_text(self) -> str:
        width = max(len(name) for name, _ in self.rows())
        return "\n".join(f"{name:<{width}}  {value}" for name, value in self.rows())

    def to_markdown(self, in_the_ui: bool = False) -> str:
        cells = [f"| {name} | {str(value).replace('|', '/')} |" for name, value in self.rows(in_the_ui)]
        return "\n".join(["| | |", "|---|---|", *cells])

    def description(self) -> str:
        """The run page's description: what was trained and chosen, the headline numbers, and
        how the metrics and artifacts are named."""
        return "\n".join(
            [
                f"**{self.model_kind or 'no'} model for `{self.model_name}`**, chosen by an Optuna search"
                " over Keras RNNs (one nested run per trial; `best_trial=true` marks the winner).",
                "",
                *(f"- {part}" for part in self.parts),
                *([""] if self.parts else []),
                self.to_markdown(in_the_ui=True),
                "",
                "Metrics: `model/…` the shipped model (RNN, or RNN + bag-of-bigrams blend), `rnn/…` and"
                " `bigrams/…` each trained part per epoch, `blend/…` the validation accuracies behind the"
                " blend choice, `search/…` the study. Plots: `plots/` (test split), `study/` (the search);"
                " error analysis: `evaluation/confident_errors.json`.",
            ]
        )


def _parts(
    cfg: PipelineConfig, run: tracking.RunHandle, final: FinalModel, searched: search.SearchResult | None
) -> tuple[str, ...]:
    """The description's first lines: what each part of the shipped model scored on validation,
    and which budget cut which part short (a run whose RNN trained one epoch before its budget
    stopped it must not read like a searched RNN at its best)."""
    metrics = run.client.get_run(run.run_id).data.metrics
    rnn = final.result
    monitored = {"val_accuracy": "validation accuracy", "val_loss": "validation loss"}.get(cfg.train.monitor, cfg.train.monitor)
    line = f"RNN: {monitored} {rnn.best_value:.4f} (best of {rnn.epochs} of {cfg.train.epochs} epochs)"
    if metrics.get("rnn/stopped_by_time_budget") == 1.0:
        line += f", stopped by the time budget (train.time_budget {cfg.train.time_budget:g} s)"
    lines = [line]
    if "blend/val_accuracy_bigrams" in metrics:
        lines.append(f"companion (bag of n-grams) alone: validation accuracy {metrics['blend/val_accuracy_bigrams']:.4f}")
    if final.kind == "rnn+bigrams" and "blend/val_accuracy_rnn_bigrams" in metrics:
        weight = metrics.get("blend/blend_weight_rnn")
        share = f", the RNN's weight {weight:.2f}" if weight is not None else ""
        lines.append(f"the blend shipped: validation accuracy {metrics['blend/val_accuracy_rnn_bigrams']:.4f}{share}")
    if searched is not None:
        search_line = f"search: {searched.complete} complete and {searched.pruned} pruned trials in the study"
        if cfg.search.timeout is not None and searched.seconds >= cfg.search.timeout:
            search_line += f"; this search was stopped by its time budget (search.timeout {cfg.search.timeout:g} s)"
        lines.append(search_line)
    return tuple(lines)


def _hparams(hparams: Mapping[str, Any] | None) -> str:
    return ", ".join(
        f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in (hparams or {}).items()
    )


# --- the stages, in pipeline order --------------------------------------------------------


def chosen_hparams(
    cfg: PipelineConfig, preset: str | None, best_of: str | None, overrides: Mapping[str, Any]
) -> tuple[PipelineConfig, HParams]:
    """What ``sentiment train`` trains: a notebook preset (its data options applied to ``cfg``) or
    the best trial of the study ``best_of``, with ``overrides`` (``learning_rate``…) on top.

    Raises ConfigError naming the option at fault; SearchError when the study has no best trial.
    """
    if (preset is None) == (best_of is None):
        raise ConfigError("give exactly one of --preset or --best-of")
    if preset is not None:
        if preset not in PRESETS:
            raise ConfigError(
                f"invalid option --preset: unknown preset '{preset}' (known: {', '.join(PRESETS)})"
            )
        cfg, base = PRESETS[preset].configure(cfg), PRESETS[preset].hparams
    else:
        cfg = cfg.model_copy(update={"search": cfg.search.model_copy(update={"study_name": best_of})})
        base = search.best_hparams(best_of, resolve(cfg).study_storage, cfg.search.selection)
    try:
        return cfg, HParams.model_validate(base.model_dump() | dict(overrides))
    except ValidationError as error:
        problems = [
            f"invalid option --{str(p['loc'][0]).replace('_', '-')}: {p['msg']} (got {p['input']!r})"
            for p in error.errors()
        ]
        raise ConfigError("\n".join(problems)) from None


def check_champion(stores: Stores, cfg: PipelineConfig, data: PreparedData) -> registry.ChampionCheck:
    """Is the champion already trained on this dataset and config? (scheduled retraining skips)"""
    return registry.check_champion(stores, cfg, data.digest)


def dataset_record(data: PreparedData) -> tracking.DatasetRecord:
    """The run's dataset input: named ``aclImdb`` for the archive's layout, ``reviews`` for a table."""
    name = "aclImdb" if data.source.endswith((".tar.gz", ".tgz", ".tar")) or "aclImdb" in data.source else "reviews"
    return tracking.DatasetRecord(data.digest, data.source, data.summary(), name=name)


@contextmanager
def pipeline_run(
    stores: Stores, cfg: PipelineConfig, data: PreparedData, run_name: str | None = None
) -> Iterator[tracking.RunHandle]:
    """The parent MLflow run every stage below logs to: the config (with the stores it resolved
    to) as dotted params, the dataset as the run's input, beating a heartbeat. Parent runs of the
    same study left RUNNING by a killed process (on this machine, or silent for three beats on
    another) are closed KILLED first."""
    params, places = _place_params(cfg.flat_params() | {"tracking.tracking_uri": redact(stores.tracking_uri)})
    study = {"optuna_study": cfg.search.study_name}
    beat = cfg.search.heartbeat_seconds  # as the study's trials: three silent beats mean dead
    tracking.close_dead_runs(stores, cfg.tracking.experiment_name, study, silent_for=3 * beat)
    with tracking.pipeline_run(
        stores, cfg.tracking.experiment_name, params, dataset_record(data), run_name, tags=study, closing_tags=places
    ) as run, tracking.heartbeat(run, beat):
        _refuse_failed_checks(run, cfg, data)
        yield run


def _refuse_failed_checks(run: tracking.RunHandle, cfg: PipelineConfig, data: PreparedData) -> None:
    """Before any training: reviews that fail the data checks end the run FAILED, the report as
    its ``data/checks.json`` and its description saying which checks failed."""
    failures = data_checks.verdict(data.check_findings, cfg.data)
    if data.check_findings:
        run.log_dict(data_checks.report(data.check_findings, failures), "data/checks.json")
    if failures:
        refusal = data_checks.error(failures)
        run.describe(f"**Refused before training.** {refusal}")
        raise refusal


def _place_params(params: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """Params that say where things live on this machine (absolute paths, store URIs) are no
    hyperparameters to compare runs by: their full values go to ``where.…`` tags (written as the
    run ends, after the tags that say how it went), and a path inside the project stays a param,
    relative to it (``pipeline/sample/…``)."""
    kept, places = {}, {}
    for key, value in params.items():
        if key not in _PLACES:
            kept[key] = value
        elif value is not None:
            places[f"where.{key}"] = str(value)
            if key in _PATHS and Path(value).is_relative_to(PROJECT_ROOT):
                kept[key] = str(Path(value).relative_to(PROJECT_ROOT))
    return kept, places


_PATHS = ("data.path", "data.cache_dir")
_PLACES = (*_PATHS, "tracking.tracking_uri", "search.storage")


def record_skipped_run(
    stores: Stores,
    cfg: PipelineConfig,
    data: PreparedData,
    check: registry.ChampionCheck,
    ui_url: str | None = None,
) -> RunSummary:
    """A FINISHED parent run tagged ``outcome=skipped`` with the reason; nothing is trained."""
    with pipeline_run(stores, cfg, data, run_name=f"skipped-{time.strftime('%Y%m%d-%H%M%S')}") as run:
        tags = {"outcome": "skipped", "skip_reason": check.reason}
        run.set_tags(
            tags | {"champion_version": check.champion_version, "champion_run_id": check.champion_run_id}
        )
    return RunSummary(
        run_id=run.run_id,
        run_url=run.link(ui_url),
        model_name=cfg.tracking.model_name,
        champion_check=check.reason,
        skipped=True,
        champion_version=check.champion_version,
        ui_command=stores.ui_command(),
    )


def search_hparams(data: PreparedData, cfg: PipelineConfig, run: tracking.RunHandle) -> search.SearchResult:
    """The Optuna search, a nested MLflow run per trial; the best trial's params on the parent."""
    tracker = tracking.trial_tracker(
        run, cfg.tracking.experiment_name, cfg.search.study_name, dataset_record(data)
    )
    owner = {"parent_run_id": run.run_id, "experiment_name": cfg.tracking.experiment_name}
    result = search.run_search(data, cfg, run.stores.study_storage, tracker, invocation=run.run_id, **owner)
    _log_search(run, result, cfg)
    return result


def _log_search(run: tracking.RunHandle, result: search.SearchResult, cfg: PipelineConfig) -> None:
    """The study's outcome on the parent run: the best trial's params, the trial counts (metrics
    ``search/…``), the best trial marked (``best_trial=true``, its number and run id on the
    parent), and the study's plots and trials table (``study/``)."""
    run.log_params({f"best_trial.{k}": v for k, v in result.best_hparams.model_dump().items()})
    run.log_metrics(
        {
            f"search/best_{cfg.train.monitor}": result.best_value,
            "objective": result.best_value,  # the runs view sorts by it: the parent beside its best trial
            "search/trials_complete": result.complete,
            "search/trials_pruned": result.pruned,
            "search/trials_failed": result.failed,
            "search/seconds": result.seconds,
        }
    )
    tracking.mark_best_trial(run, cfg.tracking.experiment_name, cfg.search.study_name, result.best_trial)
    _log_study(run, cfg)


def _log_study(run: tracking.RunHandle, cfg: PipelineConfig) -> None:
    """Optuna's plots of the study (one interactive HTML page, a PNG each) and the table of its
    trials (an MLflow table artifact, one row per trial) under ``study/`` on the parent run."""
    import matplotlib.pyplot as plt

    study = study_report.load(cfg.search.study_name, run.stores.study_storage)
    metric = cfg.train.monitor
    title = f"Study {study.study_name}: {metric}"
    run.log_text(study_report.html_page(study_report.interactive_plots(study, metric), title), "study/plots.html")
    for name, figure in study_report.static_plots(study, metric).items():
        run.log_figure(figure, f"study/{name}.png")
        plt.close(figure)  # Optuna draws these through pyplot, which keeps every figure open
    runs = tracking.trial_runs(run, cfg.search.study_name)
    run.log_table(study_report.trials_table(study, runs), "study/trials.json")


@dataclass(frozen=True)
class StudyInfo:
    """A study that workers join: where its trials' runs go and how many trials it wants."""

    study_name: str
    parent_run_id: str
    experiment_name: str
    trials_target: int
    data_digest: str
    created: bool  # False: it existed already (create is idempotent)


def create_study(
    stores: Stores, cfg: PipelineConfig, data: PreparedData, parent_run_id: str | None = None
) -> StudyInfo:
    """The study ``search.study_name`` for workers on any machine to join (``search_worker``),
    with its dataset digest, search space, target and the MLflow run its trials nest under.

    Without ``parent_run_id`` (``sentiment study create``): the target is ``search.trials`` in
    all, and a ``study-<name>`` run (closed at once) is the trials' parent; an existing study is
    checked against this data and space and returned unchanged. With ``parent_run_id`` (a
    pipeline run that fans its search out): the target is ``search.trials`` more than the study
    has finished, and the trials nest under that run. Raises search.StudyMismatch when the study
    was made for other data (first case) or another search space."""
    study = search.create_study(cfg, stores.study_storage)
    stored = search.StudyRecord.of(study)
    if parent_run_id is not None:
        record = search.own_study(
            study, cfg, data.digest, parent_run_id, experiment_name=cfg.tracking.experiment_name, parent_run_id=parent_run_id
        )
        created = True
    elif stored is not None and stored.trials_target is not None and stored.parent_run_id is not None:
        record, created = search.claim_study(study, cfg, data.digest), False  # checks; the target stays
    else:
        # Checks an older study's record, or writes one; either way, the space this config draws from.
        space = search.claim_study(study, cfg, data.digest).search_space
        with pipeline_run(stores, cfg, data, run_name=f"study-{cfg.search.study_name}") as run:
            run.set_tags({"stage": "study"})
            run.log_dict(space, "study/search_space.json")  # what every worker must match
        record = search.StudyRecord(data.digest, space, cfg.search.trials, cfg.tracking.experiment_name, run.run_id)
        record.write(study)
        created = True
    return StudyInfo(
        study.study_name, record.parent_run_id, record.experiment_name, record.trials_target, record.data_digest, created
    )


def search_worker(stores: Stores, cfg: PipelineConfig, data: PreparedData) -> search.WorkerResult:
    """Join the study ``search.study_name`` until its target is met (``sentiment worker``, a
    Kubeflow search pod, a Prefect pool run); its trial runs nest under the study's parent run."""
    record = search.study_record(cfg, stores.study_storage)
    experiment = record.experiment_name or cfg.tracking.experiment_name
    tracker = tracking.TrialTracker(
        record.parent_run_id, stores, experiment, cfg.search.study_name, dataset_record(data)
    )
    return search.join_study(data, cfg, stores.study_storage, tracker)


def study_result(stores: Stores, cfg: PipelineConfig, run: tracking.RunHandle) -> search.SearchResult:
    """The best trial of the study ``search.study_name``, logged on ``run`` as ``search_hparams``
    logs it: what a pipeline whose search fanned out to workers trains next."""
    result = search.study_best(cfg.search.study_name, stores.study_storage, cfg.search.selection)
    _log_search(run, result, cfg)
    return result


def train_final(
    hparams: HParams, data: PreparedData, cfg: PipelineConfig, run: tracking.RunHandle
) -> FinalModel:
    """The RNN on all training reviews at full length, then (unless ``train.bigram_buckets`` is 0)
    its bag-of-bigrams companion; the average of both when that wins on validation."""
    run.log_params(run_params(hparams, cfg, data.vocab_size_effective))
    budget = TimeBudget(cfg.train.time_budget) if cfg.train.time_budget else None
    callbacks = [EpochMetrics(run.log_metrics, prefix="rnn/"), *([budget] if budget else [])]
    rnn, result = train_model(hparams, data, cfg.train, callbacks=callbacks, progress=f"final {hparams.cell}")
    _log_training(run, result, prefix="rnn/")
    if budget:
        run.log_metrics({"rnn/stopped_by_time_budget": float(budget.stopped)})
    # Served uncompiled: a compiled model is saved with its optimizer state.
    final = FinalModel(inference_copy(rnn), hparams, result, "rnn", data.vocab_size_effective)
    if cfg.train.bigram_buckets:
        final = _blend_companion(final, data, cfg, run)
    run.set_tags({"model_kind": final.kind})
    return final


def _blend_companion(
    rnn: FinalModel, data: PreparedData, cfg: PipelineConfig, run: tracking.RunHandle
) -> FinalModel:
    if cfg.train.companion == "nbsvm":
        companion, companion_result = train_nbsvm_model(data, cfg.train, widths=rnn.result.widths)
        run.log_metrics({"bigrams/val_accuracy": companion_result.best_value}, 1)
    else:
        companion, companion_result = train_bigram_model(
            data,
            cfg.train,
            widths=rnn.result.widths,
            callbacks=[EpochMetrics(run.log_metrics, prefix="bigrams/")],
            progress="bigram companion",
        )
    _log_training(run, companion_result, prefix="bigrams/")
    choice = choose_blend(rnn.model, companion, data.val, rnn.result.widths)
    run.log_metrics({f"blend/{name}": value for name, value in choice.metrics().items()})
    ids = "ngram_ids" if cfg.train.companion == "nbsvm" else "bigram_ids"
    buckets = companion.get_layer(ids).buckets  # the cap, or fewer on small data
    run.log_params({"bigram_buckets_used": buckets})
    if choice.chosen == "rnn":
        return rnn
    model, held_out = choice.model, None
    if cfg.train.refit and cfg.train.companion == "nbsvm":
        # The blend with its NBSVM fitted again on training + validation reviews, at the weight
        # chosen above; the RNN stays the fit early stopping chose on validation. A quarter more
        # reviews gained the NBSVM 0.003 test accuracy; an RNN refitted for its best epoch count
        # is a new draw that nothing has validated (one scored 0.873 on test where its held-out
        # fit had scored 0.888 on validation: docs/benchmarks.md).
        started = time.perf_counter()
        companion, _ = train_nbsvm_model(train_and_val(data), cfg.train, widths=rnn.result.widths)
        run.log_metrics({"refit/companion_seconds": time.perf_counter() - started})
        buckets = companion.get_layer(ids).buckets
        model, held_out = average_models([rnn.model, companion], [choice.rnn_weight, 1 - choice.rnn_weight]), model
    return FinalModel(
        model,
        rnn.hparams,
        rnn.result,
        choice.chosen,
        rnn.vocab_size_effective,
        buckets,
        cfg.train.bigram_dim,
        held_out,
    )


def _log_training(run: tracking.RunHandle, result: TrainResult, prefix: str) -> None:
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


# The parts that train under a pipeline run, by metric prefix: their learning curves.
_PARTS = {"rnn": "RNN", "bigrams": "bag-of-bigrams companion"}


def evaluate_model(final: FinalModel, data: PreparedData, run: tracking.RunHandle) -> Evaluation:
    """The shipped model on the test split: metrics ``model/test_…`` (and ``model/val_accuracy``,
    of its held-out fit when it was refitted on the validation reviews too),
    confusion matrix, ROC, precision-recall, calibration and accuracy-by-length plots, a learning
    curve per trained part, and the most confidently wrong reviews as a table (``evaluation/``)."""
    probability = predict_proba(final.model, data.test.x, data.test.lengths, final.result.widths)
    evaluation = evaluate(data.test.y, probability)
    val = predict_proba(final.held_out_model or final.model, data.val.x, data.val.lengths, final.result.widths)
    headline = {f"model/{k}": v for k, v in evaluation.metrics.items() if v == v}  # NaN: undefined
    headline["model/val_accuracy"] = float(np.mean((val >= THRESHOLD) == data.val.y.astype(bool)))
    run.log_metrics(headline)
    label = f"{final.kind} model, test split ({len(data.test_texts)} reviews)"
    y, words = data.test.y, np.array([len(text.split()) for text in data.test_texts])
    by_length = accuracy_by_length(y, probability, words)
    figures = {
        "confusion_matrix": confusion_figure(evaluation.confusion, label),
        "roc_curve": roc_figure(y, probability, label),
        "precision_recall_curve": precision_recall_figure(y, probability, label),
        "calibration": calibration_figure(y, probability, label),
        "accuracy_by_length": length_figure(by_length, label),
    }
    for part, name in _PARTS.items():
        curves = run.history([f"{part}/{m}" for m in ("loss", "accuracy", "val_loss", "val_accuracy")])
        if curves:
            history = {key.removeprefix(f"{part}/"): values for key, values in curves.items()}
            figures[f"learning_curves_{part}"] = learning_curves(history, name)
    for name, figure in figures.items():
        run.log_figure(figure, f"plots/{name}.png")
    run.log_dict(
        {"rows_true": ["negative", "positive"], "matrix": evaluation.confusion.tolist()},
        "evaluation/confusion_matrix.json",
    )
    run.log_table(by_length, "evaluation/accuracy_by_length.json")
    run.log_table(confident_errors(list(data.test_texts), y, probability), "evaluation/confident_errors.json")
    return evaluation


def log_model(final: FinalModel, data: PreparedData, run: tracking.RunHandle) -> str:
    """The raw-text pyfunc as the run's logged model (a model from code: nothing pickled);
    returns its ``models:/<model_id>`` URI. Logged after ``evaluate_model``, so the test metrics
    are linked to it."""
    with tempfile.TemporaryDirectory() as tmp:
        spec = pyfunc_spec(
            final.model, data.vocabulary, data.max_len, final.result.widths, THRESHOLD, Path(tmp)
        )
        return run.log_model(logged_model_name(final, run), spec)


def logged_model_name(final: FinalModel, run: tracking.RunHandle) -> str:
    """What the experiment's Models tab lists: the model and the run that made it
    (``gru64x2-rnn+bigrams-pipeline-20261207-160546``), not ``model`` for every run."""
    h = final.hparams
    run_name = run.client.get_run(run.run_id).info.run_name or run.run_id
    name = f"{'bi' if h.bidirectional else ''}{h.cell}{h.units}x{h.layers}-{final.kind}-{run_name}"
    return re.sub(r"[/:.%\"']", "-", name)  # what MLflow refuses in a logged model's name


def register_model(
    cfg: PipelineConfig,
    model_uri: str,
    final: FinalModel,
    evaluation: Evaluation,
    data: PreparedData,
    run: tracking.RunHandle,
) -> registry.PromotionDecision:
    """Register the model; promote it only if it beats the champion on the same test reviews."""
    evidence: dict[str, Any] = {
        **evaluation.metrics,
        **_validation_numbers(run),
        **run_params(final.hparams, cfg),
        **final.details(),
        **data.summary(),
        "run_id": run.run_id,
    }
    decision = registry.register_and_promote(
        run.stores,
        cfg.tracking,
        model_uri,
        run.run_id,
        evidence,
        test=registry.TestSplit(data.test_texts, data.test.y),
        correct=evaluation.correct,
    )
    run.set_tags(
        {
            "registered_version": decision.version,
            "promotion": decision.reason,
            "promotion_p_value": f"{decision.p_value:.3g}" if decision.p_value is not None else "none",
        }
    )
    return decision


def _validation_numbers(run: tracking.RunHandle) -> dict[str, float]:
    """What chose the model, from the run's metrics: the shipped model's validation accuracy, the
    candidates of the blend choice, and the best trial's value (``val_…`` keys for the card)."""
    logged = run.client.get_run(run.run_id).data.metrics
    numbers = {f"val_{key.removeprefix('blend/val_')}": v for key, v in logged.items() if key.startswith("blend/val_")}
    numbers |= {f"val_{k.removeprefix('search/best_val_')}_best_trial": v for k, v in logged.items() if k.startswith("search/best_val_")}
    if "model/val_accuracy" in logged:
        numbers["val_accuracy"] = logged["model/val_accuracy"]
    return numbers


def summarize(
    cfg: PipelineConfig,
    run: tracking.RunHandle,
    final: FinalModel,
    evaluation: Evaluation,
    *,
    searched: search.SearchResult | None = None,
    check: registry.ChampionCheck | None = None,
    model_uri: str | None = None,
    decision: registry.PromotionDecision | None = None,
    forced: bool = False,
    ui_url: str | None = None,
) -> RunSummary:
    """The run's outcome in one frozen value."""
    promotion: dict[str, Any] = {}
    if decision is not None:
        promotion = {
            "registered_version": decision.version,
            "promoted": decision.promoted,
            "promotion_reason": decision.reason,
            "promotion_p_value": decision.p_value,
            "champion_version": decision.version if decision.promoted else decision.champion_version,
            "previous_champion_version": decision.champion_version,
            "previous_champion_accuracy": decision.champion_accuracy,
        }
    best: dict[str, Any] = {}
    if searched is not None:
        best = {
            "best_trial": searched.best_trial,
            "best_value": searched.best_value,
            "best_hparams": searched.best_hparams.model_dump(),
        }
    summary = RunSummary(
        run_id=run.run_id,
        run_url=run.link(ui_url),
        model_name=cfg.tracking.model_name,
        champion_check=check.reason if check is not None else "not checked",
        forced=forced,
        model_kind=final.kind,
        test_metrics=evaluation.metrics,
        model_uri=model_uri,
        ui_command=run.stores.ui_command(),
        parts=_parts(cfg, run, final, searched),
        **best,
        **promotion,
    )
    run.describe(summary.description())
    return summary
