"""Optuna search: suggest_hparams(trial) → HParams; the objective; run_search and join_study.

The study is stored (in the storage ``stores.resolve`` gives) under its name, so a second run
with the same name resumes it, and any number of processes on any number of machines can work on
it at once (``join_study``). The study records its dataset digest, its search space and its
trial target; a process refuses a study whose digest or space differs from its own. The target is
study-wide: every process stops when COMPLETE + PRUNED trials reach it (Optuna's
``MaxTrialsCallback``), so a process that dies only leaves its trial to the others.

Each trial reports the monitored validation metric per epoch to the pruner. A trial that raises
(NaN loss included) ends as failed and the study goes on; a trial whose process died is found by
its heartbeat (or at once, on the same machine, by its process id), failed and retried once.
Tracking of trials is injected as ``trial_tracker`` so this module never imports MLflow.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import multiprocessing
import os
import socket
import time
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor, wait
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, replace
from typing import Any, Protocol

import keras
import numpy as np
import optuna
from optuna.distributions import distribution_to_json
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.study import MaxTrialsCallback
from optuna.trial import FrozenTrial, TrialState
from optuna_integration import KerasPruningCallback

from pipeline.config import (
    STUDY_SETTINGS,
    ConfigError,
    HParams,
    PipelineConfig,
    SearchConfig,
    Selection,
    flag,
    run_params,
)
from pipeline.data import PreparedData, Split, prepare
from pipeline.liveness import here, is_gone, repeating
from pipeline.model import multiply_adds_per_token
from pipeline.progress import Progress
from pipeline.secrets import redact
from pipeline.signals import raise_on_signals, stop_on_signals
from pipeline.stores import (
    StoreError,
    database_pool,
    failed_store,
    is_transient,
    refuses_writes,
    tracking_unreachable,
)
from pipeline.train import EpochMetrics, train_model

log = logging.getLogger(__name__)


class TrialTracker(Protocol):
    """Opens a tracked run for (trial number, params) and closes those of dead trials; pickles
    into worker processes (``tracking.TrialTracker``)."""

    def __call__(self, number: int, params: dict[str, Any]) -> AbstractContextManager[Any]: ...

    def close_stale(self, number: int, reason: str) -> None: ...


class SearchError(RuntimeError):
    """The search produced no usable trial (the study storage named without its password)."""

    def __init__(self, message: str) -> None:
        super().__init__(redact(message))


class StudyMismatch(ConfigError):
    """A study that this process must not join: missing, or made for other data or another space."""


FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)  # what counts towards a study's target


@dataclass(frozen=True)
class SearchResult:
    best_hparams: HParams
    best_value: float
    best_trial: int
    complete: int  # trials in the whole study, this and earlier invocations
    pruned: int
    failed: int
    seconds: float


@dataclass(frozen=True)
class WorkerResult:
    """What one process did for a study it joined, and where the study stands."""

    study_name: str
    trials_run: int  # by this process
    target: int
    finished: int  # COMPLETE + PRUNED in the whole study
    complete: int
    pruned: int
    failed: int
    seconds: float


@dataclass(frozen=True)
class StudyRecord:
    """What a study says about itself (its user attributes), written once by whoever creates it."""

    data_digest: str
    search_space: dict[str, Any]
    trials_target: int | None = None  # study-wide; None: each invocation runs search.trials more
    experiment_name: str | None = None  # where its trials' MLflow runs go, under parent_run_id
    parent_run_id: str | None = None

    @classmethod
    def of(cls, study: optuna.Study) -> StudyRecord | None:
        attrs = study.user_attrs
        if "data_digest" not in attrs:
            return None
        return cls(**{name: attrs.get(name) for name in cls.__dataclass_fields__})

    def write(self, study: optuna.Study) -> None:
        for name, value in self.__dict__.items():
            if value is not None:
                study.set_user_attr(name, value)


# Hyperparameters the search leaves at their default: max + mean pooling beat the last state on
# the full data at equal settings (docs/benchmarks.md), and a searched choice would double the space.
UNSEARCHED = frozenset({"pooling"})


def suggest_hparams(trial: optuna.Trial, cfg: SearchConfig) -> HParams:
    """The search space (every field but ``UNSEARCHED``). Learning rates sit where these models
    converge in a few epochs."""
    return HParams(
        cell=trial.suggest_categorical("cell", list(cfg.cells)),
        units=trial.suggest_categorical("units", [16, 32, 64]),
        layers=trial.suggest_int("layers", 1, 2),
        bidirectional=trial.suggest_categorical("bidirectional", [False, True] if cfg.bidirectional else [False]),
        dropout=trial.suggest_float("dropout", 0.0, 0.5, step=0.1),
        learning_rate=trial.suggest_float("learning_rate", 1e-3, 1e-2, log=True),
        embedding_dim=trial.suggest_categorical("embedding_dim", [16, 32, 64]),
        optimizer=trial.suggest_categorical("optimizer", ["adam", "rmsprop"]),
    )




def search_space(cfg: PipelineConfig) -> dict[str, Any]:
    """The study's search space as JSON-able data: every distribution ``suggest_hparams`` draws
    from (read off a throwaway trial, so the space is written down once) and the settings that
    decide what a trial's value means."""
    optuna_logger = logging.getLogger("optuna")
    level = optuna_logger.level
    optuna_logger.setLevel(logging.WARNING)  # no "A new study created in memory" line
    try:
        probe = optuna.create_study().ask()
    finally:
        optuna_logger.setLevel(level)
    suggest_hparams(probe, cfg.search)
    space = {name: json.loads(distribution_to_json(d)) for name, d in sorted(probe.distributions.items())}
    settings = cfg.model_dump(mode="json", include=STUDY_SETTINGS)
    return {"distributions": space, **settings}


def create_study(
    cfg: PipelineConfig,
    storage: str | optuna.storages.RDBStorage,
    seed: int | None = None,
    trial_tracker: TrialTracker | None = None,
) -> optuna.Study:
    """Create the named study in ``storage``, or load it to resume (sampler seeded by ``seed``,
    else the config).

    Running trials beat every ``search.heartbeat_seconds``; before each new trial, one silent for
    three beats (its process died) is failed, enqueued again once, and its tracked run closed.
    """
    direction = "maximize" if cfg.train.monitor == "val_accuracy" else "minimize"
    study = optuna.create_study(
        study_name=cfg.search.study_name,
        storage=storage
        if isinstance(storage, optuna.storages.RDBStorage)
        else _storage(storage, cfg.search.heartbeat_seconds, trial_tracker),
        direction=direction,
        # constant_liar: trials running elsewhere count as bad guesses, so parallel workers spread out.
        sampler=optuna.samplers.TPESampler(seed=cfg.search.seed if seed is None else seed, constant_liar=True),
        pruner=_pruner(cfg.search),
        load_if_exists=True,
    )
    if study.direction.name.lower() != direction:
        raise SearchError(
            f"study '{cfg.search.study_name}' in {storage} was created to {study.direction.name.lower()}; "
            f"monitor={cfg.train.monitor} needs {direction}: use another study_name"
        )
    return study


def claim_study(study: optuna.Study, cfg: PipelineConfig, data_digest: str, **record: Any) -> StudyRecord:
    """The study's record: written now when the study has none (new, or made before records),
    else checked against this process's data and search space. Raises StudyMismatch naming what
    differs."""
    mine = StudyRecord(data_digest, search_space(cfg), **record)
    stored = StudyRecord.of(study)
    if stored is None:
        mine.write(study)
        return mine
    _refuse_mismatch(study.study_name, stored, mine)
    return stored


def check_study(cfg: PipelineConfig, storage: str, data_digest: str | None = None) -> None:
    """Whether the study ``search.study_name``, if it exists, fits this config: raises
    StudyMismatch, with a joining worker's message, when it was made with another search space
    or (given ``data_digest``) for other data. Needs no data without ``data_digest``, so
    `sentiment run` refuses in seconds, before it reads a review or opens a run; `sentiment
    train --best-of` checks the data too."""
    opened = _storage(storage, cfg.search.heartbeat_seconds, None)
    try:
        if cfg.search.study_name not in optuna.get_all_study_names(storage=opened):
            return
        study = optuna.load_study(study_name=cfg.search.study_name, storage=opened)
        stored = StudyRecord.of(study)
        if stored is not None:
            mine = StudyRecord(stored.data_digest if data_digest is None else data_digest, search_space(cfg))
            _refuse_mismatch(study.study_name, stored, mine)
    finally:
        opened.engine.dispose()  # its pool: a database has a connection budget


def _refuse_mismatch(name: str, stored: StudyRecord, mine: StudyRecord) -> None:
    data_digest = mine.data_digest
    if stored.data_digest != data_digest:
        raise StudyMismatch(
            f"study '{name}' was made for dataset {stored.data_digest[:12]}, this process has "
            f"{data_digest[:12]}: pass the same {flag('data.path')} and data options, or another "
            f"{flag('search.study_name')}"
        )
    if stored.search_space != mine.search_space:
        differs = _differences(stored.search_space, mine.search_space)
        raise StudyMismatch(
            f"study '{name}' was made with another search space ({differs}): use the study's "
            f"settings, or another {flag('search.study_name')}"
        )


def own_study(
    study: optuna.Study, cfg: PipelineConfig, data_digest: str, invocation: str | None, **record: Any
) -> StudyRecord:
    """The study's record for a pipeline run that drives it (``sentiment run``, a Kubeflow or
    work-pool run): its target becomes ``search.trials`` more than the study has finished (kept
    under ``invocation`` for a retry), and ``record`` (its parent run) is written, so workers can
    join. New data continues the study with a warning, as a scheduled retraining does; another
    search space is refused (StudyMismatch)."""
    stored = StudyRecord.of(study)
    if stored is not None and stored.data_digest != data_digest:
        log.warning(
            "study '%s' goes on with new data (%s, was %s): its earlier trials were scored on the old",
            study.study_name,
            data_digest[:12],
            stored.data_digest[:12],
        )
        study.set_user_attr("data_digest", data_digest)
    mine = claim_study(study, cfg, data_digest)
    owned = replace(mine, trials_target=_invocation_target(study, cfg.search.trials, invocation), **record)
    owned.write(study)
    return owned


def _differences(stored: dict[str, Any], mine: dict[str, Any], prefix: str = "") -> str:
    keys = sorted(set(stored) | set(mine))
    parts = []
    for key in keys:
        a, b = stored.get(key), mine.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            inner = _differences(a, b, f"{prefix}{key}.")
            parts += [inner] if inner else []
        elif a != b:
            parts.append(f"{prefix}{key}: study {json.dumps(a)}, here {json.dumps(b)}")
    return "; ".join(parts)


def _storage(url: str, heartbeat: int, trial_tracker: TrialTracker | None) -> optuna.storages.RDBStorage:
    silent = f"no heartbeat for over {3 * heartbeat} s: its process died (killed, out of memory, lost)"
    with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna 5, and what we need
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.storages.RDBStorage(
            url,
            engine_kwargs=database_pool(url),
            heartbeat_interval=heartbeat,
            grace_period=3 * heartbeat,
            heartbeat_stale_trial_callback=_StaleTrial(silent, trial_tracker),
        )


_OWNER_ATTRS = ("host", "pid_namespace", "pid", "pid_started", "worker")


class _StaleTrial:
    """What happens to a trial whose process died: Optuna's retry (once), and its run closed."""

    def __init__(self, reason: str, trial_tracker: TrialTracker | None) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            self._retry = RetryHeartbeatStaleTrialCallback(max_retry=1)
        self.reason = reason
        self._tracker = trial_tracker

    def __call__(self, study: optuna.Study, trial: FrozenTrial, reason: str | None = None) -> None:
        retry = copy.deepcopy(trial)  # the retry runs elsewhere: not the dead process's attrs
        retry.user_attrs = {k: v for k, v in trial.user_attrs.items() if k not in _OWNER_ATTRS}
        self._retry(study, retry)
        if self._tracker is not None:
            self._tracker.close_stale(trial.number, reason or self.reason)
        log.warning("trial %d failed: %s; enqueued again", trial.number, reason or self.reason)


def reap_dead_trials(study: optuna.Study) -> int:
    """Fail the RUNNING trials whose process on this machine is gone (SIGKILL, OOM) at once,
    without waiting out the heartbeat grace period, and retry them like stale ones. Returns how
    many. Trials of other machines are left to the heartbeat."""
    storage = study._storage  # Optuna's own fail_stale_trials works on it the same way
    callback = storage.get_heartbeat_stale_trial_callback()
    reaped = 0
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if not is_gone(trial.user_attrs):
            continue  # alive, or another machine's: its heartbeat tells
        try:
            if not storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL):
                continue
        except UpdateFinishedTrialError:
            continue  # another process got there first
        reaped += 1
        if isinstance(callback, _StaleTrial):
            callback(study, storage.get_trial(trial._trial_id), "its process is gone (killed, out of memory)")
    return reaped


class _TimedEpochEnd(keras.callbacks.Callback):
    """Runs the epoch-end hooks of ``callbacks`` (Optuna reports, MLflow metrics) and adds up
    their wall seconds: bookkeeping that happens inside ``fit`` and must not pass for training."""

    def __init__(self, callbacks: list[keras.callbacks.Callback], monitor: str) -> None:
        super().__init__()
        self._callbacks = callbacks
        self._monitor = monitor
        self.seconds = 0.0
        self.reported: list[float] = []  # the monitored value per epoch, as Optuna is told it

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        if logs and self._monitor in logs:
            self.reported.append(float(logs[self._monitor]))
        started = time.perf_counter()
        try:
            for callback in self._callbacks:
                callback.on_epoch_end(epoch, logs)  # a pruned trial raises TrialPruned here
        finally:
            self.seconds += time.perf_counter() - started


def _pruner(cfg: SearchConfig) -> optuna.pruners.BasePruner:
    if cfg.pruner == "median":
        # Steps are 0-based epochs: no warm-up, so a trial below the median after its first epoch
        # stops there. (With one warm-up step and 2-epoch trials, nothing stopped before the end.)
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0)
    if cfg.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=cfg.epochs)
    return optuna.pruners.NopPruner()


def run_search(
    data: PreparedData,
    cfg: PipelineConfig,
    storage: str,
    trial_tracker: TrialTracker | None = None,
    invocation: str | None = None,
    **record: Any,
) -> SearchResult:
    """Run ``cfg.search.trials`` more trials (or until ``cfg.search.timeout``) of the study in
    ``storage``; the study's best.

    ``invocation`` (the pipeline run's id) names this invocation's target in the study, so a
    retry of the same invocation resumes towards it instead of adding trials; ``record`` (the
    parent run and its experiment) goes into the study's record, so ``sentiment worker`` on
    another machine can join this search while it runs. With
    ``cfg.search.workers > 1`` trials run in that many processes, one TensorFlow thread each: an
    RNN step keeps about one core busy, so side-by-side trials nearly double throughput; all of
    them work towards the one target, so a process that dies costs only its trial.
    Raises SearchError when no trial of the study has completed, StudyMismatch when the study was
    made for other data or another search space.
    """
    started = time.perf_counter()
    study = create_study(cfg, storage, trial_tracker=trial_tracker)
    target = own_study(study, cfg, data.digest, invocation, **record).trials_target
    reap_dead_trials(study)
    trials_data = trial_data(data, cfg.search)

    def search_here() -> None:
        if cfg.search.workers == 1:
            _optimize(study, trials_data, cfg, trial_tracker, target)
        else:
            _optimize_in_workers(cfg, storage, trial_tracker, target)

    with _watch(study, target - _finished(study)):
        _until_target(study, target, cfg.search, search_here)
    _fail_stale(study)
    try:
        # Reads the storage: workers' trials too.
        return _result(study, time.perf_counter() - started, cfg.search.selection)
    finally:
        close_study(study)


def join_study(
    data: PreparedData, cfg: PipelineConfig, storage: str, trial_tracker: TrialTracker | None = None
) -> WorkerResult:
    """Work on the existing study ``cfg.search.study_name`` until its study-wide target is met,
    with ``cfg.search.workers`` processes; the worker of ``sentiment worker``, on any machine, at
    any time. A dropped database connection (a restart) is waited out and the study rejoined.

    Raises StudyMismatch when the study does not exist, has no target, or was made for other data
    or another search space.
    """
    started = time.perf_counter()
    # Workers on other machines start from the same config: seeded alike they would draw the
    # same configurations, so each draws its own seed.
    seed = int.from_bytes(os.urandom(4), "big")
    study = load_study(cfg, storage, trial_tracker, seed=seed)
    record = claim_study(study, cfg, data.digest)
    if record.trials_target is None:
        raise StudyMismatch(
            f"study '{study.study_name}' has no trial target: it was not made by `sentiment study create`"
        )
    worker = f"{socket.gethostname()}:{os.getpid()}:{time.time_ns()}"  # this invocation's trials
    target, trials_data = record.trials_target, trial_data(data, cfg.search)

    def search_here() -> None:
        if cfg.search.workers == 1:
            _optimize(study, trials_data, cfg, trial_tracker, target, worker)
        else:
            _optimize_in_workers(cfg, storage, trial_tracker, target, worker, seed)

    with _watch(study, max(0, target - _finished(study))):
        for attempt in range(1, _REJOINS + 1):
            try:
                reap_dead_trials(study)
                _until_target(study, target, cfg.search, search_here)
                break
            except Exception as error:
                if not _rejoinable(error) or attempt == _REJOINS:
                    raise
                log.warning("search worker: %s; rejoining the study in %d s", str(error).splitlines()[0], 2 * attempt)
                time.sleep(2 * attempt)
                close_study(study)
                study = load_study(cfg, storage, trial_tracker, seed=seed)
    _fail_stale(study)
    counts, trials_run = _counts(study), _trials_of(study, worker)
    close_study(study)
    return WorkerResult(
        study_name=study.study_name,
        trials_run=trials_run,
        target=record.trials_target,
        finished=counts[TrialState.COMPLETE] + counts[TrialState.PRUNED],
        complete=counts[TrialState.COMPLETE],
        pruned=counts[TrialState.PRUNED],
        failed=counts[TrialState.FAIL],
        seconds=time.perf_counter() - started,
    )


_REJOINS = 5  # about 30 s of waiting in all: a database restart, not an outage


def _rejoinable(error: BaseException | None) -> bool:
    """Whether ``error``, or one it was raised while handling, says the storage dropped out or
    this worker's trial was failed by another (silent past its grace: a paused machine, a lost
    network). The chain matters: Optuna 5's ``_run_trial`` raises from its own ``finally`` on
    top of the real error. The trial itself is already retried by whoever failed it."""
    while error is not None:
        if is_transient(error) or isinstance(error, UpdateFinishedTrialError) or _told_elsewhere(error):
            return True
        error = error.__context__
    return False


def _told_elsewhere(error: BaseException) -> bool:
    # Optuna's tell raises a bare ValueError for a trial already finished (optuna/study/_tell.py).
    return isinstance(error, ValueError) and str(error).startswith("Cannot tell a FAIL trial")


def load_study(
    cfg: PipelineConfig, storage: str, trial_tracker: TrialTracker | None = None, seed: int | None = None
) -> optuna.Study:
    """The existing study ``cfg.search.study_name``. Raises StudyMismatch when there is none."""
    opened = _storage(storage, cfg.search.heartbeat_seconds, trial_tracker)
    if cfg.search.study_name not in optuna.get_all_study_names(storage=opened):
        raise StudyMismatch(
            f"no study '{cfg.search.study_name}' in {storage}: create it first with "
            f"`sentiment study create {flag('search.study_name')} {cfg.search.study_name} ...`"
        )
    return create_study(cfg, opened, seed=seed, trial_tracker=trial_tracker)


def _trials_of(study: optuna.Study, worker: str) -> int:
    return sum(t.user_attrs.get("worker") == worker for t in study.get_trials(deepcopy=False))


def _invocation_target(study: optuna.Study, trials: int, invocation: str | None) -> int:
    """``trials`` more than the study has finished, remembered under ``invocation`` in the study so
    a retry of that invocation aims at the same number."""
    key = f"trials_target:{invocation}" if invocation else None
    if key and key in study.user_attrs:
        return int(study.user_attrs[key])
    target = _finished(study) + trials
    if key:
        study.set_user_attr(key, target)
    return target


def _finished(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=FINISHED))


def _counts(study: optuna.Study) -> dict[TrialState, int]:
    return {state: len(study.get_trials(deepcopy=False, states=(state,))) for state in TrialState}


def _until_target(study: optuna.Study, target: int, cfg: SearchConfig, search_here: Callable[[], None]) -> None:
    """Run ``search_here`` (trials in this process or its workers) until the study reaches
    ``target``, waiting between rounds for the trials running elsewhere.

    A worker stops starting trials once those finished and those running elsewhere reach the
    target; if one of those dies (its container killed), it is failed (at once on this machine,
    after its heartbeat grace elsewhere) and its retry queued: a survivor must run it, or the
    study ends one trial short with the retry left WAITING. Ends when the target is reached,
    when nothing runs or waits (every trial failed: the failure limit stopped it), or when
    ``search.timeout`` has passed."""
    deadline = None if cfg.timeout is None else time.monotonic() + cfg.timeout
    waiting_logged = False
    # Ours, not Prefect's: inside a flow Prefect's SIGTERM handler raises its TerminationSignal, a
    # BaseException, which Optuna does not fail a trial on (the trial stayed RUNNING); ours raises
    # Interrupted, a KeyboardInterrupt, which fails it and closes its run.
    with stop_on_signals():
        while True:
            search_here()
            while True:
                _fail_stale(study)
                if _finished(study) >= target or (deadline is not None and time.monotonic() >= deadline):
                    return
                if study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
                    break  # a dead trial's retry (or one enqueued by hand): run it here
                running = len(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))
                if running == 0:
                    return
                if not waiting_logged:
                    log.info(
                        "search: %d trial(s) running elsewhere; waiting for them (one whose process "
                        "died is retried here, within %d s)", running, 3 * cfg.heartbeat_seconds,
                    )  # fmt: skip
                    waiting_logged = True
                time.sleep(min(5.0, float(cfg.heartbeat_seconds)))


def _fail_stale(study: optuna.Study) -> None:
    """Close what died while this search ran, so a finished search leaves no trial RUNNING that
    belongs to no one (the heartbeat catches the other machines' dead trials once their grace is up)."""
    reap_dead_trials(study)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


_SHOWN = {"pruned": TrialState.PRUNED, "failed": TrialState.FAIL}


@contextmanager
def _watch(study: optuna.Study, target: int, every: float = 1.0) -> Iterator[None]:
    """Show trials done / target and the best value so far while the search runs, read from the
    study itself, so trials in worker processes (and other machines) count too."""
    first = len(study.get_trials(deepcopy=False))
    progress = Progress("search", target, "trial")

    def show() -> None:
        try:
            trials = study.get_trials(deepcopy=False)[first:]
        except Exception:  # the storage is restarting: the next tick shows it
            return
        finished = [t for t in trials if t.state.is_finished()]
        done = [t.value for t in finished if t.state == TrialState.COMPLETE]
        best = max if study.direction.name == "MAXIMIZE" else min
        numbers = {"best": best(done)} if done else {}
        counts = {name: sum(t.state == state for t in finished) for name, state in _SHOWN.items()}
        progress.update(sum(t.state in FINISHED for t in finished), numbers | counts)

    try:
        with repeating(show, every, "search-progress"):
            yield
    finally:
        show()
        progress.close()


def _optimize(
    study: optuna.Study,
    data: PreparedData,
    cfg: PipelineConfig,
    trial_tracker: TrialTracker | None,
    target: int,
    worker: str | None = None,
) -> None:
    """Run trials until the study's COMPLETE + PRUNED trials, with those running elsewhere, reach
    ``target`` (whoever ran them), ``search.timeout`` passes, or as many trials as are left to run
    have failed here."""
    left = target - _finished(study)
    if left <= 0:
        return
    failed = len(study.get_trials(deepcopy=False, states=(TrialState.FAIL,)))
    until = [
        # After every trial: a dead neighbour's trial on this machine is retried at once.
        lambda study, trial: reap_dead_trials(study),
        # No trial starts once those finished and those running elsewhere reach the target: a
        # trial begun past it kept the whole search waiting for one more fit (1-2.5 min on the
        # full data). A trial that dies after that is retried by a worker still at work, if any.
        MaxTrialsCallback(target, states=(*FINISHED, TrialState.RUNNING)),
        # A search whose every trial fails (a bad setting) must end, not loop.
        MaxTrialsCallback(failed + max(left, 2), states=(TrialState.FAIL,)),
    ]

    outage: list[tuple[StoreError, Exception]] = []  # the store failure that stopped the search
    stores = getattr(trial_tracker, "stores", None)
    where = (getattr(stores, "tracking_uri", ""), getattr(stores, "study_storage_uri", None) or cfg.search.storage)

    def objective(trial: optuna.Trial) -> float:
        try:
            return tracked_trial(trial)
        except Exception as error:
            if (failure := _store_outage(error, where)) is not None:
                # Not this trial's fault: every next trial would fail the same way in 40 ms
                # (13 FAIL trials in 21 s, once). This one is failed; no other starts.
                outage.append((failure, error))
                trial.study.stop()
            raise

    def tracked_trial(trial: optuna.Trial) -> float:
        for name, value in (here() | ({"worker": worker} if worker else {})).items():
            trial.set_user_attr(name, value)
        hparams = suggest_hparams(trial, cfg.search)
        # Trials may see shorter reviews than the final model: log what they trained on.
        params = run_params(hparams, cfg, data.vocab_size_effective)
        params |= {"max_len": data.max_len, "train_reviews": len(data.train)}
        track = trial_tracker(trial.number, params) if trial_tracker else nullcontext()
        with track as run:
            # The epoch's metrics are logged before the pruner may stop the trial on them.
            bookkeeping = [EpochMetrics(run.log_metrics)] if run is not None else []
            bookkeeping.append(KerasPruningCallback(trial, cfg.train.monitor))
            timed = _TimedEpochEnd(bookkeeping, cfg.train.monitor)
            best = max if cfg.train.monitor == "val_accuracy" else min
            try:
                _, result = train_model(hparams, data, cfg.train, epochs=cfg.search.epochs, callbacks=[timed])
            except optuna.TrialPruned:
                if run is not None:
                    # One name every trial has, for the runs table to sort as the study ranks:
                    # the best value reported before the pruner stopped it.
                    if timed.reported:
                        run.log_metrics({"objective": best(timed.reported)})
                    # Epochs counted from 1, as in the run's name and its metric steps (Optuna's
                    # own message, "pruned at epoch 0", counts from 0).
                    reason = f"pruned by the study's {cfg.search.pruner} pruner after epoch {len(timed.reported)}"
                    if timed.reported:
                        reason += f" ({cfg.train.monitor} {timed.reported[-1]:.4f})"
                    run.kill({"outcome": "pruned", "pruned_reason": reason})
                raise
            trial.set_user_attr("epochs", result.epochs)
            trial.set_user_attr("val_reviews", len(data.val))  # the score's standard error needs it
            trial.set_user_attr("seconds", result.seconds)  # the whole fit, bookkeeping included
            trial.set_user_attr("bookkeeping_seconds", timed.seconds)
            if run is not None:
                run.log_metrics(
                    {
                        "objective": result.best_value,  # what Optuna ranks the trial by
                        "best_value": result.best_value,
                        "best_epoch": result.best_epoch,
                        "train_seconds": result.seconds,
                    }
                )
        return result.best_value

    try:
        study.optimize(
            objective, timeout=cfg.search.timeout, catch=(Exception,), callbacks=until, gc_after_trial=True
        )
    except Exception as error:
        # Optuna's own writes (a trial's start or end: "AssertionError: Should not reach." from
        # its finally when the storage turned read-only) fail outside the objective.
        if (failure := _store_outage(error, where)) is None:
            raise
        raise failure from error
    if outage:
        failure, cause = outage[0]
        raise failure from cause  # the cause chain is what a worker's rejoin reads (_rejoinable)


def _store_outage(error: BaseException, where: tuple[str, str | None]) -> StoreError | None:
    """The store failure that must stop the search, or None: a tracking store out of reach, or
    a store that refuses writes (read-only, full). A database blip (a restart, a lock) fails
    only the trial in hand: the next trial, or a worker's rejoin, rides it out."""
    if not (tracking_unreachable(error) or refuses_writes(error)):
        return None
    return failed_store(error, *where, when=" during the search")


def _optimize_in_workers(
    cfg: PipelineConfig,
    storage: str,
    trial_tracker: TrialTracker | None,
    target: int,
    worker: str | None = None,
    seed: int | None = None,
) -> None:
    """``search.workers`` processes, each running trials until the study reaches ``target``."""
    context = multiprocessing.get_context("spawn")  # TensorFlow does not survive fork
    pool = ProcessPoolExecutor(max_workers=cfg.search.workers, mp_context=context)
    futures = [
        pool.submit(_worker, cfg, storage, index, target, trial_tracker, worker, seed, optuna.logging.get_verbosity())
        for index in range(cfg.search.workers)
    ]
    try:
        for future in futures:
            try:
                future.result()
            except Exception as error:  # a crashed process, not a failed trial (those are caught)
                raise SearchError(f"a search worker stopped: {type(error).__name__}: {error}") from error
    except BaseException:
        _stop_workers(pool, futures)
        raise
    pool.shutdown()


def _stop_workers(pool: ProcessPoolExecutor, futures: list[Future], grace: float = 10.0) -> None:
    """Stop the search: each worker fails its trial and closes its run, then exits; what is still
    alive after ``grace`` seconds is killed, so a stopped search leaves no process behind.

    Workers in the terminal's process group got Ctrl-C themselves; the others (SIGTERM to this
    process alone, as Kubernetes sends it) hear it from here, a moment later.
    """
    deadline = time.monotonic() + grace
    processes = list(getattr(pool, "_processes", {}).values())  # the executor keeps no public list
    if wait(futures, timeout=1.0).not_done:
        for process in processes:
            if process.is_alive():
                process.terminate()
    wait(futures, timeout=max(0.0, deadline - time.monotonic()))
    # Every worker has now closed its trial and run, or overran the grace period: none has
    # anything left to save (an idle one would only wait for the next trial).
    for process in processes:
        if process.is_alive():
            process.kill()
        process.join()
    pool.shutdown(wait=False, cancel_futures=True)


def _worker(
    cfg: PipelineConfig,
    storage: str,
    index: int,
    target: int,
    trial_tracker: TrialTracker | None,
    worker: str | None = None,
    seed: int | None = None,
    verbosity: int = optuna.logging.INFO,
) -> None:
    """One search process: one thread for TensorFlow, prepared data from the cache; SIGINT and
    SIGTERM fail its trial and close its run before it ends."""
    import tensorflow as tf

    raise_on_signals()
    optuna.logging.set_verbosity(verbosity)  # as quiet as the parent
    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    base = cfg.search.seed if seed is None else seed
    seed = None if base is None else base + index  # workers must not repeat trials
    study = create_study(cfg, storage, seed=seed, trial_tracker=trial_tracker)
    _optimize(study, trial_data(prepare(cfg.data), cfg.search), cfg, trial_tracker, target, worker)


def study_record(cfg: PipelineConfig, storage: str) -> StudyRecord:
    """The record of the existing study ``cfg.search.study_name``. Raises StudyMismatch when the
    study is missing or was not made by ``sentiment study create`` (no target)."""
    study = load_study(cfg, storage)
    record = StudyRecord.of(study)
    close_study(study)
    if record is None or record.trials_target is None or record.parent_run_id is None:
        raise StudyMismatch(
            f"study '{study.study_name}' has no trial target: it was not made by `sentiment study create`"
        )
    return record


def study_best(study_name: str, storage: str, selection: Selection = "best") -> SearchResult:
    """The study's chosen trial (``chosen_trial``) and trial counts. Raises SearchError when the
    study is missing or has no completed trial."""
    opened = optuna.storages.RDBStorage(storage, engine_kwargs=database_pool(storage))
    try:
        return _result(optuna.load_study(study_name=study_name, storage=opened), 0.0, selection)
    except KeyError:
        raise SearchError(f"no study '{study_name}' in {storage}") from None
    finally:
        opened.engine.dispose()


def close_study(study: optuna.Study) -> None:
    """Give a study's database connections back now, not when the garbage collector gets to them:
    each engine holds its pool open, and a database has a connection budget (docs/scale-out.md)."""
    backend = getattr(study._storage, "_backend", study._storage)  # Optuna wraps RDBStorage in a cache
    engine = getattr(backend, "engine", None)
    if engine is not None:
        engine.dispose()


def best_hparams(study_name: str, storage: str, selection: Selection = "best") -> HParams:
    """The configuration ``selection`` chooses in the study ``study_name``.

    Raises SearchError when the study is missing or has no completed trial.
    """
    return study_best(study_name, storage, selection).best_hparams


def trial_data(data: PreparedData, cfg: SearchConfig) -> PreparedData:
    """What trials train on: a random ``subset`` share of the training reviews, and every split cut
    to its last ``cfg.max_len`` tokens. Validation reviews stay all in, so trials compare fairly."""
    train = data.train
    if cfg.subset < 1.0:
        keep = np.random.default_rng(cfg.seed).permutation(len(train))[: max(2, int(len(train) * cfg.subset))]
        train = train.subset(np.sort(keep))
    if cfg.max_len is None or cfg.max_len >= data.max_len:
        return replace(data, train=train)
    return replace(data, train=_cut(train, cfg.max_len), val=_cut(data.val, cfg.max_len), max_len=cfg.max_len)


def _cut(split: Split, max_len: int) -> Split:
    return Split(split.x[:, -max_len:], split.y, np.minimum(split.lengths, max_len))


def chosen_trial(study: optuna.Study, selection: Selection) -> FrozenTrial:
    """The trial whose settings the final model takes. ``best``: the best value.
    ``cheapest_within_1se`` (val_accuracy only): of the completed trials scoring within one
    binomial standard error of the best, the one with the fewest recurrent multiply-adds per
    token. Trials score on a share of the reviews for a few epochs, so differences within that
    error are noise, while a cheaper model trains and scores several times faster
    (docs/benchmarks.md, "Performance on the full data")."""
    best = study.best_trial
    reviews = best.user_attrs.get("val_reviews")
    if selection == "best" or study.direction.name != "MAXIMIZE" or not reviews:
        return best
    error = math.sqrt(best.value * (1.0 - best.value) / reviews)
    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    close = [trial for trial in trials if trial.value >= best.value - error]
    return min(close, key=lambda t: (multiply_adds_per_token(HParams(**t.params)), -t.value, t.number))


def _result(study: optuna.Study, seconds: float, selection: Selection = "best") -> SearchResult:
    counts = _counts(study)
    if counts[TrialState.COMPLETE] == 0:
        raise SearchError(
            f"study '{study.study_name}': no trial completed "
            f"({counts[TrialState.FAIL]} failed, {counts[TrialState.PRUNED]} pruned); "
            "see the trial runs' failure_reason tags"
        )
    chosen = chosen_trial(study, selection)
    return SearchResult(
        best_hparams=HParams(**chosen.params),
        best_value=float(chosen.value),
        best_trial=chosen.number,
        complete=counts[TrialState.COMPLETE],
        pruned=counts[TrialState.PRUNED],
        failed=counts[TrialState.FAIL],
        seconds=seconds,
    )
