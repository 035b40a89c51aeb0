"""Nothing stays RUNNING because nobody came back.

A process killed outright (SIGKILL, out of memory) cannot close its MLflow runs or fail its Optuna
trials. On this machine its owner's pid says at once that it is gone, so every command that opens
the stores (`run`, `search`, `study`, `worker`, `ui`, `serve`, `predict`) first closes the runs and
fails the trials of owners that are gone: the UI never shows a dead run as running. Runs and
trials of other machines are left to their heartbeats (``search.py``, ``tracking.py``).
"""

from __future__ import annotations

import logging

from pipeline.config import PipelineConfig
from pipeline.data import check_source
from pipeline.liveness import is_gone
from pipeline.stores import Stores, preflight, resolve, store_exists

log = logging.getLogger(__name__)


def open_stores(cfg: PipelineConfig, study: bool = True) -> Stores:
    """``preflight`` (a dead store or a missing dataset: one line, in seconds), the dataset's
    layout (``data.check_source``), then close what died on this machine."""
    stores = preflight(cfg, study=study)
    check_source(cfg.data)  # an empty folder or a broken archive: one line in seconds too
    close_what_died(stores, cfg)
    return stores


def resolved_stores(cfg: PipelineConfig) -> Stores:
    """``resolve`` for the commands that read no dataset (``ui``, ``serve``, ``predict``), then
    close what died on this machine."""
    stores = resolve(cfg)
    close_what_died(stores, cfg)
    return stores


def close_what_died(stores: Stores, cfg: PipelineConfig) -> None:
    """Fail the RUNNING trials, and close the RUNNING pipeline and trial runs, whose process on
    this machine is gone. Best effort: a store that cannot be read here is left for the command's
    own check to report."""
    try:
        trials = _fail_dead_trials(stores, cfg) if store_exists(stores.study_storage) else 0
        runs = []
        if store_exists(stores.tracking_uri):  # never create a store only to look into it
            from pipeline import tracking

            runs = [
                run
                for stage in ("pipeline", "trial")
                for run in tracking.close_dead_runs(stores, cfg.tracking.experiment_name, {"stage": stage})
            ]
    except Exception as error:  # the command itself says what is wrong with the store
        log.debug("closing what died: %s", error)
        return
    if trials or runs:
        log.warning(
            "closed what a killed process left RUNNING: %d trial(s) failed and retried, %d run(s) KILLED",
            trials,
            len(runs),
        )


def _fail_dead_trials(stores: Stores, cfg: PipelineConfig) -> int:
    storage = stores.study_storage
    import optuna
    from optuna.trial import TrialState

    plain = optuna.storages.RDBStorage(storage, skip_table_creation=True)
    try:
        dead = {}  # study name → its record (the experiment and parent run its trial runs are in)
        for name in optuna.get_all_study_names(storage=plain):
            study = optuna.load_study(study_name=name, storage=plain)
            if any(is_gone(t.user_attrs) for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))):
                dead[name] = study.user_attrs
    finally:
        plain.engine.dispose()
    if not dead:
        return 0
    # Only now the heavy part: the search's own reaping retries each trial and closes its run.
    from pipeline import search, tracking

    failed = 0
    for name, record in dead.items():
        experiment = record.get("experiment_name") or cfg.tracking.experiment_name
        tracker = tracking.TrialTracker(record.get("parent_run_id") or "", stores, experiment, name)
        named = cfg.model_copy(update={"search": cfg.search.model_copy(update={"study_name": name})})
        study = search.load_study(named, storage, trial_tracker=tracker)
        try:
            failed += search.reap_dead_trials(study)
        finally:
            search.close_study(study)
    return failed
