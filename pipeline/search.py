"""Optuna search: suggest_hparams(trial) → HParams; the objective; run_search (storage, pruner, resume).

The study is stored (in the storage ``stores.resolve`` gives) under its name, so a second run
with the same name resumes it. Each trial reports the monitored validation metric per
epoch to the pruner. A trial that raises (NaN loss included) ends as failed and the study goes
on; tracking of trials is injected as ``trial_tracker`` so this module never imports MLflow.
"""

from __future__ import annotations

import logging
import multiprocessing
import threading
import time
import warnings
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor, wait
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, replace
from typing import Any, Protocol

import keras
import numpy as np
import optuna
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState
from optuna_integration import KerasPruningCallback

from pipeline.config import HParams, PipelineConfig, SearchConfig, run_params
from pipeline.data import PreparedData, Split, prepare
from pipeline.progress import Progress
from pipeline.signals import raise_on_signals
from pipeline.train import EpochMetrics, train_model

log = logging.getLogger(__name__)


class TrialTracker(Protocol):
    """Opens a tracked run for (trial number, params) and closes those of dead trials; pickles
    into worker processes (``tracking.TrialTracker``)."""

    def __call__(self, number: int, params: dict[str, Any]) -> AbstractContextManager[Any]: ...

    def close_stale(self, number: int, reason: str) -> None: ...


class SearchError(RuntimeError):
    """The search produced no usable trial."""


@dataclass(frozen=True)
class SearchResult:
    best_hparams: HParams
    best_value: float
    best_trial: int
    complete: int  # trials in the whole study, this and earlier invocations
    pruned: int
    failed: int
    seconds: float


def suggest_hparams(trial: optuna.Trial, cfg: SearchConfig) -> HParams:
    """The search space. Learning rates sit where these models converge in a few epochs."""
    return HParams(
        cell=trial.suggest_categorical("cell", list(cfg.cells)),
        units=trial.suggest_categorical("units", [16, 32, 64]),
        layers=trial.suggest_int("layers", 1, 2),
        bidirectional=trial.suggest_categorical("bidirectional", [False, True]),
        dropout=trial.suggest_float("dropout", 0.0, 0.5, step=0.1),
        learning_rate=trial.suggest_float("learning_rate", 1e-3, 1e-2, log=True),
        embedding_dim=trial.suggest_categorical("embedding_dim", [16, 32, 64]),
        optimizer=trial.suggest_categorical("optimizer", ["adam", "rmsprop"]),
    )


def create_study(
    cfg: PipelineConfig, storage: str, seed: int | None = None, trial_tracker: TrialTracker | None = None
) -> optuna.Study:
    """Create the named study in ``storage``, or load it to resume (sampler seeded by ``seed``,
    else the config).

    Running trials beat every ``search.heartbeat_seconds``; before each new trial, one silent for
    three beats (its process died) is failed, enqueued again once, and its tracked run closed.
    """
    direction = "maximize" if cfg.train.monitor == "val_accuracy" else "minimize"
    study = optuna.create_study(
        study_name=cfg.search.study_name,
        storage=_storage(storage, cfg.search.heartbeat_seconds, trial_tracker),
        direction=direction,
        sampler=optuna.samplers.TPESampler(seed=cfg.search.seed if seed is None else seed),
        pruner=_pruner(cfg.search),
        load_if_exists=True,
    )
    if study.direction.name.lower() != direction:
        raise SearchError(
            f"study '{cfg.search.study_name}' in {storage} was created to {study.direction.name.lower()}; "
            f"monitor={cfg.train.monitor} needs {direction}: use another study_name"
        )
    return study


def _storage(url: str, heartbeat: int, trial_tracker: TrialTracker | None) -> optuna.storages.RDBStorage:
    silent = f"no heartbeat for over {3 * heartbeat} s: its process died (killed, out of memory, lost)"
    with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna 5, and what we need
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        retry = RetryHeartbeatStaleTrialCallback(max_retry=1)

        def on_stale(study: optuna.Study, trial: FrozenTrial) -> None:
            retry(study, trial)
            if trial_tracker is not None:
                trial_tracker.close_stale(trial.number, silent)

        return optuna.storages.RDBStorage(
            url,
            heartbeat_interval=heartbeat,
            grace_period=3 * heartbeat,
            heartbeat_stale_trial_callback=on_stale,
        )


class _TimedEpochEnd(keras.callbacks.Callback):
    """Runs the epoch-end hooks of ``callbacks`` (Optuna reports, MLflow metrics) and adds up
    their wall seconds: bookkeeping that happens inside ``fit`` and must not pass for training."""

    def __init__(self, callbacks: list[keras.callbacks.Callback]) -> None:
        super().__init__()
        self._callbacks = callbacks
        self.seconds = 0.0

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
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
    data: PreparedData, cfg: PipelineConfig, storage: str, trial_tracker: TrialTracker | None = None
) -> SearchResult:
    """Run ``cfg.search.trials`` more trials (or until ``cfg.search.timeout``) of the study in
    ``storage``; the study's best.

    With ``cfg.search.workers > 1`` trials run in that many processes, one TensorFlow thread
    each: an RNN step keeps about one core busy, so side-by-side trials nearly double throughput.
    Raises SearchError when no trial of the study has completed.
    """
    started = time.perf_counter()
    study = create_study(cfg, storage, trial_tracker=trial_tracker)
    with _watch(study, cfg.search.trials):
        if cfg.search.workers == 1:
            _optimize(study, trial_data(data, cfg.search), cfg, trial_tracker, cfg.search.trials)
        else:
            _optimize_in_workers(cfg, storage, trial_tracker)
    return _result(study, time.perf_counter() - started)  # reads the storage: workers' trials too


_SHOWN = {"pruned": TrialState.PRUNED, "failed": TrialState.FAIL}


@contextmanager
def _watch(study: optuna.Study, target: int, every: float = 1.0) -> Iterator[None]:
    """Show trials done / target and the best value so far while the search runs, read from the
    study itself, so trials in worker processes count too."""
    first = len(study.get_trials(deepcopy=False))
    stop = threading.Event()
    progress = Progress("search", target, "trial")

    def show() -> None:
        finished = [t for t in study.get_trials(deepcopy=False)[first:] if t.state.is_finished()]
        done = [t.value for t in finished if t.state == TrialState.COMPLETE]
        best = max if study.direction.name == "MAXIMIZE" else min
        numbers = {"best": best(done)} if done else {}
        counts = {name: sum(t.state == state for t in finished) for name, state in _SHOWN.items()}
        progress.update(len(finished), numbers | counts)

    def poll() -> None:
        while not stop.wait(every):
            show()

    watcher = threading.Thread(target=poll, name="search-progress", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        stop.set()
        watcher.join()
        show()
        progress.close()


def _optimize(
    study: optuna.Study,
    data: PreparedData,
    cfg: PipelineConfig,
    trial_tracker: TrialTracker | None,
    trials: int,
) -> None:
    def objective(trial: optuna.Trial) -> float:
        hparams = suggest_hparams(trial, cfg.search)
        # Trials may see shorter reviews than the final model: log what they trained on.
        params = run_params(hparams, cfg, data.vocab_size_effective)
        params |= {"max_len": data.max_len, "train_reviews": len(data.train)}
        track = trial_tracker(trial.number, params) if trial_tracker else nullcontext()
        with track as run:
            # The epoch's metrics are logged before the pruner may stop the trial on them.
            bookkeeping = [EpochMetrics(run.log_metrics)] if run is not None else []
            bookkeeping.append(KerasPruningCallback(trial, cfg.train.monitor))
            timed = _TimedEpochEnd(bookkeeping)
            try:
                _, result = train_model(hparams, data, cfg.train, epochs=cfg.search.epochs, callbacks=[timed])
            except optuna.TrialPruned as pruned:
                if run is not None:
                    run.kill(
                        {"outcome": "pruned", "pruned_reason": str(pruned) or "pruned by the study's pruner"}
                    )
                raise
            trial.set_user_attr("epochs", result.epochs)
            trial.set_user_attr("seconds", result.seconds)  # the whole fit, bookkeeping included
            trial.set_user_attr("bookkeeping_seconds", timed.seconds)
            if run is not None:
                run.log_metrics(
                    {
                        "best_value": result.best_value,
                        "best_epoch": result.best_epoch,
                        "train_seconds": result.seconds,
                    }
                )
        return result.best_value

    study.optimize(
        objective, n_trials=trials, timeout=cfg.search.timeout, catch=(Exception,), gc_after_trial=True
    )


def _optimize_in_workers(cfg: PipelineConfig, storage: str, trial_tracker: TrialTracker | None) -> None:
    workers = cfg.search.workers
    shares = [cfg.search.trials // workers + (i < cfg.search.trials % workers) for i in range(workers)]
    context = multiprocessing.get_context("spawn")  # TensorFlow does not survive fork
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=context)
    futures = [
        pool.submit(_worker, cfg, storage, index, share, trial_tracker, optuna.logging.get_verbosity())
        for index, share in enumerate(shares)
        if share
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
    trials: int,
    trial_tracker: TrialTracker | None,
    verbosity: int = optuna.logging.INFO,
) -> None:
    """One search process: one thread for TensorFlow, prepared data from the cache; SIGINT and
    SIGTERM fail its trial and close its run before it ends."""
    import tensorflow as tf

    raise_on_signals()
    optuna.logging.set_verbosity(verbosity)  # as quiet as the parent
    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    seed = None if cfg.search.seed is None else cfg.search.seed + index  # workers must not repeat trials
    study = create_study(cfg, storage, seed=seed, trial_tracker=trial_tracker)
    _optimize(study, trial_data(prepare(cfg.data), cfg.search), cfg, trial_tracker, trials)


def best_hparams(study_name: str, storage: str) -> HParams:
    """The best configuration stored in the study ``study_name``.

    Raises SearchError when the study is missing or has no completed trial.
    """
    try:
        study = optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:
        raise SearchError(f"no study '{study_name}' in {storage}") from None
    return _result(study, 0.0).best_hparams


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


def _result(study: optuna.Study, seconds: float) -> SearchResult:
    counts = {state: len(study.get_trials(deepcopy=False, states=(state,))) for state in TrialState}
    if counts[TrialState.COMPLETE] == 0:
        raise SearchError(
            f"study '{study.study_name}': no trial completed "
            f"({counts[TrialState.FAIL]} failed, {counts[TrialState.PRUNED]} pruned); "
            "see the trial runs' failure_reason tags"
        )
    best = study.best_trial
    return SearchResult(
        best_hparams=HParams(**best.params),
        best_value=float(best.value),
        best_trial=best.number,
        complete=counts[TrialState.COMPLETE],
        pruned=counts[TrialState.PRUNED],
        failed=counts[TrialState.FAIL],
        seconds=seconds,
    )
