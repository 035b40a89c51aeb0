"""A password in a store URI reaches no run, tag, description, artifact, Prefect record, log line,
error message, compiled pipeline or ``config show``: everywhere it is shown as ``***``.

The end-to-end test runs the pipeline, a study and a worker against a private PostgreSQL whose
role has a password (the tracking store and the Optuna study both on it), then reads every byte
the run left behind: both databases dumped whole, every artifact file, Prefect's database, the
log files and every line the commands printed.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.config import SAMPLE_ARCHIVE, build_config
from pipeline.secrets import RedactingFormatter, redact
from pipeline.stores import StoreError, password_environment, resolve

PASSWORD = "Pw-5ecr3t-Zq8"
SENTIMENT = str(Path(sys.executable).parent / "sentiment")


def test_redact_hides_the_password_of_every_uri_and_keeps_the_rest():
    assert redact(f"postgresql://sentiment:{PASSWORD}@db:5432/optuna") == "postgresql://sentiment:***@db:5432/optuna"
    assert redact(f"postgresql+psycopg2://u:p@ss{PASSWORD}@db/x") == "postgresql+psycopg2://u:***@db/x"
    assert redact(f"https://bot:{PASSWORD}@mlflow.example") == "https://bot:***@mlflow.example"
    assert redact(f"postgresql://db/x?sslmode=require&password={PASSWORD}") == "postgresql://db/x?sslmode=require&password=***"
    line = f"error: store postgresql://a:{PASSWORD}@h/d and http://b:{PASSWORD}@h: cannot connect"
    assert PASSWORD not in redact(line) and redact(line).count("***") == 2
    for kept in ("sqlite:////repo/mlruns/mlflow.db", "postgresql://postgres@127.0.0.1:5432/optuna", "http://mlflow:5000"):
        assert redact(kept) == kept


def test_the_config_keeps_the_password_in_memory_and_never_serialises_it():
    uri = f"postgresql://sentiment:{PASSWORD}@db/optuna"
    cfg = build_config({"search.storage": uri, "tracking.tracking_uri": f"http://bot:{PASSWORD}@mlflow"})
    assert cfg.search.storage == uri  # what the stores connect with
    for serialised in (json.dumps(cfg.flat_params()), cfg.model_dump_json(), str(cfg.model_dump(mode="json"))):
        assert PASSWORD not in serialised and "sentiment:***@db" in serialised


def test_a_redacted_uri_is_completed_from_the_environment_or_refused_naming_the_variable(monkeypatch):
    """A deployment's or work pool's parameters hold the URI redacted; the process running them
    has the real one in its environment."""
    uri = f"postgresql://sentiment:{PASSWORD}@127.0.0.1:1/optuna"
    redacted = build_config({"search.storage": uri}).flat_params()["search.storage"]
    cfg = build_config({"search.storage": redacted, "tracking.tracking_uri": "http://127.0.0.1:1"})
    monkeypatch.delenv("SENTIMENT_SEARCH_STORAGE", raising=False)
    with pytest.raises(StoreError, match="SENTIMENT_SEARCH_STORAGE") as refused:
        resolve(cfg)
    assert "sentiment:***@" in str(refused.value)
    monkeypatch.setenv("SENTIMENT_SEARCH_STORAGE", uri)
    assert resolve(cfg).study_storage == uri
    assert password_environment(build_config({"search.storage": uri})) == {"SENTIMENT_SEARCH_STORAGE": uri}


def test_store_errors_and_log_lines_name_the_store_without_its_password():
    error = StoreError(f"Optuna study storage postgresql://u:{PASSWORD}@h/db: cannot connect")
    assert PASSWORD not in str(error)
    record = logging.LogRecord("x", logging.ERROR, __file__, 1, "connecting to %s", (f"http://u:{PASSWORD}@h",), None)
    try:
        raise RuntimeError(f"boom at postgresql://u:{PASSWORD}@h/db")
    except RuntimeError:
        record.exc_info = sys.exc_info()
    formatted = RedactingFormatter(logging.Formatter("%(message)s")).format(record)
    assert PASSWORD not in formatted and formatted.count("***") >= 2


# --- end to end: every store and output of real commands -----------------------------------------


@pytest.fixture
def secret_stores(postgres, tmp_path):
    """A role with a password owning two fresh databases (MLflow's and Optuna's) on the private
    cluster, and the URIs that carry it."""
    import psycopg2

    admin = psycopg2.connect(host="127.0.0.1", port=postgres.port, user="postgres", dbname="postgres")
    admin.autocommit = True
    with admin.cursor() as cursor:
        cursor.execute("SELECT 1 FROM pg_roles WHERE rolname = 'secretive'")
        if cursor.fetchone() is None:
            cursor.execute(f"CREATE ROLE secretive LOGIN PASSWORD '{PASSWORD}'")
        for database in ("secret_mlflow", "secret_optuna"):
            cursor.execute(f"DROP DATABASE IF EXISTS {database}")
            cursor.execute(f"CREATE DATABASE {database} OWNER secretive")
    admin.close()
    base = f"postgresql://secretive:{PASSWORD}@127.0.0.1:{postgres.port}"
    return {"tracking": f"{base}/secret_mlflow", "storage": f"{base}/secret_optuna", "postgres": postgres}


def _dump(postgres, database: str) -> str:
    done = subprocess.run(
        [str(postgres.bin_dir / "pg_dump"), "-h", "127.0.0.1", "-p", str(postgres.port), "-U", "postgres", database],
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    return done.stdout


def _files_holding(root: Path, secret: str) -> list[str]:
    return [str(path) for path in root.rglob("*") if path.is_file() and secret.encode() in path.read_bytes()]


@pytest.mark.integration
@pytest.mark.slow
def test_a_password_in_the_store_uris_appears_nowhere_the_pipeline_and_a_worker_write(secret_stores, tmp_path):
    home, artifacts = tmp_path / "home", tmp_path / "artifacts"
    env = {
        **os.environ,
        "SENTIMENT_HOME": str(home),  # the log file and caches: read below
        "PREFECT_HOME": str(tmp_path / "prefect"),  # the CLI's temporary Prefect API keeps its database here
        "MLFLOW_TRACKING_URI": secret_stores["tracking"],
        "SENTIMENT_TRACKING_ARTIFACT_ROOT": artifacts.as_uri(),
        "SENTIMENT_DATA_PATH": str(SAMPLE_ARCHIVE),
        "SENTIMENT_DATA_LIMIT": "120",
        "SENTIMENT_DATA_MAX_LEN": "60",
        "SENTIMENT_DATA_VOCAB_SIZE": "500",
        "SENTIMENT_SEARCH_EPOCHS": "1",
        "SENTIMENT_TRAIN_EPOCHS": "1",
        "SENTIMENT_SEARCH_CELLS": '["gru"]',
    }
    storage = ["--storage", secret_stores["storage"]]  # as an option here, from the environment below
    outputs = []

    def sentiment(*args: str, expect: int = 0, extra: dict[str, str] | None = None) -> str:
        done = subprocess.run([SENTIMENT, *args], env=env | (extra or {}), capture_output=True, text=True, timeout=600)
        outputs.append(done.stdout + done.stderr)
        assert done.returncode == expect, done.stderr[-3000:]
        return done.stdout

    sentiment("run", *storage, "--trials", "2", "--study-name", "secret-run", "--verbose")
    worker_env = {"SENTIMENT_SEARCH_STORAGE": secret_stores["storage"]}
    sentiment("study", "create", "--study-name", "secret-workers", "--trials", "1", extra=worker_env)
    sentiment("worker", "--study-name", "secret-workers", "--verbose", extra=worker_env)
    sentiment("worker", "--study-name", "no-such-study", expect=2, extra=worker_env)  # an error names the store
    shown = sentiment("config", "show", *storage)
    compiled = tmp_path / "pipeline.yaml"
    sentiment("kubeflow", "compile", "-o", str(compiled), extra=worker_env)

    assert "secretive:***@" in shown and "secretive:***@" in outputs[3]
    postgres = secret_stores["postgres"]
    mlflow_dump = _dump(postgres, "secret_mlflow")
    assert "secret-run" in mlflow_dump and "where.search.storage" in mlflow_dump  # the dump holds the runs
    for what, text in {
        "MLflow's database (params, tags, descriptions, model cards)": mlflow_dump,
        "Optuna's database": _dump(postgres, "secret_optuna"),
        "the commands' output": "\n".join(outputs),
        "the compiled pipeline": compiled.read_text(),
    }.items():
        assert PASSWORD not in text, f"the password is in {what}"
    assert list(artifacts.rglob("*.png")), "no artifacts were written: nothing was searched"
    assert (tmp_path / "prefect").is_dir() and (home / ".cache" / "logs" / "sentiment.log").is_file()
    for folder in (artifacts, tmp_path / "prefect", home):
        assert _files_holding(folder, PASSWORD) == [], f"the password is in files under {folder}"
