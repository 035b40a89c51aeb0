"""Scheduled retraining: the training flow as a Prefect deployment on a cron schedule.

    sentiment serve --limit 2000 --trials 4            # weekly, served from this process
    prefect deploy --name scheduled-retraining          # or: prefect.yaml, run by a work pool's worker

Either way the deployment holds its own parameters (the config overrides as a partial dict,
validated by Prefect into ``PipelineConfig``) and a concurrency limit of one run, so a slow run and
the next scheduled one never both register a model. See docs/scheduling.md.
"""

from __future__ import annotations

from typing import Any

from prefect import serve
from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
from prefect.deployments.runner import RunnerDeployment
from prefect.schedules import Cron

from flows.training import training_flow
from pipeline.config import PipelineConfig

DEPLOYMENT_NAME = "scheduled-retraining"
WEEKLY = "0 3 * * 1"  # Mondays 03:00
# One run at a time; a run due while another is going waits for it (then skips if it promoted).
ONE_AT_A_TIME = ConcurrencyLimitConfig(limit=1, collision_strategy=ConcurrencyLimitStrategy.ENQUEUE)


def deployment_parameters(cfg: PipelineConfig) -> dict[str, Any]:
    """The flow's parameters for a deployment: only the config fields that were set, as JSON."""
    return {"config": cfg.model_dump(mode="json", exclude_unset=True)}


def retraining_deployment(
    cfg: PipelineConfig,
    name: str = DEPLOYMENT_NAME,
    cron: str = WEEKLY,
    timezone: str = "UTC",
    mlflow_ui_url: str | None = None,
) -> RunnerDeployment:
    """The training flow on ``cron`` with ``cfg``'s overrides as its default parameters."""
    parameters = deployment_parameters(cfg) | {"mlflow_ui_url": mlflow_ui_url}
    return training_flow.to_deployment(
        name=name,
        schedules=[Cron(cron, timezone=timezone)],
        parameters=parameters,
        concurrency_limit=ONE_AT_A_TIME,
        tags=["retraining", f"model:{cfg.tracking.model_name}"],
        description=f"Retrain '{cfg.tracking.model_name}' on '{cron}' ({timezone}); skips when unchanged.",
    )


def serve_retraining(deployment: RunnerDeployment) -> None:
    """Register the deployment on the Prefect API (``PREFECT_API_URL``) and run its flow runs here.

    Blocks until interrupted; the schedule is paused on shutdown.
    """
    serve(deployment, limit=1)
