"""Checks on the labelled reviews before any training, with pandera: a bad batch (one label only,
binary noise, a copy of the test reviews) is refused before it can become a champion.

``findings(raw)`` runs pandera's schema over every review at preparation time and keeps, per
check, how many reviews failed it and a few examples: what the data is, whatever the thresholds.
``verdict(findings, cfg)`` then applies the thresholds of ``DataConfig`` (``check_…`` fields) and
says which checks fail; a pipeline run that gets any stops before training (``stages``), FAILED,
with the whole report as its ``data/checks.json`` artifact.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import pandas as pd

from pipeline.config import DataConfig
from pipeline.reviews import SPLITS, DataError, RawDataset

LETTER_SHARE = 0.5  # a review with fewer letters than this share of its characters is not text
EXAMPLES = 5


@dataclass(frozen=True)
class Finding:
    check: str
    split: str
    failed: int  # reviews that failed it (for a share check: 1 when the share is out of bounds)
    reviews: int  # reviews of the split it was counted on
    examples: tuple[str, ...] = ()  # "train review 12: 'first characters…'"
    value: float | None = None  # the measured share, for share checks


@dataclass(frozen=True)
class Failure:
    finding: Finding
    limit: str  # what was allowed

    def line(self) -> str:
        f = self.finding
        if f.value is not None:
            return f"{f.check} in {f.split}: {f.value:.3f} ({self.limit})"
        return f"{f.check} in {f.split}: {f.failed} of {f.reviews} reviews ({self.limit})"


class DataCheckError(DataError):
    """The reviews failed the checks before training; the message names each failed check."""


def findings(raw: RawDataset) -> tuple[Finding, ...]:
    """Every check on every split: the reviews failing it, with examples."""
    import pandera.pandas as pa
    from pandera.errors import SchemaErrors

    frame = pd.concat(
        [
            pd.DataFrame({"split": split, "label": reviews.labels.astype(int), "text": reviews.texts})
            for split, reviews in (("train", raw.train), ("test", raw.test))
        ],
        ignore_index=True,
    )
    train_texts = set(raw.train.texts)
    schema = pa.DataFrameSchema(
        {
            "text": pa.Column(
                str,
                checks=[
                    pa.Check(lambda s: s.str.strip().str.len() > 0, name="empty_text"),
                    pa.Check(lambda s: _letter_share(s) >= LETTER_SHARE, name="not_mostly_letters"),
                ],
            ),
            "label": pa.Column(int, pa.Check.isin([0, 1], name="label_outside_mapping")),
            "split": pa.Column(str, pa.Check.isin(list(SPLITS))),
        },
        checks=[
            pa.Check(lambda df: ~df.duplicated(["split", "text"], keep="first"), name="exact_duplicate"),
            pa.Check(lambda df: ~(df["split"].eq("test") & df["text"].isin(train_texts)), name="test_review_in_train"),
        ],
    )
    try:
        schema.validate(frame, lazy=True)
        cases = pd.DataFrame(columns=["check", "index"])
    except SchemaErrors as errors:
        cases = errors.failure_cases
    found = []
    sizes = frame["split"].value_counts()
    for split in SPLITS:
        rows = frame.index[frame["split"] == split]
        offset = rows.min()
        for check in ("empty_text", "not_mostly_letters", "label_outside_mapping", "exact_duplicate", "test_review_in_train"):
            if check == "test_review_in_train" and split == "train":
                continue
            failed = sorted({int(i) for i in cases.loc[cases["check"] == check, "index"].dropna() if int(i) in rows})
            examples = tuple(f"{split} review {i - offset + 1}: {frame.at[i, 'text'][:60]!r}" for i in failed[:EXAMPLES])
            found.append(Finding(check, split, len(failed), int(sizes[split]), examples))
        labels = frame.loc[rows, "label"]
        found.append(Finding("positive_share", split, 0, int(sizes[split]), value=round(float(labels.mean()), 4)))
        fewest = int(labels.value_counts().reindex([0, 1], fill_value=0).min())
        found.append(Finding("reviews_per_class", split, 0, int(sizes[split]), value=float(fewest)))
    return tuple(found)


def _letter_share(texts: pd.Series) -> pd.Series:
    letters = texts.str.count(r"[^\W\d_]")
    return letters / texts.str.len().clip(lower=1)


def verdict(found: tuple[Finding, ...], cfg: DataConfig) -> list[Failure]:
    """The findings past the thresholds of ``cfg`` (none when ``data.checks`` is off)."""
    if not cfg.checks:
        return []
    tolerated = {
        "empty_text": cfg.check_max_empty_share,
        "not_mostly_letters": cfg.check_max_nonletter_share,
        "label_outside_mapping": 0.0,
        "exact_duplicate": cfg.check_max_duplicate_share,
        "test_review_in_train": cfg.check_max_leaked_share,
    }
    failures = []
    for f in found:
        if f.check == "positive_share":
            low, high = cfg.check_min_positive_share, 1 - cfg.check_min_positive_share
            if not low <= f.value <= high:
                failures.append(Failure(f, f"allowed {low:g}-{high:g}, data.check_min_positive_share"))
        elif f.check == "reviews_per_class":
            if f.value < cfg.check_min_per_class:
                failures.append(Failure(f, f"fewest of a class; at least {cfg.check_min_per_class}, data.check_min_per_class"))
        elif f.failed > tolerated[f.check] * f.reviews:
            setting = {"label_outside_mapping": "none"}.get(f.check, f"data.check_max_{_setting(f.check)}_share")
            failures.append(Failure(f, f"allowed {tolerated[f.check]:.0%}, {setting}"))
    return failures


def _setting(check: str) -> str:
    return {"empty_text": "empty", "not_mostly_letters": "nonletter", "exact_duplicate": "duplicate"}.get(check, "leaked")


def from_dicts(items: list[dict]) -> tuple[Finding, ...]:
    """Findings as ``report`` (and the prepared-data cache) wrote them."""
    return tuple(Finding(**{**item, "examples": tuple(item["examples"])}) for item in items)


def report(found: tuple[Finding, ...], failures: list[Failure]) -> dict:
    """The artifact: every finding, and the failed checks as one line each."""
    return {"failed": [f.line() for f in failures], "findings": [asdict(f) for f in found]}


def error(failures: list[Failure]) -> DataCheckError:
    return DataCheckError(
        f"the reviews failed {len(failures)} check(s) before training: " + "; ".join(f.line() for f in failures)
        + " (report: the run's data/checks.json)"
    )
