"""Test-split metrics, confusion matrix, learning curves, and the error analysis people ask for
when a model disappoints: ROC and precision-recall curves, calibration, accuracy by review
length, and the most confidently wrong reviews.

Pure functions: they take labels and probabilities (or a history) and return values, tables or
figures. Every figure's title names the model and the split it shows (``label``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn import metrics as skm

THRESHOLD = 0.5


@dataclass(frozen=True)
class Evaluation:
    metrics: dict[str, float]  # test_loss, test_accuracy, test_precision, test_recall, test_f1, test_roc_auc
    confusion: np.ndarray  # 2×2, rows true (neg, pos), columns predicted
    correct: np.ndarray  # (n,) bool: per-review correctness, for paired model comparisons


def evaluate(y_true: np.ndarray, probability: np.ndarray, threshold: float = THRESHOLD) -> Evaluation:
    """Binary metrics of positive-class probabilities against 0/1 labels."""
    # reshape(-1): Model.predict returns an (n, 1) column, which would broadcast against (n,).
    y_true = np.asarray(y_true).astype(int).reshape(-1)
    probability = np.clip(np.asarray(probability, dtype=np.float64).reshape(-1), 1e-7, 1 - 1e-7)
    predicted = (probability >= threshold).astype(int)
    metrics = {
        "test_loss": float(skm.log_loss(y_true, probability, labels=[0, 1])),
        "test_accuracy": float(skm.accuracy_score(y_true, predicted)),
        "test_precision": float(skm.precision_score(y_true, predicted, zero_division=0)),
        "test_recall": float(skm.recall_score(y_true, predicted, zero_division=0)),
        "test_f1": float(skm.f1_score(y_true, predicted, zero_division=0)),
        "test_roc_auc": float(skm.roc_auc_score(y_true, probability)),
    }
    confusion = skm.confusion_matrix(y_true, predicted, labels=[0, 1])
    return Evaluation(metrics, confusion, predicted == y_true)


_FEW_EPOCHS = 2


def learning_curves(history: dict[str, list[float]], label: str = "RNN"):
    """Loss and accuracy per epoch, training vs validation, as a matplotlib Figure titled ``label``
    (the part that trained: ``RNN``, ``bag-of-bigrams companion``)."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(10, 4))
    figure.suptitle(f"Learning curves: {label} (training and validation splits)")
    for axes, metric in zip(figure.subplots(1, 2), ("loss", "accuracy"), strict=True):
        # Each series on its own epochs: a part fitted in one go (NBSVM) logs validation only.
        for key, split in ((metric, "train"), (f"val_{metric}", "validation")):
            values = history.get(key, [])
            axes.plot(np.arange(1, len(values) + 1), values, "o-", label=split)
            if len(values) <= _FEW_EPOCHS:  # a point or two is no curve: write the values
                for epoch, value in enumerate(values, start=1):
                    axes.annotate(f"{value:.4f}", (epoch, value), textcoords="offset points", xytext=(6, 4))
        epochs = max(len(history.get(metric, [])), len(history.get(f"val_{metric}", [])))
        shown = f" ({epochs} epoch{'' if epochs == 1 else 's'}: values written)" if epochs <= _FEW_EPOCHS else ""
        axes.set(title=metric + shown, xlabel="epoch")
        axes.legend()
    figure.tight_layout()
    return figure


def confusion_figure(confusion: np.ndarray, label: str = "model, test split"):
    from matplotlib.figure import Figure

    figure = Figure(figsize=(4.5, 4))
    axes = figure.subplots()
    display = skm.ConfusionMatrixDisplay(confusion, display_labels=["negative", "positive"])
    display.plot(ax=axes, colorbar=False)
    axes.set_title(f"Confusion matrix\n{label}", fontsize=10)
    figure.tight_layout()
    return figure


def _clipped(y_true: np.ndarray, probability: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return np.asarray(y_true).astype(int).reshape(-1), np.asarray(probability, dtype=np.float64).reshape(-1)


def roc_figure(y_true: np.ndarray, probability: np.ndarray, label: str):
    """ROC curve with its AUC, titled ``label`` (model and split)."""
    from matplotlib.figure import Figure

    y_true, probability = _clipped(y_true, probability)
    figure = Figure(figsize=(5, 5))
    axes = figure.subplots()
    skm.RocCurveDisplay.from_predictions(y_true, probability, ax=axes, name=label.split(",")[0])
    axes.plot([0, 1], [0, 1], "--", color="grey", label="chance")
    axes.set_title(f"ROC curve\n{label}", fontsize=10)
    axes.legend(loc="lower right")
    figure.tight_layout()
    return figure


def precision_recall_figure(y_true: np.ndarray, probability: np.ndarray, label: str):
    """Precision-recall curve with its average precision, titled ``label``."""
    from matplotlib.figure import Figure

    y_true, probability = _clipped(y_true, probability)
    figure = Figure(figsize=(5, 5))
    axes = figure.subplots()
    skm.PrecisionRecallDisplay.from_predictions(y_true, probability, ax=axes, name=label.split(",")[0])
    axes.axhline(y_true.mean(), ls="--", color="grey", label="always positive")
    axes.set_title(f"Precision-recall curve\n{label}", fontsize=10)
    axes.legend(loc="lower left")
    figure.tight_layout()
    return figure


def calibration_figure(y_true: np.ndarray, probability: np.ndarray, label: str, bins: int = 10):
    """Reliability diagram: the share of positive reviews per bin of predicted probability against
    the bin's mean probability (the diagonal is perfect calibration), titled ``label``."""
    from matplotlib.figure import Figure
    from sklearn.calibration import CalibrationDisplay

    y_true, probability = _clipped(y_true, probability)
    figure = Figure(figsize=(5, 5))
    axes = figure.subplots()
    CalibrationDisplay.from_predictions(y_true, probability, n_bins=bins, ax=axes, name=label.split(",")[0])
    axes.set(xlabel="mean predicted P(positive)", ylabel="share of positive reviews")
    axes.set_title(f"Calibration (reliability)\n{label}", fontsize=10)
    figure.tight_layout()
    return figure


# Review length in words; the middle IMDB review is about 170 words, a few run past 1,000.
LENGTH_EDGES = (0, 100, 200, 400, 800)


def accuracy_by_length(
    y_true: np.ndarray, probability: np.ndarray, words: np.ndarray, threshold: float = THRESHOLD
) -> pd.DataFrame:
    """One row per review-length bucket (``LENGTH_EDGES``, in words): reviews, accuracy, mean
    confidence. Long reviews are where a model that keeps only the last ``max_len`` tokens loses."""
    y_true, probability = _clipped(y_true, probability)
    words = np.asarray(words).reshape(-1)
    edges = [*LENGTH_EDGES, np.inf]
    names = [f"{lo}-{hi - 1}" if hi != np.inf else f"{lo}+" for lo, hi in zip(edges[:-1], edges[1:], strict=True)]
    bucket = pd.cut(words, edges, right=False, labels=names)
    frame = pd.DataFrame({"bucket": bucket, "correct": (probability >= threshold) == y_true.astype(bool)})
    frame["confidence"] = np.maximum(probability, 1 - probability)
    table = frame.groupby("bucket", observed=False).agg(
        reviews=("correct", "size"), accuracy=("correct", "mean"), mean_confidence=("confidence", "mean")
    )
    return table.reset_index().round(4)


def length_figure(table: pd.DataFrame, label: str):
    """Accuracy per review-length bucket as bars, each labelled with its review count."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6, 4))
    axes = figure.subplots()
    bars = axes.bar(table["bucket"].astype(str), table["accuracy"].fillna(0))
    axes.bar_label(bars, labels=[f"n={n}" for n in table["reviews"]])
    axes.set(xlabel="review length (words)", ylabel="accuracy", ylim=(0, 1.1))
    axes.set_title(f"Accuracy by review length\n{label}", fontsize=10)
    figure.tight_layout()
    return figure


def confident_errors(
    texts: list[str], y_true: np.ndarray, probability: np.ndarray, count: int = 50, excerpt: int = 300
) -> pd.DataFrame:
    """The ``count`` wrong test reviews the model was surest of, surest first: text excerpt (its
    first ``excerpt`` characters), true label, P(positive), confidence in the wrong answer, length."""
    y_true, probability = _clipped(y_true, probability)
    wrong = np.flatnonzero((probability >= THRESHOLD) != y_true.astype(bool))
    confidence = np.maximum(probability, 1 - probability)[wrong]
    order = wrong[np.argsort(-confidence, kind="stable")][:count]
    return pd.DataFrame(
        {
            "excerpt": [_excerpt(texts[i], excerpt) for i in order],
            # Named for what it is: the review's true label (the model said the other one).
            "true_label": ["positive" if y_true[i] else "negative" for i in order],
            "p_positive": np.round(probability[order], 4),
            "confidence": np.round(np.maximum(probability, 1 - probability)[order], 4),
            "words": [len(texts[i].split()) for i in order],
            "index": order,
        }
    )


def _excerpt(text: str, chars: int) -> str:
    text = " ".join(text.replace("<br />", " ").split())
    return text if len(text) <= chars else text[: chars - 1] + "…"
