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


def test_the_most_confidently_wrong_reviews_come_first_with_their_excerpt_and_length():
    from pipeline.evaluate import confident_errors

    texts = ["fine film", "awful<br />awful " + "word " * 200, "great", "bad"]
    y_true = np.array([1, 1, 0, 0])
    probability = np.array([0.9, 0.05, 0.7, 0.2])  # wrong: index 1 (sure, 0.95) and 2 (0.7)

    table = confident_errors(texts, y_true, probability, excerpt=20)

    assert table["index"].tolist() == [1, 2]
    assert table["true_label"].tolist() == ["positive", "negative"]
    assert table["confidence"].tolist() == [0.95, 0.7]
    assert table["excerpt"][0] == "awful awful word wo…" and "<br" not in table["excerpt"][0]
    assert table["words"][0] == 202


def test_accuracy_by_length_buckets_reviews_by_words():
    from pipeline.evaluate import accuracy_by_length

    y_true = np.array([1, 1, 0, 0])
    probability = np.array([0.9, 0.1, 0.2, 0.4])
    table = accuracy_by_length(y_true, probability, np.array([50, 150, 150, 900]))

    rows = table.set_index("bucket")
    assert rows.loc["0-99", "accuracy"] == 1.0 and rows.loc["100-199", "accuracy"] == 0.5
    assert rows.loc["100-199", "reviews"] == 2 and rows.loc["200-399", "reviews"] == 0
    assert rows.loc["800+", "reviews"] == 1


@pytest.mark.parametrize("name", ["roc_figure", "precision_recall_figure", "calibration_figure"])
def test_curves_are_titled_with_the_model_and_split(name):
    import pipeline.evaluate

    figure = getattr(pipeline.evaluate, name)(
        np.array([0, 1, 0, 1, 1]), np.array([0.2, 0.8, 0.4, 0.6, 0.3]), "rnn model, test split (5 reviews)"
    )

    assert isinstance(figure, Figure)
    assert "rnn model, test split (5 reviews)" in figure.axes[0].get_title()


def test_a_one_epoch_history_writes_its_values_instead_of_drawing_a_curve():
    figure = learning_curves({"loss": [0.41], "accuracy": [0.81], "val_loss": [0.45], "val_accuracy": [0.79]})

    loss, accuracy = figure.axes
    assert accuracy.get_title() == "accuracy (1 epoch: values written)"
    assert {text.get_text() for text in accuracy.texts} == {"0.8100", "0.7900"}
    assert {text.get_text() for text in loss.texts} == {"0.4100", "0.4500"}
