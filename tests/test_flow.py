"""End to end: the real Prefect flow on shipped reviews, checked through MLflow's public API."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipeline.config import SAMPLE_ARCHIVE, build_config

pytestmark = [pytest.mark.integration, pytest.mark.slow]

RUN_PARAMS = {
    "cell",
    "units",
    "layers",
    "bidirectional",
    "dropout",
    "learning_rate",
    "embedding_dim",
    "vocab_size",
    "max_len",
    "batch_size",
}
EPOCH_METRICS = {"loss", "accuracy", "val_loss", "val_accuracy"}


@pytest.fixture(scope="module")
def prefect_api():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("store")
    return root


def _config(store, **overrides):
    options = {
        "data.path": SAMPLE_ARCHIVE,
        "data.cache_dir": store / "cache",
        "data.max_len": 200,
        "data.vocab_size": 3000,
        "data.limit": 600,  # per split: 480 train / 120 validation, 600 test
        "search.trials": 2,
        "search.epochs": 2,
        "search.cells": ("gru",),
        "search.study_name": "flow-test",
        "train.epochs": 4,
        "train.time_budget": 3600,
        "tracking.tracking_uri": f"sqlite:///{store / 'mlruns' / 'mlflow.db'}",
        "tracking.experiment_name": "flow-test",
        "tracking.model_name": "flow-test-model",
    }
    return build_config({**options, **overrides})


@pytest.fixture(scope="module")
def first_run(prefect_api, store):
    from flows.training import training_flow

    cfg = _config(store)
    return cfg, training_flow(config=cfg)


def _client(cfg):
    from pipeline.stores import resolve

    return resolve(cfg).mlflow_client()


def test_parent_run_has_nested_trial_runs_with_comparable_params_and_epoch_metrics(first_run):
    cfg, summary = first_run
    client = _client(cfg)
    parent = client.get_run(summary.run_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.params["data.max_len"] == "200"
    assert parent.data.params["dataset_digest"]
    experiment = client.get_experiment_by_name("flow-test")
    children = client.search_runs(
        [experiment.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
    )
    assert len(children) == 2
    for child in children:
        assert RUN_PARAMS <= set(child.data.params)
        assert child.info.status in {"FINISHED", "KILLED"}  # complete or pruned, never left RUNNING
        history = client.get_metric_history(child.info.run_id, "val_accuracy")
        assert [m.step for m in history] == list(range(1, len(history) + 1))
        assert child.data.tags["epochs"] == str(len(history))  # tags and steps count alike
        assert EPOCH_METRICS <= set(child.data.metrics)
        name = child.data.tags["mlflow.runName"]
        assert name.startswith(f"trial-{int(child.data.tags['optuna_trial']):03d} gru×")
        assert f"· {child.data.tags['outcome']} after" in name
        assert child.inputs.dataset_inputs  # the dataset the trial trained on
    best = [child for child in children if child.data.tags.get("best_trial") == "true"]
    assert len(best) == 1 and best[0].data.tags["mlflow.runName"].endswith("· best")
    assert parent.data.tags["best_trial_run_id"] == best[0].info.run_id
    assert parent.data.tags["best_trial_number"] == str(summary.best_trial)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    assert RUN_PARAMS <= set(parent.data.params)  # the final model's params, same names
    # The cap and what the embedding got: the words the 480 training reviews hold, plus 2 ids.
    assert parent.data.params["vocab_size"] == "3000"
    assert 2 < int(parent.data.params["vocab_size_effective"]) <= 3002


def test_parent_run_holds_test_metrics_plots_and_the_model(first_run):
    cfg, summary = first_run
    client = _client(cfg)
    run = client.get_run(summary.run_id)
    metrics = run.data.metrics
    for metric in ("test_accuracy", "test_precision", "test_recall", "test_f1", "test_roc_auc", "test_loss"):
        assert 0.0 <= metrics[f"model/{metric}"] <= max(1.0, metrics["model/test_loss"])
    assert 0.0 <= metrics["model/val_accuracy"] <= 1.0
    assert len(client.get_metric_history(run.info.run_id, "rnn/val_loss")) >= 1
    assert metrics["rnn/stopped_by_time_budget"] == 0.0  # an hour is room enough for 4 epochs
    assert "`model/…` the shipped model" in run.data.tags["mlflow.note.content"]
    assert summary.model_kind in run.data.tags["mlflow.note.content"]
    # Its first lines say what each part scored, and that no budget cut the RNN short.
    note = run.data.tags["mlflow.note.content"]
    assert "- RNN: validation accuracy " in note and "(best of " in note and "time budget" not in note
    assert "- search: " in note and summary.parts and summary.parts[0].startswith("RNN: ")
    # The model is a logged model (MLflow 3) from code: nothing pickled, linked to the run.
    logged = client.search_logged_models(experiment_ids=[run.info.experiment_id])
    mine = [m for m in logged if m.source_run_id == run.info.run_id]
    assert mine
    # Named by what it is and the run that made it: two runs' models are told apart on the Models tab.
    assert mine[0].name.endswith(f"-{summary.model_kind}-{run.info.run_name}"), mine[0].name
    version = client.get_model_version("flow-test-model", summary.registered_version)
    assert version.source.removeprefix("models:/") in {m.model_id for m in logged}


def _download(client, run_id, path, tmp_path):
    return client.download_artifacts(run_id, path, str(tmp_path))


def test_parent_run_holds_the_plots_the_study_and_the_error_analysis(first_run, tmp_path):
    import json
    from pathlib import Path

    cfg, summary = first_run
    client = _client(cfg)
    run_id = summary.run_id
    plots = {a.path for a in client.list_artifacts(run_id, "plots")}
    assert plots == {
        f"plots/{name}.png"
        for name in (
            "confusion_matrix",
            "roc_curve",
            "precision_recall_curve",
            "calibration",
            "accuracy_by_length",
            "learning_curves_rnn",
            "learning_curves_bigrams",
        )
    }
    study = {a.path for a in client.list_artifacts(run_id, "study")}
    assert {"study/plots.html", "study/trials.json", "study/optimization_history.png", "study/slice.png"} <= study
    for path in plots | {p for p in study if p.endswith(".png")}:
        assert Path(_download(client, run_id, path, tmp_path)).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    html = Path(_download(client, run_id, "study/plots.html", tmp_path)).read_text()
    assert html.count("Plotly.newPlot") >= 3 and "optimization history" in html.lower()
    trials = json.loads(Path(_download(client, run_id, "study/trials.json", tmp_path)).read_text())
    rows = pd.DataFrame(trials["data"], columns=trials["columns"])
    assert len(rows) == 2 and set(rows["state"]) <= {"complete", "pruned", "failed"}  # rows = trials
    assert {"value", "epochs", "seconds", "param_learning_rate", "run_id", "run_name"} <= set(rows.columns)
    # Every column has values in MLflow's viewer (a dotted name showed blank), and each trial
    # leads to its run.
    assert not [column for column in rows.columns if "." in column]
    assert rows["run_name"].str.startswith("trial-").all() and rows["param_learning_rate"].notna().all()
    errors = json.loads(Path(_download(client, run_id, "evaluation/confident_errors.json", tmp_path)).read_text())
    errors = pd.DataFrame(errors["data"], columns=errors["columns"])
    assert len(errors) and set(errors["true_label"]) <= {"positive", "negative"}
    assert (errors["confidence"].diff().dropna() <= 0).all()  # surest first
    wrong = (errors["p_positive"] >= 0.5) != (errors["true_label"] == "positive")
    assert wrong.all()


def test_registry_consumer_scores_raw_text_with_public_api_only(first_run):
    import mlflow

    cfg, summary = first_run
    client = _client(cfg)
    version = client.get_model_version_by_alias("flow-test-model", "champion")
    assert str(version.version) == str(summary.registered_version)
    assert float(version.tags["test_accuracy"]) == pytest.approx(summary.test_metrics["test_accuracy"])
    assert version.run_id == summary.run_id
    assert version.tags["dataset_digest"] and "- cell: gru" in version.description
    assert "## Validation" in version.description and "- val_accuracy: " in version.description

    from pipeline.stores import mlflow_global_uri

    with mlflow_global_uri(cfg.tracking.tracking_uri):  # as a consumer's set_tracking_uri, undone after
        model = mlflow.pyfunc.load_model("models:/flow-test-model@champion")
    assert model.metadata.signature is not None
    assert model.metadata.saved_input_example_info is not None
    reviews = [
        "One of the best films I have seen, wonderful acting.",
        "Terrible. Boring plot, awful acting.",
        "",
    ]
    scored = model.predict(pd.DataFrame({"text": reviews}))
    assert list(scored.columns) == ["probability", "label"]
    assert np.all((scored["probability"] >= 0) & (scored["probability"] <= 1))
    assert set(scored["label"]) <= {"positive", "negative"}


def test_a_worse_second_run_registers_a_challenger_and_keeps_the_champion(first_run, store):
    from flows.training import training_flow

    cfg, first = first_run
    # A two-word vocabulary leaves the model only review length to go on: clearly worse.
    worse_cfg = _config(
        store,
        **{
            "data.vocab_size": 2,
            "search.trials": 1,
            "search.study_name": "flow-test-worse",
            "train.epochs": 1,
        },
    )
    second = training_flow(config=worse_cfg)
    assert second.test_metrics["test_accuracy"] < first.test_metrics["test_accuracy"]
    client = _client(cfg)
    assert str(client.get_model_version_by_alias("flow-test-model", "champion").version) == str(
        first.registered_version
    )
    challenger = client.get_model_version("flow-test-model", str(second.registered_version))
    assert challenger.tags["decision"] == f"not promoted: v{first.registered_version} stayed champion"
    assert challenger.tags["test_set"].split(" reviews, digest ")[0].isdigit()  # what test_accuracy is on
    assert second.promoted is False


def test_a_store_failure_at_registration_is_retried_with_backoff_and_the_run_completes(
    first_run, store, monkeypatch
):
    from mlflow.exceptions import MlflowException

    import pipeline.registry
    from flows.training import training_flow

    register = pipeline.registry.register_and_promote
    calls = []

    def briefly_unavailable(*args, **kwargs):
        calls.append(args)
        if len(calls) == 1:
            raise MlflowException("(sqlite3.OperationalError) database is locked")
        return register(*args, **kwargs)

    monkeypatch.setattr(pipeline.registry, "register_and_promote", briefly_unavailable)
    cfg = _config(store, **{"search.trials": 1, "search.study_name": "flow-test-retry", "train.epochs": 1})
    summary = training_flow(config=cfg, force=True)

    assert len(calls) == 2
    client = _client(cfg)
    assert client.get_run(summary.run_id).info.status == "FINISHED"
    assert client.get_model_version("flow-test-model", str(summary.registered_version))


def test_a_permanent_failure_fails_at_once_and_leaves_the_champion(first_run, store, monkeypatch):
    import pipeline.search
    from flows.training import training_flow

    cfg, _ = first_run
    client = _client(cfg)
    champion = client.get_model_version_by_alias("flow-test-model", "champion").version
    versions = len(client.search_model_versions("name = 'flow-test-model'"))
    calls = []

    def bad_config(*args, **kwargs):
        calls.append(args)
        raise TypeError("unsupported hyperparameter type")

    monkeypatch.setattr(pipeline.search, "run_search", bad_config)
    with pytest.raises(TypeError, match="unsupported hyperparameter type"):
        training_flow(config=_config(store, **{"search.study_name": "flow-test-permanent"}), force=True)

    assert len(calls) == 1  # not retried
    experiment = client.get_experiment_by_name("flow-test")
    assert not client.search_runs([experiment.experiment_id], "attributes.status = 'RUNNING'")
    failed = client.search_runs([experiment.experiment_id], "attributes.status = 'FAILED'")
    assert any("unsupported hyperparameter type" in run.data.tags.get("failure_reason", "") for run in failed)
    assert client.get_model_version_by_alias("flow-test-model", "champion").version == champion
    assert len(client.search_model_versions("name = 'flow-test-model'")) == versions


def test_final_run_records_the_companion_and_keeps_the_blend_only_when_it_wins_on_validation(first_run):
    cfg, summary = first_run
    run = _client(cfg).get_run(summary.run_id)
    metrics = run.data.metrics
    assert {"bigrams/val_accuracy", "bigrams/best_epoch", "bigrams/epochs_run"} <= set(metrics)
    rnn, blend = metrics["blend/val_accuracy_rnn"], metrics["blend/val_accuracy_rnn_bigrams"]
    assert 0.0 <= metrics["blend/val_accuracy_bigrams"] <= 1.0
    expected = "rnn+bigrams" if blend > rnn else "rnn"
    assert run.data.tags["model_kind"] == summary.model_kind == expected
    version = _client(cfg).get_model_version("flow-test-model", summary.registered_version)
    assert version.tags["model_kind"] == expected


def test_a_blends_companion_is_refitted_on_training_and_validation_reviews_after_the_choice(first_run):
    """The blend weight is chosen on validation; the shipped blend's NBSVM then fits training +
    validation reviews, and the model's validation figure stays the held-out fit's."""
    cfg, summary = first_run
    metrics = _client(cfg).get_run(summary.run_id).data.metrics
    chosen = "blend/val_accuracy_rnn_bigrams" if summary.model_kind == "rnn+bigrams" else "blend/val_accuracy_rnn"
    assert metrics["model/val_accuracy"] == pytest.approx(metrics[chosen], abs=1e-6)
    assert ("refit/companion_seconds" in metrics) == (summary.model_kind == "rnn+bigrams")


def test_without_a_companion_the_champion_is_the_rnn_alone(prefect_api, tmp_path):
    from flows.training import training_flow

    cfg = _config(tmp_path, **{"train.bigram_buckets": 0, "search.trials": 1, "train.epochs": 1})
    summary = training_flow(config=cfg)

    run = _client(cfg).get_run(summary.run_id)
    assert summary.model_kind == run.data.tags["model_kind"] == "rnn"
    assert not any(name.startswith(("bigrams/", "blend/")) for name in run.data.metrics)


def test_train_best_of_a_study_made_for_other_data_options_is_refused_and_opens_no_run(first_run):
    """Issue 22: `train --best-of` trained a study's best on other data options without a word,
    where `worker` refuses; it now refuses with the worker's message, before any run is opened."""
    from flows.training import train_flow
    from pipeline.search import StudyMismatch, best_hparams
    from pipeline.stores import resolve

    cfg, _ = first_run
    other = cfg.model_copy(update={"data": cfg.data.model_copy(update={"max_len": 120})})
    client = _client(cfg)
    experiment = client.get_experiment_by_name(cfg.tracking.experiment_name)
    runs_before = len(client.search_runs([experiment.experiment_id]))
    hparams = best_hparams("flow-test", resolve(cfg).study_storage)

    with pytest.raises(StudyMismatch, match=r"study 'flow-test' was made with another search space \(data.max_len: study 200, here 120"):
        train_flow(other, hparams, "train-flow-test", True, best_of="flow-test")

    assert len(client.search_runs([experiment.experiment_id])) == runs_before
