"""Fan a search out over a Prefect work pool: N runs of the search-worker deployment, one study.

The deployment (``prefect.yaml``: ``search-worker``, on the work pool ``search``) runs
``search_worker_flow``; ``prefect worker start --pool search`` on each machine picks its runs up,
as many at a time as the pool's concurrency limit allows. Every run joins the study the pipeline
created, so it does not matter which machine runs how many: the study-wide target decides when
the search is done, and a run that dies leaves its trial to the others (heartbeats).
"""

from __future__ import annotations

import time
from uuid import UUID

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import get_client
from prefect.deployments import run_deployment
from prefect.exceptions import ObjectNotFound

from pipeline.config import PipelineConfig

WORKER_FLOW = "imdb-sentiment-search-worker"
WORKER_DEPLOYMENT = f"{WORKER_FLOW}/search-worker"


class DispatchError(RuntimeError):
    """The work pool could not run the search workers."""


@task(cache_policy=NO_CACHE)
def dispatch_search_workers(config: PipelineConfig, count: int, deployment: str = WORKER_DEPLOYMENT) -> dict[str, str]:
    """Start ``count`` runs of ``deployment`` on its work pool and wait for all of them; their
    final states by flow-run name. A failed worker run does not fail the search (the others
    finish the study); the study's result decides. Raises DispatchError when the deployment is
    missing."""
    _check_workers(deployment)
    parameters = {"config": config.model_dump(mode="json")}
    runs = [
        run_deployment(
            deployment,
            parameters=parameters,
            timeout=0,  # start them all, then wait
            flow_run_name=f"search-worker-{config.search.study_name}-{index}",
        )
            for index in range(count)
    ]
    return {run.name: state for run, state in zip(runs, _wait([run.id for run in runs]), strict=True)}


def _check_workers(deployment: str) -> None:
    """The deployment exists and a worker polls its pool: else its runs would wait forever."""
    with get_client(sync_client=True) as client:
        try:
            pool = client.read_deployment_by_name(deployment).work_pool_name
        except ObjectNotFound:
            raise DispatchError(
                f"no deployment '{deployment}' on this Prefect server: register it once with "
                "`prefect deploy --name search-worker` (prefect.yaml)"
            ) from None
        if not any(worker.status == "ONLINE" for worker in client.read_workers_for_work_pool(pool)):
            raise DispatchError(f"no worker polls the work pool '{pool}': start `prefect worker start --pool {pool}`")


def _wait(ids: list[UUID], every: float = 2.0) -> list[str]:
    with get_client(sync_client=True) as client:
        while True:
            states = [client.read_flow_run(flow_run_id).state for flow_run_id in ids]
            if all(state is not None and state.is_final() for state in states):
                return [state.name for state in states]
            time.sleep(every)
