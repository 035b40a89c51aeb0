"""`sentiment predict`: batch scoring with a registered model, as a consumer runs it from a shell."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from flows.cli import app

pytestmark = pytest.mark.integration

REVIEWS = [
    "One of the best films I have seen, wonderful acting and a moving story.",
    "Terrible. Boring plot, awful acting, I walked out.",
    "",
    'A "quoted", multi-line\nreview, with commas; and ünïcödé.',
    "x " * 500_000,  # 1 MB: keeps its last max_len tokens
]

runner = CliRunner()


@pytest.fixture(scope="module")
def registered(tmp_path_factory, sample_data):
    from registered_model import register_tiny_model

    return register_tiny_model(tmp_path_factory.mktemp("predict"), sample_data)


def _store(registered) -> list[str]:
    tracking = registered.cfg.tracking
    return ["--tracking-uri", tracking.tracking_uri, "--model-name", tracking.model_name]


def test_the_cli_scores_a_file_exactly_like_the_in_process_model(registered, tmp_path):
    source = tmp_path / "reviews.csv"
    pd.DataFrame({"id": range(len(REVIEWS)), "text": REVIEWS}).to_csv(source, index=False)
    target = tmp_path / "scored.jsonl"
    command = [str(Path(sys.executable).parent / "sentiment"), "predict", "--input", str(source)]
    done = subprocess.run(
        [*command, "--output", str(target), "--batch-size", "2", "--no-progress", *_store(registered)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"scored {len(REVIEWS)} reviews with {registered.champion_uri}" in done.stderr

    scored = pd.read_json(target, lines=True, dtype={"text": str})
    expected = registered.score_in_process(REVIEWS)
    assert scored["id"].tolist() == list(range(len(REVIEWS)))
    assert scored["text"].fillna("").tolist() == REVIEWS
    np.testing.assert_allclose(scored["probability"], expected["probability"], atol=1e-6, rtol=0)
    assert scored["label"].tolist() == expected["label"].tolist()


def test_stdin_lines_and_parquet_output(registered, tmp_path):
    target = tmp_path / "scored.parquet"
    lines = REVIEWS[:2]
    result = runner.invoke(
        app,
        ["predict", "--output", str(target), "--no-progress", *_store(registered)],
        input="\n".join(lines) + "\n",
    )
    assert result.exit_code == 0, result.output

    scored = pd.read_parquet(target)
    assert scored["text"].tolist() == lines
    expected = registered.score_in_process(lines)
    np.testing.assert_allclose(scored["probability"], expected["probability"], atol=1e-6, rtol=0)


def test_bytes_that_are_not_utf8_exit_non_zero_naming_the_line_and_leave_no_output(registered, tmp_path):
    source = tmp_path / "latin1.csv"
    source.write_bytes("text\nfine\nna\xefve caf\xe9\n".encode("latin-1"))
    target = tmp_path / "scored.csv"
    result = runner.invoke(
        app,
        [
            "predict",
            "--input",
            str(source),
            "--output",
            str(target),
            "--batch-size",
            "1",
            *_store(registered),
        ],
    )
    assert result.exit_code == 1
    assert "line 3: not valid UTF-8" in result.output
    assert not target.exists()


def test_a_missing_text_column_or_review_names_the_row(registered, tmp_path):
    source = tmp_path / "reviews.jsonl"
    source.write_text("\n".join(json.dumps(record) for record in [{"text": "ok"}, {"review": "wrong key"}]))
    result = runner.invoke(app, ["predict", "--input", str(source), "--no-progress", *_store(registered)])
    assert result.exit_code == 1
    assert (
        "row 2" in result.output and "no 'text' column" in result.output and "--text-column" in result.output
    )

    source.write_text(json.dumps({"text": None}) + "\n")
    result = runner.invoke(app, ["predict", "--input", str(source), "--no-progress", *_store(registered)])
    assert result.exit_code == 1
    assert "row 1" in result.output and "'text' is missing" in result.output


def test_an_unknown_model_exits_non_zero_naming_it(registered):
    result = runner.invoke(
        app,
        ["predict", "--model", "models:/no-such-model@champion", "--no-progress", *_store(registered)],
        input="fine\n",
    )
    assert result.exit_code == 1
    assert "no-such-model" in result.output


def test_empty_input_writes_a_header_only_file_into_a_new_folder(registered, tmp_path):
    source = tmp_path / "empty.csv"
    source.write_text("text\n")
    target = tmp_path / "new" / "folder" / "scored.csv"
    result = runner.invoke(
        app,
        ["predict", "--input", str(source), "--output", str(target), "--no-progress", *_store(registered)],
    )
    assert result.exit_code == 0, result.output
    assert "scored 0 reviews" in result.output
    assert target.read_text().strip() == "text,probability,label"


def test_a_missing_input_fails_in_one_line_before_the_model_is_loaded(registered, tmp_path):
    missing = tmp_path / "nowhere.csv"
    started = time.monotonic()
    result = runner.invoke(
        app,
        [
            "predict",
            "--input",
            str(missing),
            "--model",
            "models:/no-such-model@champion",
            *_store(registered),
        ],
    )
    assert result.exit_code == 1
    assert result.output.strip() == f"error: input not found: {missing}"  # not the unknown model
    assert time.monotonic() - started < 5


@pytest.mark.parametrize("command", ["predict", "serve"])
def test_a_dead_tracking_server_is_one_line_naming_the_store(command, tmp_path):
    """Issue 24: ``predict`` and ``serve`` printed urllib3's ~350-character retry text."""
    from pipeline.http_server import free_port

    dead = f"http://127.0.0.1:{free_port()}"  # bound and let go: nothing listens there
    source = tmp_path / "reviews.csv"
    source.write_text("text\nfine\n")
    options = ["--input", str(source)] if command == "predict" else ["--port", str(free_port())]
    sentiment = str(Path(sys.executable).parent / "sentiment")
    for verbose in ([], ["--verbose"]):
        done = subprocess.run(
            [sentiment, command, "--tracking-uri", dead, *options, *verbose],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 1, done.stderr[-2000:]
        last = done.stderr.strip().splitlines()[-1]
        assert last.startswith(f"error: MLflow tracking store {dead}: cannot connect"), done.stderr[-2000:]
        assert "HTTPConnectionPool" not in last and len(last) < 200
        assert ("Traceback" in done.stderr) == bool(verbose), done.stderr[-2000:]
