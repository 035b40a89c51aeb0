"""config: dotted overrides, validation that names the field and its flag, derived locations."""

from __future__ import annotations

import json
import typing
from pathlib import Path

import pydantic
import pytest
import yaml
from typer.testing import CliRunner

from flows.cli import app
from pipeline.config import (
    PROJECT_ROOT,
    ConfigError,
    HParams,
    PipelineConfig,
    build_config,
    env_var,
    fields,
    flag,
    load_config,
)


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


@pytest.mark.parametrize("buckets", [1, -1, 2**24 + 1])
def test_bigram_buckets_are_zero_or_a_usable_count(buckets):
    with pytest.raises(ConfigError, match=r"train\.bigram_buckets \(--bigram-buckets\)"):
        build_config({"train.bigram_buckets": buckets})


# --- where values come from: options, environment, config files -----------------------------


def _other_value(dotted: str, field, tmp_path):
    """A valid value for the field that differs from its default."""
    default, annotation = field.default, field.annotation
    if dotted == "search.cells":
        return ("lstm",)
    if dotted in ("data.positive_labels", "data.negative_labels"):
        return ("5",)
    if typing.get_origin(annotation) is typing.Literal:
        return next(choice for choice in typing.get_args(annotation) if choice != default)
    kind = next(a for a in (typing.get_args(annotation) or (annotation,)) if a is not type(None))
    if kind is bool:
        return not default
    if kind is int:
        lowest = next((m.ge for m in field.metadata if hasattr(m, "ge")), 0)
        return (default if default is not None else lowest) + 1
    if kind is float:
        return default / 2 if default else 0.5
    if kind is Path:
        return tmp_path / dotted
    return f"value-of-{dotted}"


def _as_env(value) -> str:
    if isinstance(value, tuple):
        return json.dumps(list(value))
    return str(value).lower() if isinstance(value, bool) else str(value)


def _as_options(dotted: str, value) -> list[str]:
    if isinstance(value, bool):
        return [flag(dotted) if value else "--no-" + flag(dotted)[2:]]
    if isinstance(value, tuple):
        return [part for item in value for part in (flag(dotted), item)]
    return [flag(dotted), str(value)]


def _read(cfg, dotted: str):
    section, leaf = dotted.split(".")
    return getattr(getattr(cfg, section), leaf)


@pytest.mark.parametrize("dotted", [dotted for dotted, _ in fields()])
def test_every_field_is_reachable_from_an_option_a_variable_and_a_file(dotted, tmp_path, monkeypatch):
    field = dict(fields())[dotted]
    value = _other_value(dotted, field, tmp_path)
    assert _read(load_config(), dotted) != value

    result = CliRunner().invoke(app, ["config", "show", "--json", *_as_options(dotted, value)])
    assert result.exit_code == 0, result.output
    section, leaf = dotted.split(".")
    shown = json.loads(result.output)[section][leaf]
    assert shown == (
        str(value) if isinstance(value, Path) else list(value) if isinstance(value, tuple) else value
    )

    monkeypatch.setenv(env_var(dotted), _as_env(value))
    assert _read(load_config(), dotted) == value
    monkeypatch.delenv(env_var(dotted))

    file = tmp_path / "config.yaml"
    file.write_text(
        yaml.safe_dump({section: {leaf: _as_env(value) if not isinstance(value, tuple) else list(value)}})
    )
    assert _read(load_config(config_file=file), dotted) == value


def test_an_option_beats_a_variable_which_beats_a_file_which_beats_the_default(tmp_path, monkeypatch):
    file = tmp_path / "run.toml"
    file.write_text("[search]\ntrials = 3\nepochs = 4\nsubset = 0.5\n")
    monkeypatch.setenv("SENTIMENT_SEARCH_TRIALS", "5")
    monkeypatch.setenv("SENTIMENT_SEARCH_EPOCHS", "6")

    cfg = load_config({"search.trials": 7}, config_file=file)

    assert cfg.search.trials == 7  # option
    assert cfg.search.epochs == 6  # variable over file
    assert cfg.search.subset == 0.5  # file over default
    assert cfg.search.workers == 1  # default


def test_mlflow_tracking_uri_is_read_below_the_projects_own_variable(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    assert load_config().tracking.tracking_uri == "http://mlflow:5000"
    monkeypatch.setenv("SENTIMENT_TRACKING_TRACKING_URI", "http://other:5000")
    assert load_config().tracking.tracking_uri == "http://other:5000"
    assert (
        load_config({"tracking.tracking_uri": "http://cli:5000"}).tracking.tracking_uri == "http://cli:5000"
    )


def test_a_bad_value_names_its_field_and_where_it_came_from(tmp_path, monkeypatch):
    monkeypatch.setenv("SENTIMENT_DATA_VOCAB_SIZE", "1")
    with pytest.raises(
        ConfigError, match=r"data\.vocab_size \(--vocab-size\).*from SENTIMENT_DATA_VOCAB_SIZE"
    ):
        load_config()
    monkeypatch.delenv("SENTIMENT_DATA_VOCAB_SIZE")
    file = tmp_path / "bad.yaml"
    file.write_text("train:\n  epochs: 0\n")
    with pytest.raises(ConfigError, match=rf"train\.epochs \(--epochs\).*from {file}"):
        load_config(config_file=file)
    file.write_text("data:\n  vocab: 10\n")
    with pytest.raises(ConfigError, match=r"data\.vocab .*Extra inputs"):
        load_config(config_file=file)


def test_an_unreadable_config_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(config_file=tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("data: [1,\n")
    with pytest.raises(ConfigError, match=f"config file {broken}: not valid yaml"):
        load_config(config_file=broken)
    with pytest.raises(ConfigError, match="use a .yaml, .yml or .toml file"):
        load_config(config_file=tmp_path / "run.ini")


@pytest.mark.parametrize("profile", sorted((PROJECT_ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_each_shipped_profile_validates_and_changes_something(profile):
    cfg = load_config(config_file=profile)
    assert cfg.model_dump(exclude_unset=True)  # the file set fields
    assert yaml.safe_load(profile.read_text()).keys() <= {"data", "train", "search", "tracking"}


def test_flags_are_unique_and_env_vars_follow_the_dotted_names():
    flags = [flag(dotted) for dotted, _ in fields()]
    assert len(flags) == len(set(flags))
    assert flag("data.max_len") == "--max-len" and flag("search.max_len") == "--search-max-len"
    assert env_var("search.max_len") == "SENTIMENT_SEARCH_MAX_LEN"


@pytest.mark.parametrize("given", [Path("none"), "none", "None"])
def test_cache_dir_none_is_no_cache_not_a_folder_named_none(given, monkeypatch):
    """--help says 'none: no cache'; `--cache-dir none` made a folder ./none and cached there."""
    assert load_config({"data.cache_dir": given}).data.cache_dir is None
    monkeypatch.setenv("SENTIMENT_DATA_CACHE_DIR", "none")
    assert load_config().data.cache_dir is None
