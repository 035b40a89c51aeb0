"""The training flow: data prep → champion check → search → final training (the RNN, then its
bag-of-bigrams companion, blended when that wins on validation) → evaluation → registry.

Run on a schedule (``flows/deploy.py``), it is idempotent: when the dataset digest and the config
equal those of the current champion's training run, it records a skipped run and stops, unless
``force`` is set. Every run ends with a markdown summary artifact.
"""

from __future__ import annotations

from typing import Any

from prefect import flow
from prefect.runtime import flow_run

from flows.tasks import (
    blend_bigram_companion,
    check_champion,
    evaluate_model,
    log_model,
    prepare_data,
    publish_summary,
    record_skipped_run,
    register_model,
    search_hparams,
    train_final,
)
from pipeline import tracking
from pipeline.config import PipelineConfig


def flow_run_name() -> str:
    """``train-<model>-<scheduled time>``, ``force-train-…`` when forced."""
    parameters = flow_run.parameters
    cfg = PipelineConfig.model_validate(parameters.get("config") or {})
    prefix = "force-train" if parameters.get("force") else "train"
    return f"{prefix}-{cfg.tracking.model_name}-{flow_run.scheduled_start_time:%Y%m%d-%H%M%S}"


@flow(name="imdb-sentiment-training", flow_run_name=flow_run_name)
def training_flow(
    config: PipelineConfig = PipelineConfig(),  # noqa: B008 (frozen)
    force: bool = False,
    mlflow_ui_url: str | None = None,
) -> dict[str, Any]:
    """Train, tune, evaluate, log and register a sentiment model; returns a summary of the run.

    Skips (and records a skipped MLflow run) when the champion was trained on the same data and
    config, unless ``force``. ``mlflow_ui_url`` is where the summary's run link points.
    """
    data = prepare_data(config.data)
    check = check_champion(config, data)
    if check.unchanged and not force:
        summary = record_skipped_run(config, data, check, mlflow_ui_url)
        publish_summary(config, summary)
        return summary
    with tracking.pipeline_run(config, data) as run:
        searched = search_hparams(data, config, run)
        model, result = train_final(searched.best_hparams, data, config, run)
        model, model_details = blend_bigram_companion(model, result, data, config, run)
        evaluation = evaluate_model(model, data, result, run)
        model_uri = log_model(run, model, data, result)
        decision = register_model(
            config, model_uri, run, evaluation, searched.best_hparams, data, model_details
        )
    summary = {
        "skipped": False,
        "forced": force,
        "champion_check": check.reason,
        "run_id": run.run_id,
        "run_url": tracking.run_link(run, mlflow_ui_url),
        "best_trial": searched.best_trial,
        "best_value": searched.best_value,
        "best_hparams": searched.best_hparams.model_dump(),
        **model_details,
        "test_metrics": evaluation.metrics,
        "model_uri": model_uri,
        "registered_version": decision.version,
        "promoted": decision.promoted,
        "promotion_reason": decision.reason,
        "promotion_p_value": decision.p_value,
        "champion_version": decision.version if decision.promoted else decision.champion_version,
        "previous_champion_version": decision.champion_version,
        "previous_champion_accuracy": decision.champion_accuracy,
    }
    publish_summary(config, summary)
    return summary
