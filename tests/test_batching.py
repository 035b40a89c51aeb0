"""batching: length buckets feed every review exactly once, wide enough, and score it like alone."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from pipeline.batching import (
    assign_buckets,
    bucket_widths,
    chunk_sizes,
    compile_scorer,
    epoch_batches,
    evaluation_dataset,
    padding_share,
    predict_proba,
    training_dataset,
    xla_scorer,
)


def _narrowest(widths, length):
    return min(width for width in widths if width >= length)


def test_every_review_once_per_epoch_each_batch_as_wide_as_its_longest_review():
    lengths = np.random.default_rng(0).integers(1, 17, size=53)  # none needs the full width
    widths, batch_size = (8, 16, 32), 8
    rng = np.random.default_rng(1)

    orders, shapes = [], []
    for _ in range(3):
        batches = epoch_batches(lengths, widths, batch_size, rng)
        members = np.concatenate([indices for _, indices in batches])
        np.testing.assert_array_equal(np.sort(members), np.arange(53))
        *full, (last_width, last) = batches
        assert [len(indices) for _, indices in full] == [8] * 6
        assert (last_width, len(last)) == (32, 5), "the left-over reviews are fed at full width"
        for width, indices in full:
            assert width >= lengths[indices].max()
        orders.append(members)
        shapes.append(Counter((width, len(indices)) for width, indices in batches))

    assert not np.array_equal(orders[0], orders[1]), "every epoch draws a new order"
    assert shapes[0] == shapes[1] == shapes[2], "the same batch shapes every epoch: XLA compiles once"


def test_a_batch_of_a_bucket_takes_that_buckets_width():
    lengths = np.array([1, 2, 3, 4, 9, 10, 11, 12, 30])
    batches = epoch_batches(lengths, (4, 16, 32), 4, np.random.default_rng(0))

    by_width = {width: sorted(lengths[indices].tolist()) for width, indices in batches}
    assert by_width == {4: [1, 2, 3, 4], 16: [9, 10, 11, 12], 32: [30]}


def test_batches_group_reviews_of_similar_length():
    lengths = np.random.default_rng(0).integers(1, 65, size=256)
    widths = (16, 32, 48, 64)

    batches = epoch_batches(lengths, widths, 16, np.random.default_rng(0))

    fed = sum(width * len(indices) for width, indices in batches)
    assert fed < 0.8 * 64 * len(lengths), "sorting inside windows should save padding"


def test_a_batch_larger_than_the_data_is_one_partial_batch():
    batches = epoch_batches(np.array([3, 1, 2]), (4, 8), 16, np.random.default_rng(0))

    assert len(batches) == 1
    assert batches[0][0] == 8
    assert sorted(batches[0][1].tolist()) == [0, 1, 2]


def test_bucket_widths_increase_and_end_at_max_len(sample_data):
    lengths, max_len = sample_data.train.lengths, sample_data.max_len

    widths = bucket_widths(lengths, buckets=4, max_len=max_len)

    assert widths[-1] == max_len
    assert 1 < len(widths) <= 4
    assert list(widths) == sorted(set(widths))
    assert all(width % 16 == 0 for width in widths[:-1])
    assert bucket_widths(lengths, buckets=1, max_len=max_len) == (max_len,)
    assert bucket_widths(np.array([5, 6, 7, 8]), buckets=4, max_len=300) == (16, 300)


def test_assign_buckets_picks_the_narrowest_width_that_holds_the_review():
    ids = assign_buckets(np.array([1, 16, 17, 32, 40]), (16, 32, 40))

    assert ids.tolist() == [0, 0, 1, 1, 2]


def test_padding_share():
    assert padding_share(np.array([16, 32, 16]), (16, 32)) == 0.0
    # fed 16 + 16 + 32 + 32 = 96 timesteps for 16 + 10 + 20 + 32 = 78 tokens
    assert padding_share(np.array([16, 10, 20, 32]), (16, 32)) == pytest.approx(18 / 96)
    assert padding_share(np.array([1, 1]), (8,)) == pytest.approx(7 / 8)


def _rows(x, y):
    """The multiset of (tokens without leading padding, label) pairs."""
    return Counter(
        (tuple(np.trim_zeros(row, "f").tolist()), int(label)) for row, label in zip(x, y, strict=True)
    )


def _batched_rows(dataset):
    rows = Counter()
    for tokens, labels in dataset:
        rows += _rows(tokens.numpy(), labels.numpy())
    return rows


def test_training_dataset_yields_each_review_with_its_label_once_per_pass(sample_data):
    train = sample_data.train
    widths = bucket_widths(train.lengths, 4, sample_data.max_len)
    expected = _rows(train.x, train.y)

    dataset = training_dataset(train.x, train.y, train.lengths, widths, batch_size=24, seed=3)

    for _ in range(2):
        assert _batched_rows(dataset) == expected
    shapes = {tuple(tokens.shape) for tokens, _ in dataset}
    assert {width for _, width in shapes} <= set(widths)
    assert (16, sample_data.max_len) in shapes, "the partial batch of 160 % 24 reviews"


def test_evaluation_dataset_yields_each_review_with_its_label_once(sample_data):
    val = sample_data.val
    widths = bucket_widths(sample_data.train.lengths, 4, sample_data.max_len)

    dataset = evaluation_dataset(val.x, val.y, val.lengths, widths, batch_size=8)

    assert _batched_rows(dataset) == _rows(val.x, val.y)
    for tokens, _ in dataset:
        assert tokens.shape[1] in widths


@pytest.fixture(scope="module")
def tiny_model(sample_data):
    from pipeline.config import HParams
    from pipeline.model import build_model

    return build_model(HParams(cell="gru", units=4, embedding_dim=4), len(sample_data.vocabulary) + 2)


def test_predict_proba_scores_in_input_order_as_if_each_review_were_alone(sample_data, tiny_model):
    test = sample_data.test.subset(np.arange(40))
    widths = bucket_widths(sample_data.train.lengths, 4, sample_data.max_len)
    buckets = assign_buckets(test.lengths, widths)

    scores = predict_proba(tiny_model, test.x, test.lengths, widths)

    assert scores.shape == (40,)
    assert scores.std() > 0, "an untrained model still scores reviews differently"
    assert len(np.unique(buckets)) > 1
    for bucket in np.unique(buckets):
        i = np.flatnonzero(buckets == bucket)[0]
        alone = predict_proba(tiny_model, test.x[[i]], test.lengths[[i]], widths)
        assert alone[0] == pytest.approx(scores[i], abs=1e-6)
    reverse = np.arange(len(test))[::-1]
    np.testing.assert_allclose(
        predict_proba(tiny_model, test.x[reverse], test.lengths[reverse], widths), scores[reverse], atol=1e-6
    )
    # compiled by XLA, the scores are Keras' own (``model.predict`` at each review's width)
    for i in range(0, 40, 7):
        width = widths[buckets[i]]
        expected = tiny_model.predict(test.x[[i], -width:], verbose=0)[0, 0]
        assert scores[i] == pytest.approx(float(expected), abs=1e-6)


def test_a_compiled_scorer_meets_no_new_shape_whatever_the_batch(sample_data, tiny_model):
    """After ``compile_scorer`` (what a server does before its first request), no batch size and
    no review length makes XLA compile again: no request waits on a compilation. And tf.function
    traced once for all of them: no ``tf.function retracing`` warning for a consumer."""
    widths = bucket_widths(sample_data.train.lengths, 4, sample_data.max_len)

    shapes = compile_scorer(tiny_model, widths)

    compiled = set(xla_scorer(tiny_model).shapes)
    assert shapes == len(compiled) == 4 * len(widths)
    test = sample_data.test
    for size in (1, 3, 9, 70, 600):
        rows = np.arange(size) % len(test)
        predict_proba(tiny_model, test.x[rows], test.lengths[rows], widths)
    assert xla_scorer(tiny_model).shapes == compiled
    assert xla_scorer(tiny_model).traces() == 1


class _WidthProbe:
    """A stand-in model whose score tells the width it was fed and the tokens it saw."""

    def predict_on_batch(self, x):
        assert len(x) in (1, 8, 64, 512)  # batches are padded to a few sizes: few XLA shapes
        return (x.shape[1] * 1_000_000 + x.sum(axis=1)).reshape(-1, 1)


def test_predict_proba_feeds_each_review_at_its_own_bucket_width(sample_data):
    test = sample_data.test
    widths = bucket_widths(sample_data.train.lengths, 4, sample_data.max_len)

    scores = predict_proba(_WidthProbe(), test.x, test.lengths, widths)

    expected = [
        _narrowest(widths, length) * 1_000_000 + row.sum()
        for row, length in zip(test.x, test.lengths, strict=True)
    ]
    np.testing.assert_array_equal(scores, expected)


@pytest.mark.parametrize("rows", [1, 2, 7, 9, 63, 65, 125, 300, 511, 513, 1000, 5000])
def test_scoring_calls_cover_every_row_with_less_padding_than_rows(rows):
    sizes = chunk_sizes(rows)

    assert set(sizes) <= {1, 8, 64, 512}, "few shapes: XLA compiles each (rows, width) once"
    assert rows <= sum(sizes) < 2 * rows
    assert sum(sizes) - sizes[-1] < rows, "only the last call holds padding rows"


def test_a_bucket_of_125_reviews_is_two_calls_of_64_not_one_of_512():
    assert chunk_sizes(125) == [64, 64]


def test_scores_computed_on_several_threads_equal_one_call_per_review(sample_data, tiny_model, monkeypatch):
    """Many calls (here ~30) run on the scoring threads; each review's score is still its own."""
    from pipeline import batching

    test = sample_data.test
    widths = bucket_widths(sample_data.train.lengths, 4, sample_data.max_len)
    monkeypatch.setattr(batching, "scoring_threads", lambda: 2)
    threaded = predict_proba(tiny_model, test.x, test.lengths, widths)
    monkeypatch.setattr(batching, "scoring_threads", lambda: 1)
    one_thread = predict_proba(tiny_model, test.x, test.lengths, widths)

    np.testing.assert_allclose(threaded, one_thread, atol=1e-6)
    for i in range(0, len(test), 97):
        alone = predict_proba(tiny_model, test.x[[i]], test.lengths[[i]], widths)
        assert alone[0] == pytest.approx(threaded[i], abs=1e-6)
