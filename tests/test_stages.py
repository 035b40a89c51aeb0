"""stages: what `sentiment train` trains, and the run's summary for people and machines."""

from __future__ import annotations

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


def test_a_skipped_run_says_why():
    summary = RunSummary(
        "abc", "url", "imdb", "dataset and config unchanged", skipped=True, champion_version="4"
    )
    assert summary.rows()[:3] == [
        ("Outcome", "skipped"),
        ("Reason", "dataset and config unchanged"),
        ("Champion", "v4"),
    ]
