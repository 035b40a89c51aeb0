"""What a user could pick instead of the pipeline: scikit-learn linear models on the same splits.

Two rows, fitted on the pipeline's training reviews, their C chosen on its validation reviews, then
scored once on its test reviews (the same texts the pipeline's champion is scored on):

- TF-IDF word 1-2-grams + logistic regression;
- NBSVM (Wang & Manning 2012): binary word 1-2-grams scaled by their naive-Bayes log-count ratio
  + logistic regression.

They read the raw text with scikit-learn's own tokenizer and an unlimited vocabulary, as a new
user would; only the split is the pipeline's.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

C_GRID = (0.1, 0.3, 1.0, 3.0)
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


def _fit_best(train_x, train_y, val_x, val_y, **options):
    """The logistic regression of ``C_GRID`` that scores best on validation."""
    from sklearn.linear_model import LogisticRegression

    fitted = [LogisticRegression(C=c, max_iter=1000, **options).fit(train_x, train_y) for c in C_GRID]
    scores = [float(np.mean(model.predict(val_x) == val_y)) for model in fitted]
    best = int(np.argmax(scores))
    return fitted[best], C_GRID[best], scores[best]


def linear_baselines(data_options: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Test accuracy, validation accuracy, chosen C and wall seconds (features + C search + test)
    of the two baselines."""
    from sklearn.feature_extraction.text import CountVectorizer, TfidfVectorizer

    splits = raw_splits(data_options)
    (train_texts, train_y), (val_texts, val_y), (test_texts, test_y) = (
        splits["train"],
        splits["val"],
        splits["test"],
    )
    results = {}
    started = time.perf_counter()
    tfidf = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True)
    train_x = tfidf.fit_transform(train_texts)
    model, c, val_accuracy = _fit_best(
        train_x, train_y, tfidf.transform(val_texts), val_y, solver="liblinear"
    )
    accuracy = float(np.mean(model.predict(tfidf.transform(test_texts)) == test_y))
    results["tfidf_lr"] = _row(accuracy, val_accuracy, c, started)

    started = time.perf_counter()
    counts = CountVectorizer(ngram_range=(1, 2), binary=True)
    train_x = counts.fit_transform(train_texts)
    ratio = _nb_scaled(train_x, train_y)

    def scaled(texts):
        return counts.transform(texts).multiply(ratio).tocsr()

    model, c, val_accuracy = _fit_best(
        train_x.multiply(ratio).tocsr(), train_y, scaled(val_texts), val_y, solver="liblinear", dual=True
    )
    accuracy = float(np.mean(model.predict(scaled(test_texts)) == test_y))
    results["nbsvm_lr"] = _row(accuracy, val_accuracy, c, started)
    return results


def _row(test_accuracy: float, val_accuracy: float, c: float, started: float) -> dict[str, Any]:
    return {
        "test_accuracy": test_accuracy,
        "val_accuracy": val_accuracy,
        "C": c,
        "wall_seconds": time.perf_counter() - started,
    }
