"""Records of CSV, JSONL and Parquet files: the one place that knows these formats, for batch
scoring (``predict``) and for labelled reviews to train on (``review_tables``).

CSV and JSONL are read line by line (a record remembers its ``_line``), Parquet in batches, so a
file of any size streams. Bytes that are not UTF-8, a broken CSV quote or a JSONL line that is no
object raise ``TableError`` naming the line.
"""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

FORMATS = ("csv", "jsonl", "parquet")
SUFFIXES = (".csv", ".jsonl", ".ndjson", ".json", ".parquet", ".pq")
Record = dict[str, Any]


class TableError(ValueError):
    """A file that is not the table its extension says; the message names the line."""


def file_format(path: Path) -> str:
    """``csv``, ``jsonl`` or ``parquet`` from the extension (``.json``/``.ndjson`` read as JSONL)."""
    suffix = path.suffix.lower().lstrip(".")
    fmt = {"json": "jsonl", "ndjson": "jsonl", "pq": "parquet"}.get(suffix, suffix)
    if fmt not in FORMATS:
        raise TableError(f"{path}: unknown format '.{suffix}' (use .csv, .jsonl or .parquet)")
    return fmt


def lines(stream: IO[bytes], start: int = 1) -> Iterator[tuple[int, str]]:
    for number, raw in enumerate(stream, start):
        try:
            yield number, raw.decode("utf-8")
        except UnicodeDecodeError as error:
            raise TableError(
                f"line {number}: not valid UTF-8 ({error.reason} at byte {error.start})"
            ) from None


def read_csv(stream: IO[bytes]) -> Iterator[Record]:
    numbered = lines(stream)
    current = {"line": 0}

    def text_lines() -> Iterator[str]:
        for number, line in numbered:
            current["line"] = number
            yield line

    # A review may be far longer than csv's default 128 KiB field limit.
    csv.field_size_limit(sys.maxsize)
    reader = csv.DictReader(text_lines())
    try:
        for record in reader:
            record["_line"] = current["line"]
            yield record
    except csv.Error as error:
        raise TableError(f"line {current['line']}: not valid CSV ({error})") from None


def read_jsonl(stream: IO[bytes]) -> Iterator[Record]:
    for number, line in lines(stream):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise TableError(f"line {number}: not valid JSON ({error.msg})") from None
        if not isinstance(record, dict):
            raise TableError(f"line {number}: expected a JSON object, got {type(record).__name__}")
        yield {**record, "_line": number}


def read_parquet(path: Path, batch_size: int) -> Iterator[Record]:
    import pyarrow.parquet as pq

    for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_size):
        yield from batch.to_pylist()


def file_records(source: Path, batch_size: int = 10_000) -> Iterator[Record]:
    """The records of one CSV, JSONL or Parquet file (its format from its extension)."""
    if not source.exists():
        raise TableError(f"input not found: {source}")
    fmt = file_format(source)
    if fmt == "parquet":
        yield from read_parquet(source, batch_size)
        return
    with source.open("rb") as stream:
        yield from (read_csv if fmt == "csv" else read_jsonl)(stream)
