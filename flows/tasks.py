"""Prefect tasks: each is one library stage (named as it), with the retries that suit it.

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

from pipeline import data, stages
from pipeline.config import ConfigError, PipelineConfig
from pipeline.search import SearchError
from pipeline.stores import StoreError

_PERMANENT = (data.DataError, ConfigError, StoreError, SearchError, ValidationError, TypeError)


def _transient(task, task_run, state) -> bool:
    """Retry unless the failure is one that another try cannot fix."""
    return not isinstance(state.data, _PERMANENT)


# Cheap store calls retry three times (2, 4, 8 s, ±50 %); training and search once (they are slow).
STORE_RETRIES: dict[str, Any] = {
    "retries": 3,
    "retry_delay_seconds": exponential_backoff(backoff_factor=2),
    "retry_jitter_factor": 0.5,
    "retry_condition_fn": _transient,
    "cache_policy": NO_CACHE,
}
WORK_RETRIES: dict[str, Any] = {**STORE_RETRIES, "retries": 1}

prepare = task(data.prepare, cache_policy=NO_CACHE)
check_champion = task(stages.check_champion, **STORE_RETRIES)
record_skipped_run = task(stages.record_skipped_run, **STORE_RETRIES)
search_hparams = task(stages.search_hparams, **WORK_RETRIES)
train_final = task(stages.train_final, **WORK_RETRIES)
evaluate_model = task(stages.evaluate_model, **STORE_RETRIES)
log_model = task(stages.log_model, **STORE_RETRIES)
register_model = task(stages.register_model, **STORE_RETRIES)


@task(cache_policy=NO_CACHE)
def publish_summary(cfg: PipelineConfig, summary: stages.RunSummary) -> None:
    """The run's summary as a markdown table artifact in Prefect, one key per registered model."""
    key = "training-summary-" + re.sub(r"[^a-z0-9-]+", "-", cfg.tracking.model_name.lower()).strip("-")
    create_markdown_artifact(markdown=summary.to_markdown(), key=key, description="training run summary")
