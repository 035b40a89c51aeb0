"""blend: the RNN+bigrams average is kept only when it beats the RNN on the validation split."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from pipeline.blend import choose_blend
from pipeline.data import Split


def _constant_model(scores: list[float]) -> keras.Model:
    """A model that returns ``scores[i]`` for a review made of token ``i`` only (a lookup table)."""
    tokens = keras.Input(shape=(None,), dtype="int32")
    table = keras.layers.Embedding(len(scores), 1)
    probability = keras.layers.GlobalAveragePooling1D()(table(tokens))
    model = keras.Model(tokens, probability)
    table.set_weights([np.asarray(scores, dtype="float32").reshape(-1, 1)])
    return model


def _val(labels: list[int]) -> Split:
    n = len(labels)
    x = np.stack([np.arange(n), np.arange(n)], axis=1).astype("int32")  # review i is token i, twice
    return Split(x, np.asarray(labels, dtype="int8"), np.full(n, 2, dtype="int32"))


def test_the_blend_is_kept_when_it_beats_the_rnn_on_validation():
    val = _val([1, 1, 0, 0])
    rnn = _constant_model([0.9, 0.4, 0.1, 0.6])  # 2 of 4 right
    bigrams = _constant_model([0.8, 0.9, 0.2, 0.3])  # 4 of 4; mean 0.85 0.65 0.15 0.45: 4 of 4

    choice = choose_blend(rnn, bigrams, val, widths=(2,))

    assert choice.chosen == "rnn+bigrams"
    assert choice.val_accuracy == {"rnn": 0.5, "bigrams": 1.0, "rnn+bigrams": 1.0}
    assert choice.metrics() == {
        "val_accuracy_rnn": 0.5,
        "val_accuracy_bigrams": 1.0,
        "val_accuracy_rnn_bigrams": 1.0,
        "blend_weight_rnn": 0.5,  # every weight that scores 1.0 ties: the nearest to 0.5 wins
    }
    assert choice.model.predict(val.x, verbose=0).reshape(-1) == pytest.approx([0.85, 0.65, 0.15, 0.45])


def test_the_blend_weight_is_the_one_that_scores_best_on_validation():
    val = _val([1, 1, 0, 0])
    rnn = _constant_model([0.9, 0.0, 0.1, 0.6])  # confidently wrong on review 1
    companion = _constant_model([0.6, 0.55, 0.4, 0.45])  # 4 of 4, but only just

    choice = choose_blend(rnn, companion, val, widths=(2,))

    assert choice.chosen == "rnn+bigrams" and choice.rnn_weight == 0.05  # the only weight with 4 of 4
    expected = 0.05 * np.asarray([0.9, 0.0, 0.1, 0.6]) + 0.95 * np.asarray([0.6, 0.55, 0.4, 0.45])
    assert choice.model.predict(val.x, verbose=0).reshape(-1) == pytest.approx(expected, abs=1e-6)


def test_a_tie_keeps_the_rnn_alone():
    val = _val([1, 0])
    rnn = _constant_model([0.9, 0.1])
    bigrams = _constant_model([0.6, 0.4])

    choice = choose_blend(rnn, bigrams, val, widths=(2,))

    assert choice.chosen == "rnn"
    assert choice.model is rnn
