"""Labelled reviews from tables (CSV, JSONL, Parquet; a file, a folder, a glob): the same rows in
any format are the same data, and a wrong column or label is named in seconds."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline.config import SAMPLE_ARCHIVE, DataConfig
from pipeline.data import DataError, check_source, prepare, read_reviews

OPTIONS = {"vocab_size": 500, "max_len": 60, "cache_dir": None}


@pytest.fixture(scope="module")
def sample_rows() -> pd.DataFrame:
    """The shipped sample's 3,000 reviews as rows (text, label, split), in a shuffled order."""
    raw = read_reviews(SAMPLE_ARCHIVE)
    frames = [
        pd.DataFrame({"body": split.texts, "stars_positive": split.labels.astype(int), "part": name})
        for name, split in (("train", raw.train), ("test", raw.test))
    ]
    return pd.concat(frames).sample(frac=1.0, random_state=7).reset_index(drop=True)


def _same(a, b) -> None:
    assert a.digest == b.digest
    assert a.vocabulary == b.vocabulary
    for split in ("train", "val", "test"):
        assert np.array_equal(getattr(a, split).x, getattr(b, split).x), split
        assert np.array_equal(getattr(a, split).y, getattr(b, split).y), split


def test_the_sample_as_parquet_csv_files_and_jsonl_is_the_archive_to_the_last_token(sample_rows, tmp_path):
    archive = prepare(DataConfig(path=SAMPLE_ARCHIVE, **OPTIONS))
    columns = {"text_column": "body", "label_column": "stars_positive", "split_column": "part"}

    sample_rows.to_parquet(tmp_path / "reviews.parquet")
    drops = tmp_path / "drops"
    drops.mkdir()
    for number, start in enumerate(range(0, len(sample_rows), 1000)):  # a folder of CSV drops
        sample_rows.iloc[start : start + 1000].to_csv(drops / f"drop-{number}.csv", index=False)
    sample_rows.iloc[::-1].to_json(tmp_path / "reviews.jsonl", orient="records", lines=True)

    for source in (tmp_path / "reviews.parquet", drops, tmp_path / "drops" / "*.csv", tmp_path / "reviews.jsonl"):
        _same(prepare(DataConfig(path=source, **columns, **OPTIONS)), archive)


def test_without_a_split_column_the_test_split_does_not_depend_on_row_order(sample_rows, tmp_path):
    rows = sample_rows.drop(columns="part").rename(columns={"body": "text", "stars_positive": "label"})
    rows.to_csv(tmp_path / "a.csv", index=False)
    rows.sample(frac=1.0, random_state=1).to_parquet(tmp_path / "b.parquet")

    first = prepare(DataConfig(path=tmp_path / "a.csv", **OPTIONS))
    second = prepare(DataConfig(path=tmp_path / "b.parquet", **OPTIONS))
    _same(first, second)
    assert len(first.test) == pytest.approx(0.2 * len(rows), abs=1)
    assert first.test.y.mean() == pytest.approx(rows["label"].mean(), abs=0.01)  # stratified


def test_labels_by_name_and_by_the_configs_values(tmp_path):
    words = ["great fun", "dull", "loved it", "awful"] * 10
    named = pd.DataFrame({"text": words, "label": ["Positive", "NEG", "true", "False"] * 10})
    named.to_csv(tmp_path / "named.csv", index=False)
    stars = pd.DataFrame({"text": words, "label": [5, 1, 4, 2] * 10})
    stars.to_parquet(tmp_path / "stars.parquet")

    by_name = prepare(DataConfig(path=tmp_path / "named.csv", **OPTIONS))
    by_value = prepare(
        DataConfig(path=tmp_path / "stars.parquet", positive_labels=("4", "5"), negative_labels=("1", "2"), **OPTIONS)
    )
    assert by_name.digest == by_value.digest  # the same reviews with the same meaning


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"text_column": "review"}, "no column 'review' (data.text_column); its columns: text, label"),
        ({"label_column": "stars"}, "no column 'stars' (data.label_column)"),
        ({"split_column": "part"}, "no column 'part' (data.split_column)"),
    ],
)
def test_a_wrong_column_is_named_by_the_source_check_before_any_reading(tmp_path, options, named):
    pd.DataFrame({"text": ["good", "bad"], "label": [1, 0]}).to_json(tmp_path / "r.jsonl", orient="records", lines=True)
    with pytest.raises(DataError) as error:
        check_source(DataConfig(path=tmp_path / "r.jsonl", **options, **OPTIONS))
    assert str(error.value).startswith(f"{tmp_path / 'r.jsonl'}: {named}")


def test_an_unknown_label_or_split_names_the_file_row_and_setting(tmp_path):
    rows = pd.DataFrame({"text": ["good", "bad", "meh"], "label": ["pos", "neg", "3 stars"], "part": ["train"] * 3})
    rows.to_csv(tmp_path / "r.csv", index=False)
    with pytest.raises(DataError, match=r"r\.csv row 3 \(line 4\): label '3 stars' in 'label' \(data\.label_column\)"):
        prepare(DataConfig(path=tmp_path / "r.csv", **OPTIONS))
    rows.assign(label=["pos", "neg", "pos"], part=["train", "test", "validation"]).to_csv(tmp_path / "r.csv", index=False)
    with pytest.raises(DataError, match=r"row 3 .*'part' \(data\.split_column\) is 'validation', not train or test"):
        prepare(DataConfig(path=tmp_path / "r.csv", split_column="part", **OPTIONS))


def test_sentiment_run_on_a_table_with_a_wrong_column_fails_in_seconds_and_leaves_no_run(sample_rows, tmp_path):
    sample_rows.to_parquet(tmp_path / "reviews.parquet")
    store = tmp_path / "mlruns"
    command = [str(Path(sys.executable).parent / "sentiment"), "run", "--data", str(tmp_path / "reviews.parquet")]
    command += ["--text-column", "text", "--label-column", "stars_positive"]
    command += ["--tracking-uri", f"sqlite:///{store / 'mlflow.db'}", "--storage", f"sqlite:///{store / 'optuna.db'}"]
    started = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert time.monotonic() - started < 20
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert lines[-1].startswith("error: ") and "no column 'text' (data.text_column)" in lines[-1], done.stderr
    assert "body" in lines[-1]  # the columns it has
    if (store / "mlflow.db").exists():
        from mlflow import MlflowClient

        client = MlflowClient(f"sqlite:///{store / 'mlflow.db'}")
        experiments = client.search_experiments()
        assert not client.search_runs([e.experiment_id for e in experiments]), "a run was left behind"


def test_a_snapshot_of_the_sample_in_jsonl_reads_back_as_the_same_reviews(sample_rows, tmp_path):
    """JSONL written by hand (not pandas): one object per line, labels as words."""
    with (tmp_path / "r.jsonl").open("w") as out:
        for row in sample_rows.itertuples():
            label = "positive" if row.stars_positive else "negative"
            out.write(json.dumps({"text": row.body, "label": label, "split": row.part}) + "\n")
    table = prepare(DataConfig(path=tmp_path / "r.jsonl", split_column="split", **OPTIONS))
    _same(table, prepare(DataConfig(path=SAMPLE_ARCHIVE, **OPTIONS)))


# --- a database table as the source ------------------------------------------------------------


def _to_table(rows: pd.DataFrame, url: str, table: str = "reviews") -> None:
    import sqlalchemy as sa

    engine = sa.create_engine(url)
    try:
        rows.to_sql(table, engine, if_exists="replace", index=False, chunksize=1000)
    finally:
        engine.dispose()


COLUMNS = {"text_column": "body", "label_column": "stars_positive", "split_column": "part"}


def test_a_sqlite_table_or_query_is_the_archive_to_the_last_token(sample_rows, tmp_path):
    url = f"sqlite:///{tmp_path / 'reviews.db'}"
    _to_table(sample_rows, url)
    archive = prepare(DataConfig(path=SAMPLE_ARCHIVE, **OPTIONS))
    _same(prepare(DataConfig(path=url, query="reviews", **COLUMNS, **OPTIONS)), archive)
    query = "SELECT body, stars_positive, part FROM reviews ORDER BY random()"
    _same(prepare(DataConfig(path=url, query=query, **COLUMNS, **OPTIONS)), archive)


@pytest.mark.integration
def test_a_postgresql_table_is_the_archive_to_the_last_token(sample_rows, postgres):
    url = postgres.url("reviews_source")
    _to_table(sample_rows, url)
    table = prepare(DataConfig(path=url, query="reviews", **COLUMNS, **OPTIONS))
    _same(table, prepare(DataConfig(path=SAMPLE_ARCHIVE, **OPTIONS)))
    assert "***" not in table.source and table.source.endswith("(reviews)")


def test_an_unreachable_database_or_a_missing_table_is_named_in_seconds_without_its_password(tmp_path):
    from services import free_port

    url = f"postgresql://reader:s3cret@127.0.0.1:{free_port()}/reviews"
    started = time.monotonic()
    with pytest.raises(DataError) as error:
        check_source(DataConfig(path=url, query="reviews", **OPTIONS))
    assert time.monotonic() - started < 10
    message = str(error.value)
    assert "s3cret" not in message and "postgresql://reader:***@127.0.0.1" in message
    assert "(data.path, data.query)" in message and "\n" not in message

    sqlite = f"sqlite:///{tmp_path / 'empty.db'}"
    with pytest.raises(DataError, match=r"no such table: reviews \(data.path, data.query\)"):
        check_source(DataConfig(path=sqlite, query="reviews", **OPTIONS))
    with pytest.raises(DataError, match="needs data.query"):
        check_source(DataConfig(path=sqlite, **OPTIONS))


@pytest.mark.integration
def test_sentiment_run_trains_and_registers_from_a_postgresql_table(sample_rows, postgres, tmp_path):
    """The README's command on a database: `--data postgresql://… --query …`, end to end."""
    from mlflow import MlflowClient

    url = postgres.url("reviews_run")
    _to_table(sample_rows, url, table="labelled")
    store = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    command = [str(Path(sys.executable).parent / "sentiment"), "run", "--data", url, "--query", "labelled"]
    command += ["--text-column", "body", "--label-column", "stars_positive", "--split-column", "part"]
    command += ["--limit", "300", "--vocab-size", "500", "--max-len", "60", "--trials", "2", "--search-epochs", "1"]
    command += ["--epochs", "1", "--workers", "1", "--tracking-uri", store, "--storage", f"sqlite:///{tmp_path / 'optuna.db'}"]
    command += ["--model-name", "table-model", "--json"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout)
    client = MlflowClient(store)
    run = client.get_run(summary["run_id"])
    dataset = run.inputs.dataset_inputs[0].dataset
    assert dataset.name == "reviews" and url.split("@")[1] + " (labelled)" in dataset.source
    assert client.get_model_version_by_alias("table-model", "champion")
