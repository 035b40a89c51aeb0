"""Labelled reviews from tables: a CSV, JSONL or Parquet file, a folder of them, a glob, or a
database table or query (a SQLAlchemy URL as ``data.path`` with ``data.query``), read in chunks.

A team's own reviews (support tickets, app-store reviews with a thumbs up or down) rarely come in
aclImdb's one-file-per-review layout. Here a row is a review: ``data.text_column`` holds its text,
``data.label_column`` its label (0/1, neg/pos, negative/positive, false/true, or the values the
config names), and ``data.split_column``, when given, says train or test; without it a stratified,
seeded ``data.test_fraction`` of the rows is the test split.

Rows are put in one canonical order (by label, then text) before anything is split, so the same
rows give the same splits, arrays and digest in any format or file order (``data.content_digest``).
"""

from __future__ import annotations

import glob
import math
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.config import DataConfig
from pipeline.reviews import (
    SPLITS,
    DataError,
    RawDataset,
    Reviews,
    allow_few_empty,
    content_digest,
    require_both_classes,
)
from pipeline.secrets import redact
from pipeline.tables import SUFFIXES, Record, TableError, file_records

BUILT_IN_LABELS = {
    "0": 0, "neg": 0, "negative": 0, "false": 0,
    "1": 1, "pos": 1, "positive": 1, "true": 1,
}  # fmt: skip


def table_files(path: Path) -> list[Path] | None:
    """The table files ``path`` names (a file, a folder of them, a glob), sorted; None when it is
    no table source (an aclImdb archive or folder)."""
    path = Path(path)
    if glob.has_magic(str(path)):
        return sorted(Path(p) for p in glob.glob(str(path)) if Path(p).suffix.lower() in SUFFIXES)
    if path.is_file():
        return [path] if path.suffix.lower() in SUFFIXES else None
    if path.is_dir() and not any((path / name).is_dir() for name in ("aclImdb", *SPLITS)):
        found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in SUFFIXES)
        return found or None
    return None


def is_database(path: Path | str) -> bool:
    """Whether ``data.path`` is a database's SQLAlchemy URL rather than a path."""
    return isinstance(path, str) and "://" in path


def check_columns(files: list[Path], cfg: DataConfig, source: Path) -> None:
    """Every file exists and has the configured columns: read from its first record, in seconds."""
    if not files:
        raise DataError(f"{source}: no CSV, JSONL or Parquet file there")
    for file in files:
        first = next(_records(file), None)
        if first is None:
            raise DataError(f"{file}: no rows")
        _require_columns(first, file, cfg)


def check_database(cfg: DataConfig) -> None:
    """The database answers and the query's first row has the configured columns, in seconds."""
    name = _database_name(cfg)
    first = next(_database_records(cfg, limit=1), None)
    if first is None:
        raise DataError(f"{name}: no rows")
    _require_columns(first, name, cfg)


def read_database(cfg: DataConfig) -> RawDataset:
    """The labelled reviews of ``data.query`` in the database ``data.path``, read in chunks."""
    check_database(cfg)
    name = _database_name(cfg)
    return _read(cfg, [(name, lambda: _database_records(cfg))], name)


def read_tables(files: list[Path], cfg: DataConfig, source: Path) -> RawDataset:
    """The labelled reviews of ``files``. Raises DataError naming the file, row and setting."""
    check_columns(files, cfg, source)
    return _read(cfg, [(str(file), lambda file=file: _records(file)) for file in files], str(source))


def _read(cfg: DataConfig, parts, source: str) -> RawDataset:
    labels = _label_map(cfg)
    rows: list[tuple[str | None, int, str]] = []
    empty: list[str] = []
    for part, records in parts:
        for number, record in enumerate(records(), 1):
            where = f"{part} row {number}" + (f" (line {record['_line']})" if "_line" in record else "")
            text = record.get(cfg.text_column)
            if _missing(text) or (isinstance(text, str) and not text.strip()):
                empty.append(where)
                continue
            if not isinstance(text, str):
                raise DataError(f"{where}: '{cfg.text_column}' (data.text_column) holds a {type(text).__name__}, not text")
            rows.append((_split_of(record, cfg, where), _label_of(record, cfg, labels, where), text))
    allow_few_empty(empty, len(rows), source, "table")
    splits = _splits(rows, cfg, source)
    for split in SPLITS:
        require_both_classes(splits[split].labels, source, split)
    return RawDataset(splits["train"], splits["test"], content_digest(splits), str(source), tuple(empty))


def _records(file: Path):
    try:
        yield from file_records(file)
    except TableError as error:
        raise DataError(f"{file}: {error}") from None
    except (OSError, ValueError) as error:  # pyarrow's ArrowInvalid is a ValueError
        raise DataError(f"{file}: cannot be read ({error})") from None


def _database_name(cfg: DataConfig) -> str:
    """The source as messages and runs name it: the URL without its password, and the query."""
    if not cfg.query:
        raise DataError(f"{redact(str(cfg.path))}: a database source needs data.query (--query): a table or a SELECT")
    return f"{redact(str(cfg.path))} ({cfg.query.strip()})"


def _database_records(cfg: DataConfig, limit: int | None = None, chunk: int = 10_000) -> Iterator[Record]:
    """The query's rows as records, ``chunk`` at a time (a server-side cursor where the driver has one)."""
    import pandas as pd
    import sqlalchemy as sa
    from sqlalchemy.exc import SQLAlchemyError

    query = cfg.query.strip().rstrip(";")
    if not re.match(r"(?is)^\s*(select|with)\b", query):
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?", query):
            raise DataError(f"data.query {query!r}: neither a table name nor a SELECT")
        query = f"SELECT * FROM {query}"
    if limit is not None:
        query = f"SELECT * FROM ({query}) AS reviews LIMIT {int(limit)}"
    name = _database_name(cfg)
    url = str(cfg.path)
    options = {"connect_args": {"connect_timeout": 10}} if url.startswith("postgresql") else {}
    try:
        engine = sa.create_engine(url, **options)
    except (SQLAlchemyError, ValueError, ImportError) as error:
        raise DataError(f"{redact(url)}: not a database URL SQLAlchemy can open (data.path): {error}") from None
    try:
        with engine.connect().execution_options(stream_results=True) as connection:
            for frame in pd.read_sql_query(sa.text(query), connection, chunksize=chunk):
                yield from frame.to_dict("records")
    except (SQLAlchemyError, pd.errors.DatabaseError) as error:
        cause = error.__cause__ if isinstance(error, pd.errors.DatabaseError) and error.__cause__ else error
        reason = redact(str(getattr(cause, "orig", None) or cause).strip().splitlines()[0])
        raise DataError(f"{name}: {reason} (data.path, data.query)") from None
    finally:
        engine.dispose()


def _require_columns(record: Record, file: Path | str, cfg: DataConfig) -> None:
    columns = [key for key in record if key != "_line"]
    wanted = [("data.text_column", cfg.text_column), ("data.label_column", cfg.label_column)]
    wanted += [("data.split_column", cfg.split_column)] if cfg.split_column else []
    for setting, column in wanted:
        if column not in record:
            raise DataError(f"{file}: no column '{column}' ({setting}); its columns: {', '.join(columns)}")


def _label_map(cfg: DataConfig) -> dict[str, int]:
    """The built-in names, with the config's values over them (stars "1" negative, "5" positive)."""
    return BUILT_IN_LABELS | {_key(v): 1 for v in cfg.positive_labels} | {_key(v): 0 for v in cfg.negative_labels}


def _key(value: Any) -> str:
    """A label as compared: ``True`` and "TRUE" and "true" alike, 1.0 as "1"."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value).strip().lower()


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _label_of(record: Record, cfg: DataConfig, labels: dict[str, int], where: str) -> int:
    value = record.get(cfg.label_column)
    label = None if _missing(value) else labels.get(_key(value))
    if label is None:
        known = "/".join(sorted(labels))
        raise DataError(
            f"{where}: label {value!r} in '{cfg.label_column}' (data.label_column) is none of {known}; "
            "name yours with data.positive_labels and data.negative_labels"
        )
    return label


def _split_of(record: Record, cfg: DataConfig, where: str) -> str | None:
    if not cfg.split_column:
        return None
    value = record.get(cfg.split_column)
    split = None if _missing(value) else str(value).strip().lower()
    if split not in SPLITS:
        raise DataError(f"{where}: '{cfg.split_column}' (data.split_column) is {value!r}, not train or test")
    return split


def _splits(rows: list[tuple[str | None, int, str]], cfg: DataConfig, source: Path) -> dict[str, Reviews]:
    """Train and test, each in canonical order (label, text). Without a split column the test
    split is drawn from the rows in that order, so it does not depend on the files' order."""
    if cfg.split_column:
        grouped = {split: [(label, text) for s, label, text in rows if s == split] for split in SPLITS}
    else:
        from sklearn.model_selection import train_test_split

        ordered = sorted((label, text) for _, label, text in rows)
        labels = [label for label, _ in ordered]
        try:
            train_idx, test_idx = train_test_split(
                np.arange(len(ordered)), test_size=cfg.test_fraction, stratify=labels, random_state=cfg.seed
            )
        except ValueError as error:
            raise DataError(f"{source}: cannot hold out data.test_fraction {cfg.test_fraction} for testing: {error}") from None
        grouped = {"train": [ordered[i] for i in train_idx], "test": [ordered[i] for i in test_idx]}
    splits = {}
    for split, pairs in grouped.items():
        if not pairs:
            raise DataError(f"{source}: no {split} rows ('{cfg.split_column}', data.split_column)")
        pairs.sort()
        splits[split] = Reviews([text for _, text in pairs], np.array([label for label, _ in pairs], dtype=np.int8))
    return splits
