"""Batch scoring: stream reviews from a CSV/JSONL/Parquet file or stdin lines through a model.

Records are read and scored ``batch_size`` at a time, so a file of any size needs memory for one
batch. Each output record is the input record plus ``probability`` and ``label``. Input the model
cannot score (bytes that are not UTF-8, a missing text column, a missing or non-string review)
raises ``InputError`` naming the row (1-based, header excluded) and line where one applies.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import IO

import pandas as pd

from pipeline.serve import InputError, is_missing, load_scorer
from pipeline.stores import Stores
from pipeline.tables import Record, TableError, file_format, file_records, lines

log = logging.getLogger(__name__)

Scorer = Callable[[Sequence[str]], pd.DataFrame]


def model_folder(stores: Stores, model_uri: str) -> str:
    """A local folder holding the model at ``model_uri`` (``Stores.download_model``), the tracking
    store checked first: a dead or unwritable one raises StoreError in the one line ``run`` gives
    (``MLflow tracking store …: cannot connect (…)``), not MLflow's urllib3 retry text.

    Raises MlflowException when the model does not exist.
    """
    if not Path(model_uri).exists():
        stores.check(study=False)
    return stores.download_model(model_uri)


def scorer_for(stores: Stores, model_uri: str) -> Scorer:
    """``score(texts) → DataFrame(probability, label)`` of the model at ``model_uri`` in ``stores``.

    Raises StoreError when the tracking store cannot be reached, MlflowException when the model
    cannot be found or loaded.
    """
    return load_scorer(model_folder(stores, model_uri))


def _format(path: Path) -> str:
    try:
        return file_format(path)
    except TableError as error:
        raise InputError(str(error)) from None


def read_stdin_lines(stream: IO[bytes], text_column: str) -> Iterator[Record]:
    """One review per line (the trailing newline removed); the line's text goes in ``text_column``."""
    for number, line in lines(stream):
        yield {text_column: line.rstrip("\r\n"), "_line": number}


def records(source: Path | None, text_column: str, batch_size: int, stdin: IO[bytes]) -> Iterator[Record]:
    """The input records of a file, or of stdin lines when ``source`` is None."""
    if source is None:
        yield from read_stdin_lines(stdin, text_column)
        return
    try:
        yield from file_records(source, batch_size)
    except TableError as error:
        raise InputError(str(error)) from None


def review_of(record: Record, row: int, text_column: str) -> str:
    """The record's review text; InputError naming the row (and line) when absent or not a string."""
    where = f"row {row}" + (f" (line {record['_line']})" if "_line" in record else "")
    if text_column not in record:
        columns = [key for key in record if key != "_line"]
        raise InputError(f"{where}: no '{text_column}' column (columns: {columns}); see --text-column")
    value = record[text_column]
    if is_missing(value):
        raise InputError(f"{where}: '{text_column}' is missing")
    if not isinstance(value, str):
        raise InputError(f"{where}: '{text_column}' must be a string, got {type(value).__name__}")
    return value


def batches(items: Iterable[Record], size: int) -> Iterator[list[Record]]:
    batch: list[Record] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def score_records(
    score: Scorer, items: Iterable[Record], text_column: str, batch_size: int
) -> Iterator[pd.DataFrame]:
    """Scored batches: the input columns plus ``probability`` and ``label``, in input order."""
    row = 0
    for batch in batches(items, batch_size):
        texts = [review_of(record, row + i + 1, text_column) for i, record in enumerate(batch)]
        row += len(batch)
        frame = pd.DataFrame([{k: v for k, v in record.items() if k != "_line"} for record in batch])
        scored = score(texts)
        frame["probability"] = scored["probability"].to_numpy()
        frame["label"] = scored["label"].to_numpy()
        yield frame


class Writer:
    """Appends scored batches to a CSV/JSONL/Parquet file, or CSV to a text stream."""

    def __init__(self, target: Path | None, stdout: IO[str]) -> None:
        self._fmt = "csv" if target is None else _format(target)
        self._target = target
        self._stream: IO[str] | None = stdout if target is None else None
        self._parquet = None
        self._header = True
        self.rows = 0

    def write(self, frame: pd.DataFrame) -> None:
        self.rows += len(frame)
        if self._fmt == "parquet":
            self._write_parquet(frame)
            return
        if self._stream is None:
            self._stream = self._target.open("w", encoding="utf-8", newline="")
        if self._fmt == "csv":
            frame.to_csv(self._stream, index=False, header=self._header)
        elif len(frame):
            text = frame.to_json(orient="records", lines=True, double_precision=15, force_ascii=False)
            self._stream.write(text if text.endswith("\n") else text + "\n")
        self._header = False

    def finish(self, text_column: str) -> None:
        """Close the output; with no record at all, still write it: a header-only file (CSV,
        Parquet) or an empty one (JSONL), so a pipeline reading it finds it."""
        if self.rows == 0:
            columns = {text_column: "object", "probability": "float64", "label": "object"}
            self.write(pd.DataFrame({name: pd.Series(dtype=dtype) for name, dtype in columns.items()}))
        self.close()

    def _write_parquet(self, frame: pd.DataFrame) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.Table.from_pandas(frame, preserve_index=False)
        if self._parquet is None:
            self._parquet = pq.ParquetWriter(self._target, table.schema)
        self._parquet.write_table(table.cast(self._parquet.schema))

    def close(self) -> None:
        if self._parquet is not None:
            self._parquet.close()
        if self._stream is not None and self._target is not None:
            self._stream.close()
        elif self._stream is not None:
            self._stream.flush()


def predict_file(
    load_scorer: Callable[[], Scorer],
    source: Path | None,
    target: Path | None,
    *,
    text_column: str = "text",
    batch_size: int = 256,
    stdin: IO[bytes] | None = None,
    stdout: IO[str] | None = None,
    progress: bool = True,
) -> int:
    """Score every record of ``source`` (lines of ``stdin``, default the process's, when None) into
    ``target`` (CSV on ``stdout`` when None; its folder is created).

    ``load_scorer`` is called once the input exists and both formats are known, so a typo costs no
    model load. Returns the number of reviews scored. Raises InputError naming a missing input, an
    unknown format or the first bad row; a partly written output file is removed.
    """
    from tqdm import tqdm

    if source is not None and not source.exists():
        raise InputError(f"input not found: {source}")
    writer = Writer(target, stdout or sys.stdout)  # checks the output's format
    if source is not None:
        _format(source)
    if target is not None:
        target.parent.mkdir(parents=True, exist_ok=True)
    score = load_scorer()
    items = records(source, text_column, batch_size, stdin or sys.stdin.buffer)
    bar = tqdm(unit=" reviews", disable=not progress, file=sys.stderr)
    try:
        for frame in score_records(score, items, text_column, batch_size):
            writer.write(frame)
            bar.update(len(frame))
    except BaseException:
        writer.close()
        if target is not None and target.exists():
            target.unlink()
        raise
    finally:
        bar.close()
    writer.finish(text_column)
    return writer.rows
