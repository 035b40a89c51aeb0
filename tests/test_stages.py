"""stages: what `sentiment train` trains, and the run's summary for people and machines."""

from __future__ import annotations

from dataclasses import replace

import pytest

from pipeline.config import ConfigError, build_config
from pipeline.model import PRESETS
from pipeline.stages import RunSummary, chosen_hparams


def test_a_preset_brings_its_vocabulary_and_no_companion_and_options_go_on_top():
    cfg, hparams = chosen_hparams(build_config(), "notebook-lstm", None, {"learning_rate": 1e-3})

    assert hparams == PRESETS["notebook-lstm"].hparams.model_copy(update={"learning_rate": 1e-3})
    assert cfg.data.vocab_size == PRESETS["notebook-lstm"].vocab_size
    assert cfg.train.bigram_buckets == 0


def test_a_vocabulary_set_by_the_user_wins_over_the_presets():
    cfg, _ = chosen_hparams(build_config({"data.vocab_size": 777}), "notebook-lstm", None, {})
    assert cfg.data.vocab_size == 777


@pytest.mark.parametrize(
    ("preset", "best_of", "overrides", "message"),
    [
        (None, None, {}, "exactly one of --preset or --best-of"),
        ("notebook-lstm", "study", {}, "exactly one of --preset or --best-of"),
        ("notebook-transformer", None, {}, "unknown preset 'notebook-transformer'"),
        ("notebook-lstm", None, {"units": 0}, "invalid option --units"),
    ],
)
def test_bad_choices_name_the_option(preset, best_of, overrides, message):
    with pytest.raises(ConfigError, match=message):
        chosen_hparams(build_config(), preset, best_of, overrides)


def test_a_preset_refuses_the_companion_it_never_had():
    with pytest.raises(ConfigError, match=r"--bigram-buckets"):
        chosen_hparams(build_config({"train.bigram_buckets": 4096}), "notebook-lstm", None, {})


def test_the_summary_says_what_happened_in_text_markdown_and_json():
    summary = RunSummary(
        run_id="abc",
        run_url="http://127.0.0.1:5000/#/experiments/1/runs/abc",
        model_name="imdb",
        champion_check="no champion for model 'imdb' yet",
        best_trial=3,
        best_value=0.9012,
        best_hparams={"cell": "gru", "learning_rate": 0.0012345},
        model_kind="rnn+bigrams",
        test_metrics={"test_accuracy": 0.91, "test_f1": 0.9},
        registered_version="2",
        promoted=True,
        promotion_reason="promoted: gain 0.0100, McNemar p=0.003",
        ui_command="mlflow ui --backend-store-uri x",
    )

    text = summary.to_text()
    assert "Best trial    #3 (0.9012): cell=gru, learning_rate=0.00123" in text
    assert "accuracy 0.9100, f1 0.9000" in text
    assert "v2 promoted to champion: promoted: gain 0.0100, McNemar p=0.003" in text
    assert "models:/imdb/2" in text and "mlflow ui --backend-store-uri x" in text
    assert "| Outcome | trained |" in summary.to_markdown()
    assert summary.to_dict()["promoted"] is True
    # On the run's page the link stays within the UI, on whatever port `sentiment ui` chose
    # (issue 23: it pointed at port 5000 while `sentiment ui` served elsewhere).
    description = summary.description()
    assert "| MLflow run | [this run](#/experiments/1/runs/abc) |" in description
    assert "127.0.0.1:5000" not in description and "mlflow ui" not in description


def test_a_skipped_run_says_why():
    summary = RunSummary(
        "abc", "url", "imdb", "dataset and config unchanged", skipped=True, champion_version="4"
    )
    assert summary.rows()[:3] == [
        ("Outcome", "skipped"),
        ("Reason", "dataset and config unchanged"),
        ("Champion", "v4"),
    ]


@pytest.mark.integration
def test_the_description_says_which_budget_cut_which_part_and_what_each_scored(tmp_path):
    """A run whose RNN the time budget stopped after one epoch, and whose search its timeout
    stopped, must not read like a searched RNN at its best (issue 23, item 8)."""
    from pipeline import search, stages, tracking
    from pipeline.config import HParams
    from pipeline.stores import resolve
    from pipeline.train import TrainResult

    cfg = build_config(
        {
            "tracking.tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}",
            "train.time_budget": 300,
            "train.epochs": 8,
            "search.timeout": 900,
        }
    )
    rnn = TrainResult({"val_accuracy": [0.8712]}, 1, 1, 0.8712, 301.0, (200,))
    final = stages.FinalModel(None, HParams(), rnn, "rnn+bigrams", 10_002)
    searched = search.SearchResult(HParams(), 0.87, 3, 5, 2, 0, 905.0)
    dataset = tracking.DatasetRecord("d" * 64, "/data/aclImdb_v1.tar.gz", {"n_train": 10, "n_test": 4})
    with tracking.pipeline_run(resolve(cfg), "parts", {}, dataset, "parts") as run:
        run.log_metrics(
            {
                "rnn/stopped_by_time_budget": 1.0,
                "blend/val_accuracy_bigrams": 0.8891,
                "blend/val_accuracy_rnn_bigrams": 0.8903,
                "blend/blend_weight_rnn": 0.3,
            }
        )
        parts = stages._parts(cfg, run, final, searched)
        # The Models tab tells runs' models apart, and MLflow's refused characters are gone.
        assert stages.logged_model_name(replace(final, hparams=HParams(cell="lstm", units=64, layers=2)), run) == (
            "lstm64x2-rnn+bigrams-parts"
        )
        named = run.client.create_run(run.experiment_id, run_name="nightly: v1.2/a").info.run_id
        assert stages.logged_model_name(final, replace(run, run_id=named)) == "gru32x1-rnn+bigrams-nightly- v1-2-a"
    assert parts == (
        "RNN: validation accuracy 0.8712 (best of 1 of 8 epochs), stopped by the time budget (train.time_budget 300 s)",
        "companion (bag of n-grams) alone: validation accuracy 0.8891",
        "the blend shipped: validation accuracy 0.8903, the RNN's weight 0.30",
        "search: 5 complete and 2 pruned trials in the study; this search was stopped by its time budget "
        "(search.timeout 900 s)",
    )
