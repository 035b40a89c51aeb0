"""config: dotted overrides, validation that names the field and its flag, derived locations."""

from __future__ import annotations

from pathlib import Path

import pydantic
import pytest

from pipeline.config import ConfigError, HParams, PipelineConfig, build_config


def test_dotted_overrides_reach_their_section_and_none_keeps_the_default():
    cfg = build_config(
        {"data.max_len": 200, "train.batch_size": 16, "search.cells": ("gru",), "train.epochs": None}
    )

    assert cfg.data.max_len == 200
    assert cfg.train.batch_size == 16
    assert cfg.search.cells == ("gru",)
    assert cfg.train.epochs == PipelineConfig().train.epochs
    assert build_config() == PipelineConfig()


@pytest.mark.parametrize(
    ("overrides", "field", "flag"),
    [
        ({"data.vocab_size": 1}, "data.vocab_size", "--vocab-size"),
        ({"data.max_len": 0}, "data.max_len", "--max-len"),
        ({"data.val_fraction": 1.0}, "data.val_fraction", "--val-fraction"),
        ({"train.buckets": 0}, "train.buckets", "--buckets"),
        ({"train.monitor": "accuracy"}, "train.monitor", "--monitor"),
        ({"data.path": 5}, "data.path", "--data"),
    ],
)
def test_invalid_option_names_the_field_and_its_flag(overrides, field, flag):
    with pytest.raises(ConfigError) as error:
        build_config(overrides)

    assert f"{field} ({flag})" in str(error.value)


def test_unknown_cell_names_search_cells_and_the_bad_value():
    with pytest.raises(ConfigError, match=r"search\.cells.*'transformer'"):
        build_config({"search.cells": ("lstm", "transformer")})


def test_empty_cells_are_rejected():
    with pytest.raises(ConfigError, match="cells must name at least one of simple_rnn, lstm, gru"):
        build_config({"search.cells": ()})


def test_empty_cells_message_names_the_field():
    with pytest.raises(ConfigError, match=r"search\.cells \(--cell"):
        build_config({"search.cells": ()})


def test_search_epochs_error_names_the_cli_flag_the_user_typed():
    with pytest.raises(ConfigError, match=r"search\.epochs \(--search-epochs\)"):
        build_config({"search.epochs": 0})


def test_several_invalid_options_are_all_reported():
    with pytest.raises(ConfigError) as error:
        build_config({"data.vocab_size": 1, "train.epochs": 0})

    assert "data.vocab_size" in str(error.value)
    assert "train.epochs" in str(error.value)


def test_unknown_option_is_rejected_by_name():
    with pytest.raises(ConfigError, match=r"data\.vocab"):
        build_config({"data.vocab": 100})


@pytest.mark.parametrize("dropout", [-0.1, 1.0, 1.5])
def test_hparams_reject_dropout_outside_zero_to_one(dropout):
    with pytest.raises(ValueError, match="dropout"):
        HParams(dropout=dropout)


def test_hparams_accept_the_edges_of_the_dropout_range():
    assert HParams(dropout=0.0).dropout == 0.0
    assert HParams(dropout=0.99).dropout == 0.99


def test_config_is_frozen():
    cfg = build_config()

    with pytest.raises(pydantic.ValidationError):
        cfg.data.max_len = 10
    with pytest.raises(pydantic.ValidationError):
        cfg.train = cfg.train


def test_flat_params_have_dotted_keys_with_the_configured_values():
    params = build_config({"data.max_len": 123, "search.cells": ("lstm",)}).flat_params()

    assert params["data.max_len"] == 123
    assert params["train.batch_size"] == 64
    assert params["search.cells"] == ["lstm"]
    assert all("." in key for key in params)
    assert not any(isinstance(value, dict) for value in params.values())


def test_study_storage_sits_beside_a_sqlite_tracking_store(tmp_path):
    cfg = build_config({"tracking.tracking_uri": f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"})

    assert cfg.study_storage() == f"sqlite:///{tmp_path / 'store' / 'optuna.db'}"


def test_configured_study_storage_wins():
    cfg = build_config({"search.storage": "sqlite:///elsewhere.db"})

    assert cfg.study_storage() == "sqlite:///elsewhere.db"


def test_artifact_location_sits_beside_a_sqlite_store(tmp_path):
    cfg = build_config({"tracking.tracking_uri": f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"})

    assert cfg.tracking.artifact_location() == (tmp_path / "store" / "artifacts").as_uri()
    assert Path(cfg.tracking.artifact_location().removeprefix("file://")).is_absolute()


def test_configured_artifact_root_wins():
    cfg = build_config({"tracking.artifact_root": "s3://bucket/artifacts"})

    assert cfg.tracking.artifact_location() == "s3://bucket/artifacts"


@pytest.mark.parametrize("buckets", [1, -1, 2**24 + 1])
def test_bigram_buckets_are_zero_or_a_usable_count(buckets):
    with pytest.raises(ConfigError, match=r"train\.bigram_buckets \(--bigram-buckets\)"):
        build_config({"train.bigram_buckets": buckets})
