"""What a user could pick instead of the pipeline: scikit-learn linear models on the same splits.

Two rows, their C chosen on the pipeline's validation reviews (fitted on its training reviews), then
fitted again with that C on every labelled training review (training + validation, as a user
would fit them, and as the champion's companion is refitted: ``train.refit``) and scored once on
its test reviews (the same texts the pipeline's champion is scored on):

- TF-IDF word 1-2-grams + logistic regression;
- NBSVM (Wang & Manning 2012): binary word 1-2-grams scaled by their naive-Bayes log-count ratio
  + logistic regression.

They read the raw text with scikit-learn's own tokenizer and an unlimited vocabulary, as a new
user would; only the split is the pipeline's.
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np

C_GRID = (0.1, 0.3, 1.0, 3.0, 10.0, 30.0)  # 3 won at the edge of (0.1 … 3): the grid goes past it
# How reports name the two rows of ``linear_baselines``.
BASELINE_NAMES = {"tfidf_lr": "TF-IDF word 1-2-grams + LR", "nbsvm_lr": "NBSVM (NB-scaled binary 1-2-grams) + LR"}


def raw_splits(data_options: dict[str, Any]) -> dict[str, tuple[list[str], np.ndarray]]:
    """(texts, labels) of the pipeline's train / val / test splits, drawn exactly as ``data.prepare``
    draws them (same limit, same stratified split, same seed). Raises AssertionError if they drift."""
    from sklearn.model_selection import train_test_split

    from pipeline.config import build_config
    from pipeline.data import _limit, prepare, read_reviews

    cfg = build_config(data_options).data
    raw = read_reviews(cfg.path)
    train, test = _limit(raw.train, cfg), _limit(raw.test, cfg)
    train_idx, val_idx = train_test_split(
        np.arange(len(train.labels)), test_size=cfg.val_fraction, stratify=train.labels, random_state=cfg.seed
    )
    splits = {
        "train": ([train.texts[i] for i in train_idx], train.labels[train_idx]),
        "val": ([train.texts[i] for i in val_idx], train.labels[val_idx]),
        "test": (test.texts, test.labels),
    }
    data = prepare(cfg)
    assert splits["test"][0] == data.test_texts and (splits["train"][1] == data.train.y).all()
    return splits


def _nb_scaled(counts, y: np.ndarray, alpha: float = 1.0):
    positive = alpha + np.asarray(counts[y == 1].sum(axis=0)).ravel()
    negative = alpha + np.asarray(counts[y == 0].sum(axis=0)).ravel()
    return np.log((positive / positive.sum()) / (negative / negative.sum()))


def _tfidf_features(texts: list[str]):
    """TF-IDF word 1-2-grams fitted on ``texts``: (their features, a transform for other texts)."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    vectorizer = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True)
    return vectorizer.fit_transform(texts), vectorizer.transform


def _nbsvm_features(texts: list[str], y: np.ndarray):
    """Binary word 1-2-grams scaled by their naive-Bayes ratio on (``texts``, ``y``): (their
    features, a transform for other texts)."""
    from sklearn.feature_extraction.text import CountVectorizer

    vectorizer = CountVectorizer(ngram_range=(1, 2), binary=True)
    counts = vectorizer.fit_transform(texts)
    ratio = _nb_scaled(counts, y)
    return counts.multiply(ratio).tocsr(), lambda other: vectorizer.transform(other).multiply(ratio).tocsr()


def _fit_best(train_x, train_y, val_x, val_y, **options):
    """The C of ``C_GRID`` whose logistic regression scores best on validation, and that score."""
    from sklearn.linear_model import LogisticRegression

    fitted = [LogisticRegression(C=c, max_iter=1000, **options).fit(train_x, train_y) for c in C_GRID]
    scores = [float(np.mean(model.predict(val_x) == val_y)) for model in fitted]
    best = int(np.argmax(scores))
    return C_GRID[best], scores[best]


def linear_baselines(data_options: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Test accuracy (of the refit on every labelled training review), validation accuracy (of the
    fit on the training part, which chose C), chosen C and wall seconds (features, C search, refit,
    test) of the two baselines."""
    from sklearn.linear_model import LogisticRegression

    splits = raw_splits(data_options)
    (train_texts, train_y), (val_texts, val_y), (test_texts, test_y) = splits["train"], splits["val"], splits["test"]
    all_texts, all_y = train_texts + val_texts, np.concatenate([train_y, val_y])
    kinds = {
        "tfidf_lr": (lambda texts, y: _tfidf_features(texts), {"solver": "liblinear"}),
        "nbsvm_lr": (_nbsvm_features, {"solver": "liblinear", "dual": True}),
    }
    results = {}
    for name, (features, options) in kinds.items():
        started = time.perf_counter()
        train_x, transform = features(train_texts, train_y)
        c, val_accuracy = _fit_best(train_x, train_y, transform(val_texts), val_y, **options)
        all_x, transform = features(all_texts, all_y)  # the user's fit: every labelled review
        model = LogisticRegression(C=c, max_iter=1000, **options).fit(all_x, all_y)
        accuracy = float(np.mean(model.predict(transform(test_texts)) == test_y))
        results[name] = _row(accuracy, val_accuracy, c, started)
    return results


def _row(test_accuracy: float, val_accuracy: float, c: float, started: float) -> dict[str, Any]:
    return {
        "test_accuracy": test_accuracy,
        "val_accuracy": val_accuracy,
        "C": c,
        "wall_seconds": time.perf_counter() - started,
    }


def main() -> None:
    import argparse
    from pathlib import Path

    from benchmarks.environment import environment, write_results

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="aclImdb_v1.tar.gz or its extracted folder")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results", help="folder for the results")
    args = parser.parse_args()
    options = {"data.path": args.data, "data.vocab_size": 20000, "data.max_len": 500, "data.cache_dir": None}
    env = environment()
    rows = linear_baselines(options)
    results = {
        "command": f"python -m benchmarks.linear_baseline --data {args.data}",
        "splits": "C chosen on the pipeline's validation reviews (fitted on its training reviews), then "
        "fitted on every labelled training review (training + validation) and scored on its test reviews",
        "environment": env,
        "load_average_end": [round(load, 2) for load in os.getloadavg()],
        "results": rows,
    }
    markdown = "| baseline, fitted on every labelled training review | test accuracy | validation accuracy (C) | wall time |\n"
    markdown += "|---|---|---|---|\n" + "".join(
        f"| {BASELINE_NAMES[name]} | {row['test_accuracy']:.4f} | {row['val_accuracy']:.4f} (C={row['C']:g}) "
        f"| {row['wall_seconds']:.0f} s |\n"
        for name, row in rows.items()
    )
    write_results(results, markdown, args.out, "linear_baseline", quick=False)


if __name__ == "__main__":
    main()
