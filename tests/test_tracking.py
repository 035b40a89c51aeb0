"""tracking: MLflow runs on a real SQLite store that always end, and say why."""

from __future__ import annotations

import pytest

from pipeline import tracking
from pipeline.config import build_config
from pipeline.stores import resolve

DATASET = tracking.DatasetRecord("d" * 64, "/data/aclImdb_v1.tar.gz", {"n_train": 10, "n_test": 4})


@pytest.fixture
def stores(tmp_path):
    return resolve(build_config({"tracking.tracking_uri": f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"}))


def _run(stores, run_id):
    return stores.mlflow_client().get_run(run_id)


def test_a_pipeline_run_holds_the_params_and_the_dataset_and_ends_finished(stores):
    with tracking.pipeline_run(
        stores, "exp", {"data.max_len": 200, "search.cells": ("gru",)}, DATASET
    ) as run:
        run.log_metrics({"val_accuracy": 0.5}, step=1)
    logged = _run(stores, run.run_id)

    assert logged.info.status == "FINISHED"
    assert logged.data.params["data.max_len"] == "200" and logged.data.params["search.cells"] == '["gru"]'
    assert logged.data.params["n_train"] == "10"
    assert logged.inputs.dataset_inputs[0].dataset.digest == "d" * 32
    assert logged.info.artifact_uri.startswith((stores.artifact_root or "") + "/exp")


def test_a_closed_run_lists_how_it_went_before_where_things_live_and_drops_its_liveness_tags(stores):
    """Issue 23: owner pids, the heartbeat and absolute paths came first among the parent's tags
    on the run page (it lists them as first written), ahead of the ones a person looks for."""
    places = {"where.data.path": "/abs/aclImdb"}
    with tracking.pipeline_run(stores, "exp", {}, DATASET, closing_tags=places) as run, tracking.heartbeat(run, 30):
        running = list(_run(stores, run.run_id).data.tags)
        run.set_tags({"model_kind": "rnn", "registered_version": 1})
    tags = list(_run(stores, run.run_id).data.tags)

    assert "owner_pid" in running and tracking.HEARTBEAT_TAG in running  # how a dead run is told
    assert not [key for key in tags if key.startswith("owner_") or key == tracking.HEARTBEAT_TAG], tags
    assert tags.index("model_kind") < tags.index("where.data.path"), tags


def test_a_run_that_raises_ends_failed_with_the_reason(stores):
    with pytest.raises(ValueError), tracking.open_run(stores, "exp", "broken", {}) as run:
        raise ValueError("loss became nan")
    logged = _run(stores, run.run_id)

    assert logged.info.status == "FAILED"
    assert logged.data.tags["failure_reason"] == "ValueError: loss became nan"


def test_a_run_killed_by_its_owner_keeps_that_state_when_the_error_passes_through(stores):
    class Stopped(Exception):
        pass

    with pytest.raises(Stopped), tracking.open_run(stores, "exp", "pruned", {}) as run:
        run.kill({"outcome": "pruned"})
        raise Stopped
    logged = _run(stores, run.run_id)

    assert logged.info.status == "KILLED" and logged.data.tags["outcome"] == "pruned"


def test_trial_runs_nest_under_the_parent_from_any_process(stores):
    import pickle

    with tracking.pipeline_run(stores, "exp", {}, DATASET) as parent:
        tracker = pickle.loads(pickle.dumps(tracking.trial_tracker(parent, "exp", "study", DATASET)))  # as a worker gets it
        with tracker(3, TRIAL_PARAMS) as trial:
            trial.log_metrics({"val_accuracy": 0.6}, step=1)
            trial.log_metrics({"val_accuracy": 0.7}, step=2)
    logged = _run(stores, trial.run_id)

    assert logged.data.tags["mlflow.parentRunId"] == parent.run_id
    assert logged.data.tags["mlflow.runName"] == "trial-003 bi-gru×2 32u d0.1 lr1.1e-3 · complete after 2 epochs"
    assert logged.data.tags["outcome"] == "complete" and logged.data.tags["epochs"] == "2"
    assert logged.info.status == "FINISHED" and logged.data.params["learning_rate"] == "0.0011234"
    assert logged.inputs.dataset_inputs[0].dataset.digest == "d" * 32


TRIAL_PARAMS = {
    "cell": "gru",
    "bidirectional": True,
    "layers": 2,
    "units": 32,
    "dropout": 0.1,
    "learning_rate": 0.0011234,
}


def test_a_pruned_trial_says_so_in_its_name_and_counts_the_epoch_it_was_pruned_on(stores):
    class Pruned(Exception):
        pass

    with tracking.pipeline_run(stores, "exp", {}, DATASET) as parent:
        tracker = tracking.trial_tracker(parent, "exp", "study")
        with pytest.raises(Pruned), tracker(4, {"cell": "lstm", "layers": 1}) as trial:
            trial.log_metrics({"val_accuracy": 0.5}, step=1)
            trial.kill({"outcome": "pruned"})
            raise Pruned
    logged = _run(stores, trial.run_id)

    assert logged.info.status == "KILLED" and logged.data.tags["epochs"] == "1"
    assert logged.data.tags["mlflow.runName"] == "trial-004 lstm×1 · pruned after 1 epoch"
    history = stores.mlflow_client().get_metric_history(trial.run_id, "val_accuracy")
    assert [(m.step, m.value) for m in history] == [(1, 0.5)]


def test_a_failed_trial_says_so_in_its_name(stores):
    with tracking.pipeline_run(stores, "exp", {}, DATASET) as parent:
        tracker = tracking.trial_tracker(parent, "exp", "study")
        with pytest.raises(ValueError), tracker(5, {}) as trial:
            raise ValueError("loss became nan")
    logged = _run(stores, trial.run_id)

    assert logged.info.status == "FAILED" and logged.data.tags["outcome"] == "failed"
    assert logged.data.tags["mlflow.runName"] == "trial-005 · failed after 0 epochs"


def test_an_experiment_opens_as_model_training_in_the_ui(stores):
    client = stores.mlflow_client()
    made_before = client.create_experiment("old")  # an experiment from before the tag existed
    for name in ("new", "old"):
        tracking.experiment_id(client, stores, name)
        assert client.get_experiment_by_name(name).tags["mlflow.experimentKind"] == "custom_model_development"
    assert client.get_experiment(made_before).tags["mlflow.experimentKind"] == "custom_model_development"


def test_metric_values_lose_float32_noise(stores):
    with tracking.open_run(stores, "exp", "rounded", {}) as run:
        run.log_metrics({"val_accuracy": 0.8399999737739563})
    assert _run(stores, run.run_id).data.metrics["val_accuracy"] == 0.84


def test_a_run_links_to_its_page_in_the_ui(stores):
    with tracking.open_run(stores, "exp", "linked", {}) as run:
        pass
    assert run.link() == (
        f"http://127.0.0.1:5000/#/experiments/{run.experiment_id}/runs/{run.run_id}?workflowType=machine_learning"
    )
    assert run.link("https://mlflow.example/").startswith("https://mlflow.example/#/experiments/")


def test_an_experiment_created_by_another_process_in_between_is_used(stores):
    """The race of two workers creating the experiment: the loser gets the winner's."""
    created_elsewhere = stores.mlflow_client().create_experiment("raced")
    client = stores.mlflow_client()
    looked_up = []

    def not_there_yet(name):  # the state the loser saw just before the winner created it
        looked_up.append(name)
        return None if len(looked_up) == 1 else type(client).get_experiment_by_name(client, name)

    client.get_experiment_by_name = not_there_yet
    assert tracking.experiment_id(client, stores, "raced") == created_elsewhere


def test_runs_record_their_source_and_git_commit(stores):
    with tracking.open_run(stores, "exp", "sourced", {}) as run:
        pass
    tags = _run(stores, run.run_id).data.tags
    assert tags["mlflow.source.name"] and tags["mlflow.source.type"] == "LOCAL"
    assert len(tags.get("mlflow.source.git.commit", "")) == 40  # the tests run inside the repository


def test_a_killed_pipelines_run_is_closed_by_the_next_run_on_any_machine(stores):
    """A parent run left RUNNING by a killed process: closed at once when the process was on this
    machine; when it was on another, once its heartbeat is older than three beats."""
    import time

    study = {"optuna_study": "s"}
    left = {}
    for name, owner, last_beat in (
        ("here-killed", {**tracking.here(), "pid": "999999999", "pid_started": "1"}, time.time()),
        ("there-silent", {"host": "another-machine", "pid": "1", "pid_started": "1"}, time.time() - 400),
        ("there-alive", {"host": "another-machine", "pid": "1", "pid_started": "1"}, time.time() - 30),
    ):
        tags = {"stage": "pipeline", **study, **{f"owner_{k}": v for k, v in owner.items()}}
        run = stores.mlflow_client().create_run(tracking.experiment_id(stores.mlflow_client(), stores, "exp"), tags=tags)
        stores.mlflow_client().set_tag(run.info.run_id, tracking.HEARTBEAT_TAG, f"{last_beat:.0f}")
        left[name] = run.info.run_id

    closed = tracking.close_dead_runs(stores, "exp", study, silent_for=180)

    assert sorted(closed) == sorted([left["here-killed"], left["there-silent"]])
    assert _run(stores, left["there-silent"]).data.tags["failure_reason"].startswith("no heartbeat from another-machine")
    assert _run(stores, left["there-alive"]).info.status == "RUNNING"


def test_a_pipeline_run_beats_its_heartbeat_while_it_runs(stores):
    import time

    with tracking.pipeline_run(stores, "exp", {}, DATASET) as run, tracking.heartbeat(run, every=0.2):
        first = float(_run(stores, run.run_id).data.tags[tracking.HEARTBEAT_TAG])
        time.sleep(1.5)
        assert float(_run(stores, run.run_id).data.tags[tracking.HEARTBEAT_TAG]) > first
