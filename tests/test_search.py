"""The Optuna search and the training it drives, on a few hundred real reviews."""

from __future__ import annotations

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState

from pipeline.config import SAMPLE_ARCHIVE, HParams, PipelineConfig, build_config, run_params
from pipeline.data import prepare
from pipeline.search import (
    UNSEARCHED,
    SearchError,
    best_hparams,
    chosen_trial,
    create_study,
    reap_dead_trials,
    run_search,
    search_space,
    suggest_hparams,
    trial_data,
)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("search")
    cfg = build_config(
        {
            "data.path": SAMPLE_ARCHIVE,
            "data.cache_dir": root / "cache",
            "data.limit": 200,
            "data.max_len": 60,
            "data.vocab_size": 1000,
            "search.trials": 1,
            "search.epochs": 1,
            "search.storage": f"sqlite:///{root / 'optuna.db'}",
            "train.epochs": 2,
        }
    )
    return cfg, prepare(cfg.data)


def with_search(cfg: PipelineConfig, **changes) -> PipelineConfig:
    return cfg.model_copy(update={"search": cfg.search.model_copy(update=changes)})


def test_search_space_names_match_the_logged_params(tiny):
    cfg, _ = tiny
    trial = optuna.create_study().ask()
    hparams = suggest_hparams(trial, cfg.search)
    assert set(trial.params) == set(HParams.model_fields) - UNSEARCHED
    assert set(HParams.model_fields) <= set(run_params(hparams, cfg)), "unsearched ones are logged too"


def test_without_search_bidirectional_every_trial_reads_one_way_and_the_study_records_it(tiny):
    cfg, _ = tiny
    one_way = with_search(cfg, bidirectional=False)
    study = optuna.create_study()
    drawn = {suggest_hparams(study.ask(), one_way.search).bidirectional for _ in range(20)}
    assert drawn == {False}
    assert search_space(one_way)["distributions"]["bidirectional"]["attributes"]["choices"] == [False]
    assert search_space(one_way) != search_space(cfg)  # another space: a study made with the other refuses it


@pytest.mark.slow  # 5-12 s of real search or training: make test, not the edit-test loop
def test_a_second_search_with_the_same_name_resumes_the_study(tiny):
    cfg, data = tiny
    cfg = with_search(cfg, study_name="resume-me")
    first = run_search(data, cfg, cfg.search.storage)
    second = run_search(data, cfg, cfg.search.storage)
    assert first.complete + first.pruned + first.failed == 1
    assert second.complete + second.pruned + second.failed == 2
    assert best_hparams(cfg.search.study_name, cfg.search.storage) == second.best_hparams


def test_a_trial_below_the_median_after_its_first_epoch_stops_there(tiny):
    cfg, data = tiny
    cfg = with_search(cfg, study_name="prune-early", epochs=3)
    space = optuna.create_study().ask()
    suggest_hparams(space, cfg.search)
    study = create_study(cfg, cfg.search.storage)
    for _ in range(2):  # the pruner's start-up trials, perfect after every epoch
        study.add_trial(
            optuna.trial.create_trial(
                params=space.params,
                distributions=space.distributions,
                value=1.0,
                intermediate_values={0: 1.0, 1: 1.0, 2: 1.0},
            )
        )
    run_search(data, cfg, cfg.search.storage)
    trial = create_study(cfg, cfg.search.storage).trials[-1]
    assert trial.state == optuna.trial.TrialState.PRUNED
    assert list(trial.intermediate_values) == [0]  # one epoch trained, not three


def test_a_trial_records_its_bookkeeping_inside_training(tiny):
    cfg, data = tiny
    cfg = with_search(cfg, study_name="timed")
    run_search(data, cfg, cfg.search.storage)
    attrs = create_study(cfg, cfg.search.storage).trials[-1].user_attrs
    assert 0 < attrs["bookkeeping_seconds"] < attrs["seconds"]


def test_a_study_cannot_silently_switch_direction(tiny):
    cfg, _ = tiny
    create_study(with_search(cfg, study_name="dir"), cfg.search.storage)
    flipped = build_config(
        {"search.study_name": "dir", "search.storage": cfg.search.storage, "train.monitor": "val_loss"}
    )
    with pytest.raises(SearchError, match="monitor=val_loss"):
        create_study(flipped, flipped.search.storage)


def test_missing_study_is_named(tiny):
    cfg, _ = tiny
    with pytest.raises(SearchError, match="never-ran"):
        best_hparams("never-ran", cfg.search.storage)


def test_trials_train_on_a_subset_of_shorter_reviews_and_keep_all_validation(tiny):
    cfg, data = tiny
    search = cfg.search.model_copy(update={"subset": 0.5, "max_len": 20})
    view = trial_data(data, search)
    assert len(view.train) == len(data.train) // 2
    assert len(view.val) == len(data.val)
    assert view.train.x.shape[1] == view.val.x.shape[1] == view.max_len == 20
    assert np.array_equal(view.val.x, data.val.x[:, -20:])  # the end of each review is kept


# A real process, SIGKILLed in the middle of its trial: no finally, no cleanup, no goodbye.
_KILLED_MID_TRIAL = """
import json, os, signal, sys
from pipeline import search, stages
from pipeline.config import build_config
from pipeline.data import prepare
from pipeline.stores import resolve

cfg = build_config(json.loads(sys.argv[1]))
search.train_model = lambda *args, **kwargs: os.kill(os.getpid(), signal.SIGKILL)
data = prepare(cfg.data)
with stages.pipeline_run(resolve(cfg), cfg, data) as run:
    stages.search_hparams(data, cfg, run)
"""


@pytest.mark.integration
def test_a_trial_whose_process_was_killed_is_failed_retried_and_its_runs_closed(tiny, tmp_path):
    """The embedded default on one machine: the next search sees at once that the trial's
    process is gone (no waiting out the heartbeat), fails and retries it, and closes the killed
    pipeline's parent run and its trial run."""
    import json
    import subprocess
    import sys

    from optuna.storages import RetryHeartbeatStaleTrialCallback

    from pipeline import stages
    from pipeline.stores import resolve

    cfg, data = tiny
    options = {
        "data.path": str(SAMPLE_ARCHIVE),
        "data.cache_dir": str(cfg.data.cache_dir),
        "data.limit": 200,
        "data.max_len": 60,
        "data.vocab_size": 1000,
        "search.trials": 1,
        "search.epochs": 1,
        "search.heartbeat_seconds": 1,
        "search.study_name": "killed",
        "search.storage": cfg.search.storage,
        "tracking.tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}",
        "tracking.experiment_name": "killed",
    }
    done = subprocess.run(
        [sys.executable, "-c", _KILLED_MID_TRIAL, json.dumps(options)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == -9, done.stderr[-3000:]
    study = optuna.load_study(study_name="killed", storage=cfg.search.storage)
    assert [t.state.name for t in study.trials] == ["RUNNING"]  # what a SIGKILL leaves behind

    survivor = build_config(options)
    stores = resolve(survivor)
    with stages.pipeline_run(stores, survivor, data, run_name="survivor") as run:
        stages.search_hparams(data, survivor, run)

    trials = optuna.load_study(study_name="killed", storage=cfg.search.storage).trials
    assert [t.state.name for t in trials][0] == "FAIL"
    assert RetryHeartbeatStaleTrialCallback.retried_trial_number(trials[1]) == 0  # retried once
    assert trials[1].params == trials[0].params and trials[1].state.name in ("COMPLETE", "PRUNED")
    client = stores.mlflow_client()
    experiment = client.get_experiment_by_name("killed")
    runs = client.search_runs([experiment.experiment_id], "tags.optuna_trial = '0'")
    assert [r.info.status for r in runs] == ["KILLED"]
    assert "its process is gone" in runs[0].data.tags["failure_reason"]
    parents = client.search_runs([experiment.experiment_id], "tags.stage = 'pipeline'")
    assert sorted(r.info.status for r in parents) == ["FINISHED", "KILLED"]  # none left RUNNING
    assert not client.search_runs([experiment.experiment_id], "attributes.status = 'RUNNING'")


@pytest.mark.slow  # 5-12 s of real search or training: make test, not the edit-test loop
def test_a_silent_trial_of_another_machine_is_failed_after_three_heartbeats(tiny):
    """A trial whose process is on another machine is judged by its heartbeat alone."""
    import time

    from optuna.storages import RetryHeartbeatStaleTrialCallback

    cfg, data = tiny
    cfg = cfg.model_copy(update={"search": cfg.search.model_copy(update={"study_name": "elsewhere", "heartbeat_seconds": 1, "trials": 1, "epochs": 1})})
    study = create_study(cfg, cfg.search.storage)
    lost = study.ask()
    suggest_hparams(lost, cfg.search)
    for name, value in {"host": "another-machine", "pid": 1, "pid_started": 0.0}.items():
        lost.set_user_attr(name, value)
    study._storage.record_heartbeat(lost._trial_id)
    assert reap_dead_trials(study) == 0  # its process id means nothing here: left to the heartbeat

    time.sleep(3.5)  # three heartbeats of silence
    run_search(data, cfg, cfg.search.storage)
    trials = optuna.load_study(study_name="elsewhere", storage=cfg.search.storage).trials
    assert trials[0].state.name == "FAIL"
    assert [RetryHeartbeatStaleTrialCallback.retried_trial_number(t) for t in trials].count(0) == 1


def test_a_neighbours_trial_caught_while_writing_its_owner_is_left_running(tiny):
    """A trial's owner is written one attribute at a time; a neighbour reaping between ``pid`` and
    ``pid_started`` once failed a live trial, and its worker died telling the result (CI)."""
    from pipeline.liveness import here

    cfg, _ = tiny
    cfg = cfg.model_copy(update={"search": cfg.search.model_copy(update={"study_name": "half-written"})})
    study = create_study(cfg, cfg.search.storage)
    alive, dead = study.ask(), study.ask()
    owner = here()
    for trial, pid in ((alive, owner["pid"]), (dead, 999_999_999)):
        trial.set_user_attr("host", owner["host"])
        trial.set_user_attr("pid_namespace", owner["pid_namespace"])
        trial.set_user_attr("pid", pid)
    assert reap_dead_trials(study) == 0  # neither owner is whole yet

    alive.set_user_attr("pid_started", owner["pid_started"])
    dead.set_user_attr("pid_started", owner["pid_started"])
    assert reap_dead_trials(study) == 1
    states = {t.number: t.state.name for t in optuna.load_study(study_name="half-written", storage=cfg.search.storage).trials}
    assert states[alive.number] == "RUNNING" and states[dead.number] == "FAIL"


def _finished_trial(value: float, **params) -> optuna.trial.FrozenTrial:
    distributions = {
        "cell": optuna.distributions.CategoricalDistribution(["simple_rnn", "lstm", "gru"]),
        "units": optuna.distributions.CategoricalDistribution([16, 32, 64]),
        "bidirectional": optuna.distributions.CategoricalDistribution([False, True]),
    }
    return optuna.trial.create_trial(
        params=params,
        distributions={name: distributions[name] for name in params},
        value=value,
        user_attrs={"val_reviews": 5000},
    )


@pytest.mark.parametrize("direction", ["maximize", "minimize"])
def test_the_cheapest_trial_within_one_standard_error_of_the_best_is_chosen(direction):
    """With 5,000 validation reviews, one standard error at 0.870 is 0.0048: the 32-unit GRU at
    0.866 costs an eighth of the best's work per token and is chosen, the 16-unit SimpleRNN at
    0.860 is beyond the error. A val_loss study has no binomial error: its best is taken."""
    study = optuna.create_study(direction=direction)
    study.add_trial(_finished_trial(0.870, cell="lstm", units=64, bidirectional=True))
    study.add_trial(_finished_trial(0.866, cell="gru", units=32, bidirectional=False))
    study.add_trial(_finished_trial(0.860, cell="simple_rnn", units=16, bidirectional=False))
    best = study.best_trial.number

    cheap = chosen_trial(study, "cheapest_within_1se")

    assert chosen_trial(study, "best").number == best
    if direction == "maximize":
        assert (cheap.params["cell"], cheap.params["units"]) == ("gru", 32)
    else:
        assert cheap.number == best


@pytest.mark.slow  # 5-12 s of real search or training: make test, not the edit-test loop
def test_a_search_trains_the_configuration_its_selection_chooses(tiny):
    """The study's result and ``best_hparams`` agree with ``chosen_trial`` under the config's
    selection, and trials record how many validation reviews scored them."""
    cfg, data = tiny
    cfg = with_search(cfg, study_name="selection", trials=3, selection="cheapest_within_1se")

    result = run_search(data, cfg, cfg.search.storage)

    study = optuna.load_study(study_name="selection", storage=cfg.search.storage)
    chosen = chosen_trial(study, "cheapest_within_1se")
    assert {t.user_attrs["val_reviews"] for t in study.trials if t.state.name == "COMPLETE"} == {len(data.val)}
    assert result.best_trial == chosen.number
    assert result.best_hparams == HParams(**chosen.params)
    assert best_hparams("selection", cfg.search.storage, "cheapest_within_1se") == result.best_hparams


@pytest.mark.slow  # 5-12 s of real search or training: make test, not the edit-test loop
def test_two_search_workers_start_no_trial_past_the_target(tiny):
    """A worker stops when the finished trials and those running elsewhere reach the target: a
    trial begun past it would keep the whole search waiting for one more fit."""
    cfg, data = tiny
    cfg = with_search(cfg, study_name="two-workers", trials=4, workers=2)

    result = run_search(data, cfg, cfg.search.storage)

    trials = optuna.load_study(study_name="two-workers", storage=cfg.search.storage).trials
    assert result.complete + result.pruned == 4
    assert [t.state.name for t in trials if not t.state.is_finished()] == []
    assert len(trials) == 4


def test_a_dropped_connection_hidden_under_optunas_own_error_still_rejoins():
    """A database restart while Optuna stores a trial's state surfaces as an UnboundLocalError
    from Optuna's ``finally``; the worker must see the dropped connection under it and rejoin,
    and still give up at once on a real error hidden the same way."""
    from sqlalchemy.exc import OperationalError

    from pipeline.search import _rejoinable

    def masked(error: Exception) -> Exception:
        try:
            try:
                raise error
            finally:
                raise UnboundLocalError("cannot access local variable 'updated_state'")
        except UnboundLocalError as raised:
            return raised

    dropped = OperationalError("UPDATE trials", {}, Exception("connection refused"))
    assert _rejoinable(masked(dropped))
    assert not _rejoinable(masked(ValueError("a bug")))


def test_a_worker_whose_trial_another_failed_rejoins(tmp_path):
    """A worker silent past its grace (a paused machine) finds its trial failed by a neighbour
    when it tells the result; Optuna raises, and the worker must rejoin, not die."""
    from pipeline.search import _rejoinable

    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'study.db'}")

    def failed_by_a_neighbour(trial: optuna.Trial) -> float:
        study._storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL)
        return 0.5

    with pytest.raises(Exception) as raised:
        study.optimize(failed_by_a_neighbour, n_trials=1)
    assert _rejoinable(raised.value)
    assert not _rejoinable(ValueError("a bug"))


@pytest.mark.slow  # 5-12 s of real search or training: make test, not the edit-test loop
def test_a_survivor_runs_the_retry_of_a_trial_that_died_elsewhere(tiny):
    """Issue 22: one of two workers was killed mid-trial; the survivor stopped at 7 of 8 because
    the dead trial still counted as running, and left its retry WAITING. The survivor now waits
    for the trials running elsewhere and runs the retry of the one that died."""
    cfg, data = tiny
    cfg = with_search(cfg, study_name="survivor", heartbeat_seconds=1, trials=2, epochs=1)
    study = create_study(cfg, cfg.search.storage)
    lost = study.ask()  # a worker on another machine, killed mid-trial: its heartbeat stops
    suggest_hparams(lost, cfg.search)
    for name, value in {"host": "another-machine", "pid": 1, "pid_started": 0.0}.items():
        lost.set_user_attr(name, value)
    study._storage.record_heartbeat(lost._trial_id)

    result = run_search(data, cfg, cfg.search.storage)

    trials = optuna.load_study(study_name="survivor", storage=cfg.search.storage).trials
    assert result.complete + result.pruned == 2  # the target, reached with the worker left
    assert trials[0].state == TrialState.FAIL
    assert sorted(t.state.name for t in trials[1:]) == ["COMPLETE", "COMPLETE"]  # its own and the retry
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
