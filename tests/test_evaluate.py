"""evaluate: metrics and confusion matrix on hand-made predictions, and the figures."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib.figure import Figure

from pipeline.evaluate import confusion_figure, evaluate, learning_curves


def test_perfect_predictions_score_one():
    result = evaluate(np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.8, 0.99]))

    assert result.metrics["test_accuracy"] == 1.0
    assert result.metrics["test_roc_auc"] == 1.0
    assert result.metrics["test_f1"] == 1.0
    assert result.metrics["test_loss"] < 0.25
    np.testing.assert_array_equal(result.confusion, [[2, 0], [0, 2]])
    assert result.correct.all()


def test_a_known_confusion_matrix_and_its_metrics():
    y_true = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 1])
    # 3 true negatives, 1 false positive, 2 false negatives, 4 true positives
    probability = np.array([0.1, 0.2, 0.3, 0.7, 0.4, 0.45, 0.6, 0.8, 0.9, 0.95])

    result = evaluate(y_true, probability)

    np.testing.assert_array_equal(result.confusion, [[3, 1], [2, 4]])  # rows true, columns predicted
    assert result.metrics["test_accuracy"] == pytest.approx(0.7)
    assert result.metrics["test_precision"] == pytest.approx(4 / 5)
    assert result.metrics["test_recall"] == pytest.approx(4 / 6)
    assert result.metrics["test_f1"] == pytest.approx(2 * 0.8 * (4 / 6) / (0.8 + 4 / 6))
    # (positive, negative) pairs ranked right: all but 0.7 above 0.4, 0.45 and 0.6, so 21 of 24
    assert result.metrics["test_roc_auc"] == pytest.approx(21 / 24)
    assert result.correct.tolist() == [True, True, True, False, False, False, True, True, True, True]
    expected_loss = -np.mean(np.where(y_true == 1, np.log(probability), np.log(1 - probability)))
    assert result.metrics["test_loss"] == pytest.approx(expected_loss)


def test_threshold_moves_the_decision():
    result = evaluate(np.array([0, 1]), np.array([0.3, 0.4]), threshold=0.35)

    assert result.metrics["test_accuracy"] == 1.0
    assert evaluate(np.array([0, 1]), np.array([0.3, 0.4])).metrics["test_accuracy"] == 0.5


def test_certain_wrong_predictions_give_a_finite_loss():
    result = evaluate(np.array([0, 1]), np.array([1.0, 0.0]))

    assert np.isfinite(result.metrics["test_loss"])
    assert result.metrics["test_accuracy"] == 0.0
    assert result.metrics["test_roc_auc"] == 0.0


def test_a_probability_column_from_model_predict_gives_one_correctness_flag_per_review():
    result = evaluate(np.array([0, 1, 1]), np.array([[0.2], [0.7], [0.4]]))

    assert result.metrics["test_accuracy"] == pytest.approx(2 / 3)
    assert result.correct.tolist() == [True, True, False]


def test_learning_curves_are_a_figure_with_loss_and_accuracy_axes():
    history = {
        "loss": [0.7, 0.5, 0.4],
        "accuracy": [0.5, 0.7, 0.8],
        "val_loss": [0.7, 0.6, 0.6],
        "val_accuracy": [0.5, 0.6, 0.65],
    }

    figure = learning_curves(history)

    assert isinstance(figure, Figure)
    assert [axes.get_title() for axes in figure.axes] == ["loss", "accuracy"]
    for axes, metric in zip(figure.axes, ("loss", "accuracy"), strict=True):
        train, validation = axes.get_lines()
        assert train.get_ydata().tolist() == history[metric]
        assert validation.get_ydata().tolist() == history[f"val_{metric}"]
        assert train.get_xdata().tolist() == [1, 2, 3]


def test_confusion_figure_shows_the_counts():
    figure = confusion_figure(np.array([[3, 1], [2, 4]]))

    assert isinstance(figure, Figure)
    texts = {text.get_text() for text in figure.axes[0].texts}
    assert {"3", "1", "2", "4"} <= texts
