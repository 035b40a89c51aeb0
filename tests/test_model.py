"""model: the notebook presets as Keras counts them, every cell and shape, and it can learn; the
bag-of-bigrams companion and the averaged model that serves both."""

from __future__ import annotations

import h5py
import keras
import numpy as np
import pytest

from pipeline.config import HParams
from pipeline.model import (
    PRESETS,
    average_models,
    build_bigram_model,
    build_model,
    build_nbsvm_model,
    inference_copy,
)


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
    single = build_model(HParams(units=6, embedding_dim=4, pooling="last"), vocab_size=50)
    double = build_model(HParams(units=6, embedding_dim=4, bidirectional=True, pooling="last"), vocab_size=50)

    assert single.get_layer("probability").input.shape[-1] == 6
    assert double.get_layer("probability").input.shape[-1] == 12
    assert len(list(_recurrent_layers(double))) == 2


def test_stacked_layers_pass_sequences_and_the_last_one_a_vector():
    model = build_model(
        HParams(cell="lstm", units=5, layers=3, embedding_dim=4, dropout=0.3, pooling="last"), vocab_size=50
    )

    recurrent = list(_recurrent_layers(model))
    assert [layer.return_sequences for layer in recurrent] == [True, True, False]
    assert [layer.rate for layer in model.layers if isinstance(layer, keras.layers.Dropout)] == [0.3] * 3
    assert model.predict(np.ones((1, 7), dtype="int32"), verbose=0).shape == (1, 1)


def test_pooling_reads_the_max_and_the_mean_of_the_states_over_the_reviews_tokens_only():
    model = build_model(HParams(units=6, embedding_dim=4, bidirectional=True), vocab_size=50)
    assert [layer.return_sequences for layer in _recurrent_layers(model)] == [True, True]
    assert model.get_layer("probability").input.shape[-1] == 2 * 12  # max and mean of 12 states
    recurrent = next(layer for layer in model.layers if isinstance(layer, keras.layers.Bidirectional))
    states = keras.Model(model.input, recurrent.output)
    pooled = keras.Model(model.input, model.get_layer("pooled").output)
    review = np.array([[0, 0, 0, 5, 9, 7]], dtype="int32")  # three padding steps first

    real = states.predict(review, verbose=0)[0, 3:]
    np.testing.assert_allclose(
        pooled.predict(review, verbose=0)[0], np.concatenate([real.max(axis=0), real.mean(axis=0)]), atol=1e-6
    )
    assert np.allclose(pooled.predict(np.zeros((1, 4), "int32"), verbose=0), 0), "no token: zeros"


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


def test_a_served_blend_of_trained_members_carries_no_optimizer_state(tmp_path):
    import zipfile

    rnn = build_model(HParams(units=4, embedding_dim=4), vocab_size=50)
    bigrams = build_bigram_model(vocab_size=50, buckets=64, dim=4)
    reviews = np.array([[0, 0, 5, 6, 7], [2, 3, 4, 8, 9]], dtype="int32")
    for member in (rnn, bigrams):  # a fitted member holds Adam's/RMSprop's slots
        member.fit(reviews, np.array([1, 0]), epochs=1, verbose=0)

    for name, model in {"blend": average_models([rnn, bigrams]), "rnn": inference_copy(rnn)}.items():
        model.save(tmp_path / f"{name}.keras")
        with zipfile.ZipFile(tmp_path / f"{name}.keras") as archive:
            (tmp_path / name).mkdir()
            weights = archive.extract("model.weights.h5", tmp_path / name)
        with h5py.File(weights) as h5:
            names: list[str] = []
            h5.visit(names.append)
        assert not [n for n in names if "optimizer" in n], name
    assert inference_copy(rnn).predict(reviews, verbose=0) == pytest.approx(rnn.predict(reviews, verbose=0))


def test_nbsvm_scores_the_sigmoid_of_its_distinct_ngram_weights_and_loads_back(tmp_path):
    from pipeline.layers import DistinctNgrams

    vocab_size, buckets = 10, 8
    weights = np.linspace(-1, 1, vocab_size + buckets)
    weights[0] = 0.0
    model = build_nbsvm_model(vocab_size, buckets, weights, bias=0.25)
    once = np.array([[0, 0, 3, 4]], dtype="int32")
    twice = np.array([[3, 4, 3, 4]], dtype="int32")  # the same words and bigram, repeated

    ids = np.asarray(DistinctNgrams(vocab_size, buckets)(once))[0]
    assert sorted(ids[ids > 0])[:2] == [3, 4] and (ids > 0).sum() == 3  # 2 words, 1 bigram
    expected = 1 / (1 + np.exp(-(0.25 + weights[ids].sum())))
    assert model.predict(once, verbose=0)[0, 0] == pytest.approx(expected, abs=1e-6)
    # presence, not counts: (4, 3) is one new bigram, nothing else counts twice
    ids_twice = np.asarray(DistinctNgrams(vocab_size, buckets)(twice))[0]
    assert (ids_twice > 0).sum() == 4 and len(set(ids_twice[ids_twice > 0])) == 4
    model.save(tmp_path / "nbsvm.keras")
    loaded = keras.saving.load_model(tmp_path / "nbsvm.keras", compile=False, safe_mode=True)
    assert loaded.predict(twice, verbose=0) == pytest.approx(model.predict(twice, verbose=0), abs=1e-6)


def test_a_preset_keeps_the_last_state_as_the_notebook_did():
    assert {preset.hparams.pooling for preset in PRESETS.values()} == {"last"}
