"""The flows: the library's stages in order, and nothing else.

``training_flow`` is the whole pipeline (what ``sentiment run`` and the scheduled deployment run);
``train_flow`` trains one given configuration (``sentiment train``); ``search_flow`` runs the study
alone (``sentiment search``). All three share ``_train_to_registry``, so the stages after the
search are ordered in one place.

Run on a schedule (``flows/deploy.py``), ``training_flow`` is idempotent: when the dataset digest
and the config equal those of the current champion's training run, it records a skipped run and
stops, unless ``force`` is set. Every run ends with a markdown summary artifact.
"""

from __future__ import annotations

from typing import Literal

from prefect import flow
from prefect.runtime import flow_run

from flows.dispatch import dispatch_search_workers
from flows.prefect_api import cancelled_if_interrupted
from flows.tasks import (
    check_champion,
    create_study,
    evaluate_model,
    log_model,
    prepare,
    publish_summary,
    record_skipped_run,
    register_model,
    search_hparams,
    search_worker,
    study_result,
    train_final,
)
from pipeline.config import HParams, PipelineConfig
from pipeline.data import PreparedData
from pipeline.registry import ChampionCheck
from pipeline.search import SearchResult, WorkerResult, check_study
from pipeline.stages import RunSummary, pipeline_run, summarize
from pipeline.stores import preflight
from pipeline.tracking import RunHandle


def flow_run_name() -> str:
    """``train-<model>-<scheduled time>``, ``force-train-…`` when forced."""
    parameters = flow_run.parameters
    cfg = PipelineConfig.model_validate(parameters.get("config") or {})
    prefix = "force-train" if parameters.get("force") else "train"
    return f"{prefix}-{cfg.tracking.model_name}-{flow_run.scheduled_start_time:%Y%m%d-%H%M%S}"


@flow(name="imdb-sentiment-training", flow_run_name=flow_run_name, on_crashed=[cancelled_if_interrupted])
def training_flow(
    config: PipelineConfig = PipelineConfig(),  # noqa: B008 (frozen)
    force: bool = False,
    mlflow_ui_url: str | None = None,
    dispatch: Literal["local", "pool"] = "local",
) -> RunSummary:
    """Prepare, search, train, evaluate, log and register a sentiment model; a summary of the run.

    Skips (and records a skipped MLflow run) when the champion was trained on the same data and
    config, unless ``force``. ``mlflow_ui_url`` is where the summary's run link points. With
    ``dispatch="pool"`` the search runs as ``search.workers`` runs of the search-worker
    deployment on its work pool (``flows/dispatch.py``), all joining this run's study.
    """
    stores = preflight(config)
    check_study(config, stores.study_storage)  # another search space: refused before any work
    data = prepare(config.data)
    check = check_champion(stores, config, data)
    if check.unchanged and not force:
        summary = record_skipped_run(stores, config, data, check, mlflow_ui_url)
    else:
        with pipeline_run(stores, config, data) as run:
            if dispatch == "pool":
                create_study(stores, config, data, parent_run_id=run.run_id)
                dispatch_search_workers(config, config.search.workers)
                searched = study_result(stores, config, run)
            else:
                searched = search_hparams(data, config, run)
            summary = _train_to_registry(
                searched.best_hparams, data, config, run, True, searched, check, force, mlflow_ui_url
            )
    publish_summary(config, summary)
    return summary


@flow(name="imdb-sentiment-train-one", on_crashed=[cancelled_if_interrupted])
def train_flow(
    config: PipelineConfig,
    hparams: HParams,
    run_name: str,
    to_registry: bool = False,
    best_of: str | None = None,
) -> RunSummary:
    """Train, evaluate and log one given configuration; register it (and promote it if it beats
    the champion) when ``to_registry``. ``best_of`` names the study ``hparams`` come from: one made
    for other data or another search space is refused before any run is opened."""
    stores = preflight(config, study=best_of is not None)
    data = prepare(config.data)
    if best_of is not None:
        check_study(config, stores.study_storage, data.digest)
    with pipeline_run(stores, config, data, run_name) as run:
        return _train_to_registry(hparams, data, config, run, to_registry)


@flow(name="imdb-sentiment-search", on_crashed=[cancelled_if_interrupted])
def search_flow(config: PipelineConfig) -> SearchResult:
    """Run (or resume) the Optuna study under a parent run of its own."""
    stores = preflight(config)
    data = prepare(config.data)
    with pipeline_run(stores, config, data, f"search-{config.search.study_name}") as run:
        return search_hparams(data, config, run)


@flow(name="imdb-sentiment-search-worker", on_crashed=[cancelled_if_interrupted])
def search_worker_flow(config: PipelineConfig) -> WorkerResult:
    """Join the study ``config.search.study_name`` until its target is met: one search worker,
    run by a work pool (``dispatch="pool"``) or by hand."""
    stores = preflight(config)
    return search_worker(stores, config, prepare(config.data))


def _train_to_registry(
    hparams: HParams,
    data: PreparedData,
    config: PipelineConfig,
    run: RunHandle,
    register: bool,
    searched: SearchResult | None = None,
    check: ChampionCheck | None = None,
    force: bool = False,
    mlflow_ui_url: str | None = None,
) -> RunSummary:
    final = train_final(hparams, data, config, run)
    evaluation = evaluate_model(final, data, run)
    model_uri = decision = None
    if register:
        model_uri = log_model(final, data, run)
        decision = register_model(config, model_uri, final, evaluation, data, run)
    return summarize(
        config,
        run,
        final,
        evaluation,
        searched=searched,
        check=check,
        model_uri=model_uri,
        decision=decision,
        forced=force,
        ui_url=mlflow_ui_url,
    )
