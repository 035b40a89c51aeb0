"""Bad input and faults through the command line: a clear message, a non-zero exit, nothing half-written."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from flows.cli import app
from pipeline.config import SAMPLE_ARCHIVE

runner = CliRunner()


def _store_options(tmp_path, registry: bool = True):
    options = [
        "--tracking-uri",
        f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}",
        "--experiment-name",
        "cli-test",
    ]
    return [*options, "--model-name", "cli-test-model"] if registry else options


@pytest.mark.parametrize(
    ("options", "named"),
    [
        (["--vocab-size", "1"], "data.vocab_size (--vocab-size)"),
        (["--cell", "transformer"], "--cell"),
        (["--trials", "0"], "search.trials (--trials)"),
        (["--pruner", "sometimes"], "search.pruner (--pruner)"),
        (["--monitor", "accuracy"], "train.monitor (--monitor)"),
        (["--subset", "1.5"], "search.subset (--subset)"),
        (["--search-epochs", "0"], "search.epochs (--search-epochs)"),
        (["--promotion-alpha", "0"], "tracking.promotion_alpha (--promotion-alpha)"),
        (["--min-gain", "-0.1"], "tracking.min_gain (--min-gain)"),
    ],
)
def test_invalid_option_exits_non_zero_naming_it_and_writes_nothing(tmp_path, options, named):
    result = runner.invoke(app, ["run", *options, *_store_options(tmp_path)])
    assert result.exit_code == 2
    assert named in result.output
    assert not (tmp_path / "mlruns").exists()


def test_missing_archive_is_named_and_no_run_is_created(tmp_path):
    missing = tmp_path / "nowhere" / "aclImdb_v1.tar.gz"
    result = runner.invoke(app, ["prepare", "--data", str(missing)])
    assert result.exit_code == 1
    assert str(missing) in result.output


def test_corrupt_archive_is_named(tmp_path):
    corrupt = tmp_path / "aclImdb_v1.tar.gz"
    corrupt.write_bytes(SAMPLE_ARCHIVE.read_bytes()[:5000])  # a download cut short
    result = runner.invoke(app, ["prepare", "--data", str(corrupt)])
    assert result.exit_code == 1
    assert f"cannot read archive {corrupt}" in result.output


def test_a_preset_refuses_the_bigram_companion(tmp_path):
    result = runner.invoke(
        app, ["train", "--preset", "notebook-lstm", "--bigram-buckets", "4096", *_store_options(tmp_path)]
    )

    assert result.exit_code == 2
    assert "--bigram-buckets" in result.output and "preset" in result.output


def test_unknown_preset_is_named(tmp_path):
    result = runner.invoke(app, ["train", "--preset", "notebook-transformer", *_store_options(tmp_path)])
    assert result.exit_code == 2
    assert "--preset" in result.output and "notebook-lstm" in result.output


@pytest.mark.integration
def test_search_where_every_trial_fails_ends_failed_with_reasons_and_registers_nothing(tmp_path, monkeypatch):
    """A trial that raises ends FAILED with its reason; the study goes on; no run is left RUNNING."""
    from mlflow.tracking import MlflowClient

    import pipeline.search

    def broken_training(*args, **kwargs):
        raise FloatingPointError("loss became nan at epoch 1")

    monkeypatch.setattr(pipeline.search, "train_model", broken_training)
    options = ["--data", str(SAMPLE_ARCHIVE), "--limit", "100", "--max-len", "50", "--trials", "2"]
    options += ["--cache-dir", str(tmp_path / "cache")]
    store = _store_options(tmp_path, registry=False)
    result = runner.invoke(app, ["search", *options, *store, "--study-name", "broken"])
    assert result.exit_code == 1
    assert "no trial completed (2 failed" in result.output

    uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    client = MlflowClient(uri, registry_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("cli-test").experiment_id])
    trials = [r for r in runs if r.data.tags.get("stage") == "trial"]
    parents = [r for r in runs if r.data.tags.get("stage") == "pipeline"]
    assert len(trials) == 2 and len(parents) == 1
    assert all(r.info.status == "FAILED" for r in runs)
    assert all("FloatingPointError: loss became nan" in r.data.tags["failure_reason"] for r in trials)
    assert "SearchError" in parents[0].data.tags["failure_reason"]
    assert client.search_registered_models() == []


@pytest.mark.integration
def test_the_flow_stops_on_a_folder_without_pos_neg_naming_it(tmp_path):
    from prefect.testing.utilities import prefect_test_harness

    folder = tmp_path / "aclImdb"
    (folder / "train" / "unsup").mkdir(parents=True)
    with prefect_test_harness(server_startup_timeout=120):
        result = runner.invoke(app, ["run", "--data", str(folder), *_store_options(tmp_path)])
    assert result.exit_code == 1
    assert f"{folder}: expected train/pos" in result.output
    assert not (tmp_path / "mlruns" / "artifacts").exists()  # no run was started


def test_a_tracking_server_without_a_study_storage_is_refused_before_any_work(tmp_path):
    result = runner.invoke(app, ["run", "--tracking-uri", "http://127.0.0.1:9", "--cache-dir", str(tmp_path)])

    assert result.exit_code == 1
    assert "no Optuna storage for the tracking store http://127.0.0.1:9" in result.output
    assert "--storage" in result.output
    assert not list(tmp_path.iterdir())  # nothing prepared, nothing written


def test_a_bad_model_option_of_train_is_named(tmp_path):
    result = runner.invoke(
        app, ["train", "--preset", "notebook-lstm", "--learning-rate", "0", *_store_options(tmp_path)]
    )
    assert result.exit_code == 2
    assert "--learning-rate" in result.output and "greater than 0" in result.output


def test_train_needs_exactly_one_of_preset_and_best_of(tmp_path):
    result = runner.invoke(app, ["train", *_store_options(tmp_path)])
    assert result.exit_code == 2 and "exactly one of --preset or --best-of" in result.output


def test_the_cli_is_thin_every_command_a_few_lines():
    import ast
    from pathlib import Path

    import flows.cli

    commands = []
    for module in sorted(Path(flows.cli.__file__).parent.glob("cli*.py")):  # cli.py and its groups
        source = module.read_text()
        assert len(source.splitlines()) < 300, f"{module.name} is growing logic"
        commands += [
            node
            for node in ast.parse(source).body
            if isinstance(node, ast.FunctionDef) and any("command" in ast.unparse(d) for d in node.decorator_list)
        ]
    assert len(commands) >= 10
    for command in commands:
        length = command.end_lineno - command.lineno + 1
        assert length <= 20, f"{command.name} is {length} lines"


def test_config_show_prints_a_config_file_that_loads_back_the_same(tmp_path, monkeypatch):
    monkeypatch.setenv("SENTIMENT_SEARCH_TRIALS", "9")
    result = runner.invoke(app, ["config", "show", "--max-len", "123"])
    assert result.exit_code == 0, result.output
    saved = tmp_path / "resolved.yaml"
    saved.write_text(result.output)
    monkeypatch.delenv("SENTIMENT_SEARCH_TRIALS")

    from pipeline.config import load_config

    cfg = load_config(config_file=saved)
    assert cfg.data.max_len == 123 and cfg.search.trials == 9


def _one_line_error(result) -> str:
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    return lines[0]


@pytest.mark.parametrize(
    ("store", "expected"),
    [
        ("http://127.0.0.1:9", "MLflow tracking store http://127.0.0.1:9: cannot connect"),
        ("sqlite:///{tmp}/a-file/mlruns/mlflow.db", "cannot create {tmp}/a-file/mlruns: Not a directory"),
    ],
    ids=["closed port", "path under a regular file"],
)
def test_a_dead_store_fails_in_seconds_with_one_line_and_writes_nothing(tmp_path, store, expected):
    (tmp_path / "a-file").write_text("not a folder")
    store, expected = store.format(tmp=tmp_path), expected.format(tmp=tmp_path)
    started = time.monotonic()
    result = runner.invoke(app, ["run", "--tracking-uri", store, "--storage", f"sqlite:///{tmp_path}/o.db"])
    assert time.monotonic() - started < 30
    assert result.exit_code == 1
    assert expected in _one_line_error(result)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]


def test_an_unwritable_store_folder_is_named(tmp_path):
    folder = tmp_path / "locked"
    folder.mkdir()
    if subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i is not supported here")
    try:
        result = runner.invoke(app, ["run", "--tracking-uri", f"sqlite:///{folder}/mlflow.db"])
    finally:
        subprocess.run(["chattr", "-i", str(folder)], check=True)
    assert result.exit_code == 1
    line = _one_line_error(result)
    assert f"MLflow tracking store sqlite:///{folder}/mlflow.db: cannot write to {folder}" in line
    assert not any(folder.iterdir())


def test_a_missing_dataset_fails_in_under_two_seconds(tmp_path):
    missing = tmp_path / "aclImdb_v1.tar.gz"
    command = [str(Path(sys.executable).parent / "sentiment"), "run", "--data", str(missing)]
    started = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert time.monotonic() - started < 2
    assert done.returncode == 1
    assert done.stderr.strip() == f"error: dataset not found: {missing}"


def test_the_sample_and_full_data_profiles_never_share_a_default_study():
    """Issue 23: `make run`, then the README's full-data command, was refused (exit 2 after 48 s:
    another search space) because both profiles defaulted to the study 'imdb-sentiment'."""
    from pipeline.config import load_config

    root = Path(__file__).resolve().parents[1] / "configs"
    sample, full = (load_config(config_file=root / f"{name}.yaml") for name in ("sample", "full"))
    assert sample.search.study_name != full.search.study_name
    assert sample.search.study_name.startswith("imdb-sentiment-")
    again = load_config(config_file=root / "full.yaml")
    assert again.search.study_name == full.search.study_name  # a scheduled rerun resumes its study
    explicit = load_config({"search.study_name": "w48"}, config_file=root / "full.yaml")
    assert explicit.search.study_name == "w48"  # study create / worker keep the names they are given


def test_a_study_of_another_search_space_is_refused_in_seconds_before_the_data_is_read(tmp_path):
    """The refusal needs only the study's record: it comes before Prefect starts or a review is
    read, and leaves no run behind (it left a FAILED run after 48 s of reading)."""
    import mlflow

    from pipeline.config import build_config
    from pipeline.search import claim_study, create_study

    store = _store_options(tmp_path)
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    made = build_config({"search.study_name": "shared", "search.storage": storage, "data.vocab_size": 10000})
    claim_study(create_study(made, storage), made, "digest-of-the-data")
    started = time.perf_counter()
    options = ["--study-name", "shared", "--storage", storage, "--vocab-size", "20000", "--cache-dir", str(tmp_path / "cache")]
    result = runner.invoke(app, ["run", *options, *store])
    seconds = time.perf_counter() - started

    assert result.exit_code == 2, result.output
    assert "study 'shared' was made with another search space (data.vocab_size: study 10000, here 20000" in result.output
    assert seconds < 15 and not (tmp_path / "cache").exists()  # no review was read
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("cli-test")
    assert experiment is None or not client.search_runs([experiment.experiment_id])
