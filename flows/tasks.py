"""Prefect tasks: each is one library stage (named as it), with the retries that suit it.

Tasks take and return in-memory values (arrays, a Keras model), so Prefect's input hashing and
result persistence are off (``NO_CACHE``); prepared data is cached by ``pipeline.data`` itself.

Tasks that write to the stores retry transient failures with one bounded backoff; nothing else
retries underneath (``stores`` turns MLflow's own HTTP retries off), and errors that another try
cannot fix (bad data, bad config, a permission, a wrong path) fail at once.
"""

from __future__ import annotations

import re
from typing import Any

from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.tasks import exponential_backoff

from pipeline import data, stages
from pipeline.config import PipelineConfig
from pipeline.stores import is_transient


def _transient(task, task_run, state) -> bool:
    """Retry only what another try can fix: a store that timed out, answered 5xx or was locked,
    or dropped the connection mid-run. Bad data, config, a permission or a missing path fail at
    once, and a store that is down at the start never gets here (``stores.preflight``)."""
    error = state.data if isinstance(state.data, BaseException) else None
    if error is None:
        try:
            state.result()
        except BaseException as raised:  # the task's own exception, re-raised by Prefect
            error = raised
    return error is not None and is_transient(error)


# Store calls retry three times (2, 4, 8 s, ±50 %: at most ~21 s). So does the search: a new try
# resumes the study towards the same target (kept in the study under the pipeline run's id), and
# a search worker's new try rejoins its study. The training does not (a new try starts over).
STORE_RETRIES: dict[str, Any] = {
    "retries": 3,
    "retry_delay_seconds": exponential_backoff(backoff_factor=2),
    "retry_jitter_factor": 0.5,
    "retry_condition_fn": _transient,
    "cache_policy": NO_CACHE,
}
ONCE: dict[str, Any] = {"cache_policy": NO_CACHE}

prepare = task(data.prepare, cache_policy=NO_CACHE)
check_champion = task(stages.check_champion, **STORE_RETRIES)
record_skipped_run = task(stages.record_skipped_run, **STORE_RETRIES)
search_hparams = task(stages.search_hparams, **STORE_RETRIES)
create_study = task(stages.create_study, **STORE_RETRIES)
search_worker = task(stages.search_worker, **STORE_RETRIES)
study_result = task(stages.study_result, **STORE_RETRIES)
train_final = task(stages.train_final, **ONCE)
evaluate_model = task(stages.evaluate_model, **STORE_RETRIES)
log_model = task(stages.log_model, **STORE_RETRIES)
register_model = task(stages.register_model, **STORE_RETRIES)


@task(cache_policy=NO_CACHE)
def publish_summary(cfg: PipelineConfig, summary: stages.RunSummary) -> None:
    """The run's summary as a markdown table artifact in Prefect, one key per registered model."""
    key = "training-summary-" + re.sub(r"[^a-z0-9-]+", "-", cfg.tracking.model_name.lower()).strip("-")
    create_markdown_artifact(markdown=summary.to_markdown(), key=key, description="training run summary")
