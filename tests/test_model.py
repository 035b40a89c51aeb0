"""model: the notebook presets as Keras counts them, every cell and shape, and it can learn; the
bag-of-bigrams companion and the averaged model that serves both."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from pipeline.config import HParams
from pipeline.model import PRESETS, average_models, build_bigram_model, build_model


@pytest.mark.parametrize(
    ("preset", "params"),
    [
        ("notebook-lstm", 8_809),
        ("notebook-2lstm", 9_353),
        ("notebook-gru", 8_633),
        ("notebook-simple-rnn", 5_009),
        ("notebook-2gru", 161_065),
    ],
)
def test_preset_parameter_counts_match_the_notebooks(preset, params):
    chosen = PRESETS[preset]

    assert build_model(chosen.hparams, chosen.vocab_size).count_params() == params


def _recurrent_layers(model):
    for layer in model.layers:
        if isinstance(layer, keras.layers.Bidirectional):
            yield layer.forward_layer
            yield layer.backward_layer
        elif isinstance(layer, keras.layers.RNN):
            yield layer


@pytest.mark.parametrize(
    ("cell", "layer_type"),
    [("simple_rnn", keras.layers.SimpleRNN), ("lstm", keras.layers.LSTM), ("gru", keras.layers.GRU)],
)
def test_each_cell_builds_a_classifier_of_any_length(cell, layer_type):
    model = build_model(HParams(cell=cell, units=4, embedding_dim=4), vocab_size=50)

    assert [type(layer) for layer in _recurrent_layers(model)] == [layer_type]
    for length in (3, 11):
        scores = model.predict(np.ones((2, length), dtype="int32"), verbose=0)
        assert scores.shape == (2, 1)
        assert ((scores > 0) & (scores < 1)).all()


def test_bidirectional_doubles_the_recurrent_width():
    single = build_model(HParams(units=6, embedding_dim=4), vocab_size=50)
    double = build_model(HParams(units=6, embedding_dim=4, bidirectional=True), vocab_size=50)

    assert single.get_layer("probability").input.shape[-1] == 6
    assert double.get_layer("probability").input.shape[-1] == 12
    assert len(list(_recurrent_layers(double))) == 2


def test_stacked_layers_pass_sequences_and_the_last_one_a_vector():
    model = build_model(HParams(cell="lstm", units=5, layers=3, embedding_dim=4, dropout=0.3), vocab_size=50)

    recurrent = list(_recurrent_layers(model))
    assert [layer.return_sequences for layer in recurrent] == [True, True, False]
    assert [layer.rate for layer in model.layers if isinstance(layer, keras.layers.Dropout)] == [0.3] * 3
    assert model.predict(np.ones((1, 7), dtype="int32"), verbose=0).shape == (1, 1)


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_no_layer_uses_recurrent_dropout(preset):
    chosen = PRESETS[preset]
    hparams = chosen.hparams.model_copy(update={"bidirectional": True, "dropout": 0.5})

    model = build_model(hparams, vocab_size=50)

    recurrent = list(_recurrent_layers(model))
    assert recurrent
    assert all(layer.cell.recurrent_dropout == 0 and layer.cell.dropout == 0 for layer in recurrent)


def test_the_bigram_model_scores_a_review_the_same_at_any_padded_width():
    model = build_bigram_model(vocab_size=50, buckets=64, dim=4)
    review = np.array([[7, 3, 9, 1, 4]], dtype="int32")
    padded = np.concatenate([np.zeros((1, 6), dtype="int32"), review], axis=1)
    other_order = review[:, ::-1].copy()

    alone = model.predict(review, verbose=0)
    assert model.predict(padded, verbose=0) == pytest.approx(alone, abs=1e-6)
    assert model.predict(other_order, verbose=0) != pytest.approx(alone, abs=1e-6)  # pairs, not a bag


def test_bigram_ids_skip_pairs_with_padding_and_stay_below_the_bucket_count():
    from pipeline.layers import HashedBigrams

    ids = np.asarray(HashedBigrams(vocab_size=50, buckets=16)(np.array([[0, 0, 5, 6, 7]], dtype="int32")))

    assert ids.shape == (1, 4)
    assert list(ids[0, :2]) == [0, 0]
    assert ((ids[0, 2:] >= 1) & (ids[0, 2:] < 16)).all()


def test_averaged_model_is_the_mean_of_its_members_and_loads_back_in_safe_mode(tmp_path):
    rnn = build_model(HParams(units=4, embedding_dim=4), vocab_size=50)
    bigrams = build_bigram_model(vocab_size=50, buckets=64, dim=4)
    reviews = np.array([[0, 0, 5, 6, 7], [2, 3, 4, 8, 9]], dtype="int32")

    blend = average_models([rnn, bigrams])
    blend.save(tmp_path / "blend.keras")
    loaded = keras.saving.load_model(tmp_path / "blend.keras", compile=False, safe_mode=True)

    members = (rnn.predict(reviews, verbose=0) + bigrams.predict(reviews, verbose=0)) / 2
    assert blend.predict(reviews, verbose=0) == pytest.approx(members, abs=1e-6)
    assert loaded.predict(reviews, verbose=0) == pytest.approx(members, abs=1e-6)
