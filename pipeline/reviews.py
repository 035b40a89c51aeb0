"""Labelled reviews as every source reads into them (``data`` for aclImdb, ``review_tables`` for
tables): the two splits, their content digest, and the checks both apply."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

LABELS = ("neg", "pos")  # index = label: 0 negative, 1 positive
SPLITS = ("train", "test")
# Empty review files are skipped with a warning up to this share of a split; past it the dataset
# is taken as broken.
MAX_EMPTY_SHARE = 0.01


class DataError(ValueError):
    """The dataset at fault; the message names the file, folder or split."""


@dataclass(frozen=True)
class Reviews:
    texts: list[str]
    labels: np.ndarray  # int8, 1 = positive


@dataclass(frozen=True)
class RawDataset:
    train: Reviews
    test: Reviews
    digest: str  # content_digest: equal for the archive, its folder and the same rows in a table
    source: str
    skipped: tuple[str, ...] = ()  # empty review files left out


def allow_few_empty(names: list[str], kept: int, path: Path, split: str) -> None:
    """Skip a few empty review files with a warning naming them; DataError past MAX_EMPTY_SHARE."""
    if not names:
        return
    shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
    if len(names) > MAX_EMPTY_SHARE * (kept + len(names)):
        raise DataError(
            f"{path}: {split} review {shown} empty ({len(names)} of {kept + len(names)}, more than "
            f"the {MAX_EMPTY_SHARE:.0%} that is skipped)"
        )
    log.warning("%s: skipping %d empty %s review(s): %s", path, len(names), split, shown)


def require_both_classes(labels: np.ndarray, path: Path | str, split: str) -> None:
    present = set(np.unique(labels).tolist())
    if present != {0, 1}:
        only = LABELS[present.pop()] if present else "none"
        raise DataError(f"{path}: split '{split}' has one class only ({only}); need pos and neg")


def content_digest(splits: dict[str, Reviews]) -> str:
    """sha256 over every review's split, label and text, in canonical order: what the data is,
    whatever file, format or row order it came in (a run's ``dataset_digest``)."""
    digest = hashlib.sha256()
    for split in SPLITS:
        reviews = splits[split]
        for text, label in zip(reviews.texts, reviews.labels.tolist(), strict=True):
            digest.update(f"{split}\0{label}\0{text}\0".encode())
    return digest.hexdigest()
