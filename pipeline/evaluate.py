"""Test-split metrics, confusion matrix and learning curves.

Pure functions: they take labels and probabilities (or a history) and return values or figures.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
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


def learning_curves(history: dict[str, list[float]]):
    """Loss and accuracy per epoch, training vs validation, as a matplotlib Figure."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(10, 4))
    epochs = np.arange(1, len(history.get("loss", [])) + 1)
    for axes, metric in zip(figure.subplots(1, 2), ("loss", "accuracy"), strict=True):
        axes.plot(epochs, history.get(metric, []), "o-", label="train")
        axes.plot(epochs, history.get(f"val_{metric}", []), "o-", label="validation")
        axes.set(title=metric, xlabel="epoch")
        axes.legend()
    figure.tight_layout()
    return figure


def confusion_figure(confusion: np.ndarray):
    from matplotlib.figure import Figure

    figure = Figure(figsize=(4.5, 4))
    display = skm.ConfusionMatrixDisplay(confusion, display_labels=["negative", "positive"])
    display.plot(ax=figure.subplots(), colorbar=False)
    figure.tight_layout()
    return figure
