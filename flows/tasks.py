"""Prefect tasks: each a thin wrapper around one library stage, with retries where they help.

Tasks take and return in-memory values (arrays, a Keras model), so Prefect's input hashing and
result persistence are off (``NO_CACHE``); prepared data is cached by ``pipeline.data`` itself.

Tasks that write to the MLflow store retry with exponential backoff (a store briefly unavailable,
a crashed trial); errors that another try cannot fix (bad data, bad config) fail at once.
"""

from __future__ import annotations

import re
from typing import Any

from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.tasks import exponential_backoff
from pydantic import ValidationError

from pipeline import data as data_stage
from pipeline import registry, search, tracking
from pipeline.batching import predict_proba
from pipeline.blend import choose_blend
from pipeline.config import ConfigError, DataConfig, HParams, PipelineConfig, run_params
from pipeline.evaluate import Evaluation, evaluate
from pipeline.train import TrainResult, train_bigram_model, train_model

_PERMANENT = (data_stage.DataError, ConfigError, ValidationError, TypeError)


def _transient(task, task_run, state) -> bool:
    """Retry unless the failure is one that another try cannot fix."""
    return not isinstance(state.data, _PERMANENT)


# Cheap store calls retry three times (2, 4, 8 s, ±50 %); training and search once (they are slow).
STORE_RETRIES: dict[str, Any] = {
    "retries": 3,
    "retry_delay_seconds": exponential_backoff(backoff_factor=2),
    "retry_jitter_factor": 0.5,
    "retry_condition_fn": _transient,
}
WORK_RETRIES: dict[str, Any] = {**STORE_RETRIES, "retries": 1}


@task(name="prepare-data", cache_policy=NO_CACHE)
def prepare_data(cfg: DataConfig) -> data_stage.PreparedData:
    return data_stage.prepare(cfg)


@task(name="search-hyperparameters", cache_policy=NO_CACHE, **WORK_RETRIES)
def search_hparams(
    data: data_stage.PreparedData, cfg: PipelineConfig, run: tracking.RunHandle
) -> search.SearchResult:
    result = search.run_search(data, cfg, tracking.trial_tracker(run, cfg.tracking))
    run.log_params({f"best_trial.{k}": v for k, v in result.best_hparams.model_dump().items()})
    run.log_metrics(
        {
            "best_trial_value": result.best_value,
            "trials_complete": result.complete,
            "trials_pruned": result.pruned,
            "trials_failed": result.failed,
            "search_seconds": result.seconds,
        }
    )
    return result


@task(name="train-final-model", cache_policy=NO_CACHE, **WORK_RETRIES)
def train_final(
    hparams: HParams, data: data_stage.PreparedData, cfg: PipelineConfig, run: tracking.RunHandle
):
    run.log_params(run_params(hparams, cfg))
    model, result = train_model(hparams, data, cfg.train, callbacks=[run.epoch_callback()])
    tracking.log_training(run, result)
    return model, result


@task(name="blend-bigram-companion", cache_policy=NO_CACHE, **WORK_RETRIES)
def blend_bigram_companion(
    model, result: TrainResult, data: data_stage.PreparedData, cfg: PipelineConfig, run: tracking.RunHandle
):
    """Train the bag-of-bigrams companion; the RNN+companion average when it wins on validation,
    else the RNN (alone when ``train.bigram_buckets`` is 0). Returns (model, what it is:
    ``model_kind`` "rnn" or "rnn+bigrams", and for a blend the companion's buckets and width)."""
    details: dict[str, Any] = {"model_kind": "rnn"}
    if cfg.train.bigram_buckets:
        companion, companion_result = train_bigram_model(
            data, cfg.train, widths=result.widths, callbacks=[run.epoch_callback(prefix="bigrams_")]
        )
        tracking.log_training(run, companion_result, prefix="bigrams_")
        choice = choose_blend(model, companion, data.val, result.widths)
        run.log_metrics(choice.metrics())
        buckets = companion.get_layer("bigram_ids").buckets  # the cap, or fewer on small data
        run.log_params({"bigram_buckets_used": buckets})
        if choice.chosen != "rnn":
            model = choice.model
            details = {
                "model_kind": choice.chosen,
                "bigram_buckets": buckets,
                "bigram_dim": cfg.train.bigram_dim,
            }
    run.set_tags({"model_kind": details["model_kind"]})
    return model, details


@task(name="evaluate", cache_policy=NO_CACHE, **STORE_RETRIES)
def evaluate_model(
    model, data: data_stage.PreparedData, result: TrainResult, run: tracking.RunHandle
) -> Evaluation:
    probability = predict_proba(model, data.test.x, data.test.lengths, result.widths)
    evaluation = evaluate(data.test.y, probability)
    tracking.log_evaluation(run, evaluation, result.history)
    return evaluation


@task(name="log-model", cache_policy=NO_CACHE, **STORE_RETRIES)
def log_model(run: tracking.RunHandle, model, data: data_stage.PreparedData, result: TrainResult) -> str:
    return tracking.log_model(run, model, data, result.widths)


@task(name="register-model", cache_policy=NO_CACHE, **STORE_RETRIES)
def register_model(
    cfg: PipelineConfig,
    model_uri: str,
    run: tracking.RunHandle,
    evaluation: Evaluation,
    hparams: HParams,
    data: data_stage.PreparedData,
    model_details: dict[str, Any] | None = None,
) -> registry.PromotionDecision:
    """Register the model; promote it only if it beats the champion on the same test reviews.

    ``model_details`` (from ``blend_bigram_companion``) say what the model is on its version."""
    evidence: dict[str, Any] = {
        **evaluation.metrics,
        **run_params(hparams, cfg),
        **(model_details or {"model_kind": "rnn"}),
        **data.summary(),
        "run_id": run.run_id,
    }
    decision = registry.register_and_promote(
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
            "promotion_p_value": decision.p_value if decision.p_value is not None else "none",
        }
    )
    return decision


@task(name="check-champion", cache_policy=NO_CACHE, **STORE_RETRIES)
def check_champion(cfg: PipelineConfig, data: data_stage.PreparedData) -> tracking.ChampionCheck:
    return tracking.check_champion(cfg, data.digest)


@task(name="record-skipped-run", cache_policy=NO_CACHE, **STORE_RETRIES)
def record_skipped_run(
    cfg: PipelineConfig, data: data_stage.PreparedData, check: tracking.ChampionCheck, ui_url: str | None
) -> dict[str, Any]:
    run = tracking.record_skipped_run(cfg, data, check)
    return {
        "skipped": True,
        "reason": check.reason,
        "run_id": run.run_id,
        "run_url": tracking.run_link(run, ui_url),
        "champion_version": check.champion_version,
        "champion_run_id": check.champion_run_id,
    }


@task(name="publish-summary", cache_policy=NO_CACHE)
def publish_summary(cfg: PipelineConfig, summary: dict[str, Any]) -> None:
    """The run's summary as a markdown table artifact, one key per registered model."""
    key = "training-summary-" + re.sub(r"[^a-z0-9-]+", "-", cfg.tracking.model_name.lower()).strip("-")
    create_markdown_artifact(markdown=summary_table(summary), key=key, description="training run summary")


def summary_table(summary: dict[str, Any]) -> str:
    """Markdown: outcome, best trial, test metrics, promotion decision, MLflow run link."""
    link = f"[{summary['run_id']}]({summary['run_url']})"
    if summary.get("skipped"):
        rows = [("Outcome", "skipped"), ("Reason", summary["reason"])]
        rows += [("Champion", f"v{summary['champion_version']}"), ("MLflow run", link)]
    else:
        metrics = ", ".join(f"{k} {v:.4f}" for k, v in summary["test_metrics"].items())
        promotion = "promoted to champion" if summary["promoted"] else "kept as challenger"
        rows = [
            ("Outcome", "trained"),
            (
                "Best trial",
                f"#{summary['best_trial']} ({summary['best_value']:.4f}): {summary['best_hparams']}",
            ),
            ("Model", summary.get("model_kind", "rnn")),
            ("Test metrics", metrics),
            ("Promotion", f"v{summary['registered_version']} {promotion}: {summary['promotion_reason']}"),
            ("MLflow run", link),
        ]
    cells = [f"| {name} | {str(value).replace('|', '/')} |" for name, value in rows]
    return "\n".join(["| | |", "|---|---|", *cells])
