"""Checks before training: a poisoned batch is refused with a report naming the check, the
champion does not move and nothing is left RUNNING."""

from __future__ import annotations

import json
import random
import string
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline import data_checks
from pipeline.config import SAMPLE_ARCHIVE, DataConfig
from pipeline.data import read_reviews
from pipeline.reviews import RawDataset, Reviews


def _raw(train: list[tuple[str, int]], test: list[tuple[str, int]]) -> RawDataset:
    def reviews(rows):
        return Reviews([t for t, _ in rows], np.array([label for _, label in rows], dtype=np.int8))

    return RawDataset(reviews(train), reviews(test), "d" * 64, "test")


def _failed(raw: RawDataset, **options) -> dict[str, str]:
    failures = data_checks.verdict(data_checks.findings(raw), DataConfig(**options))
    return {f.finding.check: f.line() for f in failures}


def test_the_shipped_sample_passes_every_check():
    assert _failed(read_reviews(SAMPLE_ARCHIVE)) == {}


def test_each_check_names_what_it_found():
    words = [f"a fine review number {i} with words" for i in range(40)]
    good = [(text, i % 2) for i, text in enumerate(words)]
    test = [(f"another honest review {i}", i % 2) for i in range(20)]

    noise = [("".join(random.Random(i).choices(string.digits + "#$%&*", k=80)), i % 2) for i in range(10)]
    assert "not_mostly_letters" in _failed(_raw(good + noise, test))
    assert "exact_duplicate" in _failed(_raw(good + good[:10], test))
    assert "test_review_in_train" in _failed(_raw(good + test[:10], test))
    skewed = _failed(_raw([(t, 1) for t, _ in good] + [("one bad one", 0)], test))
    assert "positive_share" in skewed and "train: 0.976 (allowed 0.1-0.9" in skewed["positive_share"]
    assert "reviews_per_class" in _failed(_raw(good, test), check_min_per_class=30)
    assert _failed(_raw(good + good[:10], test), checks=False) == {}


# --- through `sentiment run`, on a store with a champion ----------------------------------------

TINY = ["--limit", "300", "--vocab-size", "500", "--max-len", "60", "--trials", "2", "--search-epochs", "1"]
TINY += ["--epochs", "1", "--workers", "1", "--text-column", "body", "--label-column", "positive"]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A store whose champion was trained on the sample's reviews, as a CSV."""
    root = tmp_path_factory.mktemp("checks")
    raw = read_reviews(SAMPLE_ARCHIVE)
    rows = pd.concat(
        pd.DataFrame({"body": r.texts, "positive": r.labels.astype(int), "split": name})
        for name, r in (("train", raw.train), ("test", raw.test))
    )
    rows.to_csv(root / "reviews.csv", index=False)
    done = _run(root, root / "reviews.csv")
    assert done.returncode == 0, done.stderr[-3000:]
    return root, rows


def _run(root: Path, data: Path) -> subprocess.CompletedProcess:
    command = [str(Path(sys.executable).parent / "sentiment"), "run", "--data", str(data), *TINY, "--split-column", "split"]
    command += ["--tracking-uri", f"sqlite:///{root / 'mlruns' / 'mlflow.db'}", "--storage", f"sqlite:///{root / 'optuna.db'}"]
    command += ["--model-name", "checked-model", "--experiment-name", "checked"]
    return subprocess.run(command, capture_output=True, text=True, timeout=600)


def _poison(rows: pd.DataFrame, kind: str) -> pd.DataFrame:
    train, test = rows[rows.split == "train"], rows[rows.split == "test"]
    if kind == "binary noise":
        noise = ["".join(random.Random(i).choices(string.printable[62:94], k=300)) for i in range(len(train) // 2)]
        return pd.concat([rows, pd.DataFrame({"body": noise, "positive": 1, "split": "train"})])
    if kind == "half of it the test reviews":
        return pd.concat([rows, test.assign(split="train")])
    positives = train[train.positive == 1]  # a batch of one label: 12 reworded copies of the positives
    return pd.concat([rows, *(positives.assign(body=positives.body + f" (again {k})") for k in range(12))])


@pytest.mark.integration
@pytest.mark.parametrize(
    ("kind", "check"),
    [
        ("binary noise", "not_mostly_letters"),
        ("half of it the test reviews", "test_review_in_train"),
        ("all one label", "positive_share"),
    ],
)
def test_a_poisoned_batch_is_refused_before_training_and_the_champion_stays(store, kind, check, tmp_path):
    from mlflow import MlflowClient

    root, rows = store
    _poison(rows, kind).to_csv(tmp_path / "poisoned.csv", index=False)
    client = MlflowClient(f"sqlite:///{root / 'mlruns' / 'mlflow.db'}")
    before = {v.version for v in client.search_model_versions("name = 'checked-model'")}

    done = _run(root, tmp_path / "poisoned.csv")

    assert done.returncode == 1
    line = done.stderr.strip().splitlines()[-1]
    assert line.startswith("error: the reviews failed") and f"{check} in " in line, done.stderr[-2000:]
    experiment = client.get_experiment_by_name("checked").experiment_id
    refused = client.search_runs([experiment], "tags.stage = 'pipeline'", order_by=["attributes.start_time DESC"])[0]
    assert refused.info.status == "FAILED" and check in refused.data.tags["failure_reason"]
    assert refused.data.tags["mlflow.note.content"].startswith("**Refused before training.**")
    report = json.loads(Path(client.download_artifacts(refused.info.run_id, "data/checks.json", str(tmp_path))).read_text())
    assert any(check in failed for failed in report["failed"])
    assert not client.search_runs([experiment], f"tags.mlflow.parentRunId = '{refused.info.run_id}'")  # no trial
    assert not client.search_runs([experiment], "attributes.status = 'RUNNING'")
    assert {v.version for v in client.search_model_versions("name = 'checked-model'")} == before
    assert str(client.get_model_version_by_alias("checked-model", "champion").version) == "1"
