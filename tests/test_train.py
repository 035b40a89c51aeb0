"""train: Keras training with early stopping, on a few hundred real reviews; the epoch callbacks."""

from __future__ import annotations

import logging
from dataclasses import replace

import numpy as np
import pytest

from pipeline.config import HParams, TrainConfig
from pipeline.data import Split
from pipeline.model import build_model
from pipeline.train import EpochMetrics, TimeBudget, TrainingDiverged, bigram_bucket_count, fit, train_model

TINY = HParams(cell="gru", units=4, embedding_dim=4)


@pytest.fixture(scope="module")
def tiny(sample_data):
    return TrainConfig(epochs=2, batch_size=64), sample_data


def test_nan_loss_raises_training_diverged(tiny):
    cfg, data = tiny
    poisoned = replace(data, train=replace(data.train, y=np.full(len(data.train), np.nan)))
    with pytest.raises(TrainingDiverged):
        train_model(HParams(cell="gru", units=4, embedding_dim=4), poisoned, cfg, epochs=2)


def test_training_keeps_the_best_epoch_and_reports_it(tiny):
    cfg, data = tiny
    _, result = train_model(HParams(cell="gru", units=8, embedding_dim=8, learning_rate=1e-2), data, cfg)
    values = result.history["val_accuracy"]
    assert result.epochs == len(values) == 2
    assert result.best_value == max(values)
    assert values[result.best_epoch - 1] == result.best_value
    assert set(result.history) >= {"loss", "accuracy", "val_loss", "val_accuracy"}


def test_a_tiny_model_overfits_a_handful_of_reviews(sample_data):
    keep = np.concatenate([np.flatnonzero(sample_data.train.y == label)[:8] for label in (0, 1)])
    few = sample_data.train.subset(keep)
    few = Split(few.x[:, -24:], few.y, np.minimum(few.lengths, 24))  # the last 24 tokens of 16 reviews
    model = build_model(
        HParams(cell="gru", units=16, embedding_dim=16, learning_rate=0.02), sample_data.vocab_size_effective
    )
    cfg = TrainConfig(batch_size=16, epochs=15, patience=15, monitor="val_loss", buckets=1)

    result = fit(model, few, few, cfg, widths=(24,))

    losses = result.history["loss"]
    assert result.epochs == 15
    assert losses[-1] < 0.2 * losses[0]
    assert result.history["val_accuracy"][result.best_epoch - 1] == 1.0


@pytest.mark.slow  # 5-12 s of real search or training: make test, not the edit-test loop
def test_a_time_budget_ends_training_before_an_epoch_that_would_overrun_it(tiny):
    cfg, data = tiny
    cfg = cfg.model_copy(update={"epochs": 3, "patience": 3})
    spent, roomy = TimeBudget(1e-3), TimeBudget(3600)

    _, stopped = train_model(TINY, data, cfg, callbacks=[spent])
    _, finished = train_model(TINY, data, cfg, callbacks=[roomy])

    assert (stopped.epochs, spent.stopped) == (1, True)  # the first epoch always runs
    assert (finished.epochs, roomy.stopped) == (3, False)
    capped = TimeBudget(1e-3)
    train_model(TINY, data, cfg, epochs=1, callbacks=[capped])
    assert not capped.stopped  # the epoch cap, not the budget, ended a one-epoch training


def test_each_epoch_is_logged_with_a_1_based_step_and_shown_as_progress(tiny, caplog):
    cfg, data = tiny
    logged: list[tuple[dict, int]] = []
    with caplog.at_level(logging.INFO, logger="pipeline.progress"):
        train_model(
            TINY,
            data,
            cfg,
            callbacks=[EpochMetrics(lambda m, step: logged.append((m, step)))],
            progress="final gru",
        )

    assert [step for _, step in logged] == [1, 2]
    assert {"loss", "accuracy", "val_loss", "val_accuracy"} <= set(logged[0][0])
    lines = [r.getMessage() for r in caplog.records if r.name == "pipeline.progress"]
    assert lines[0].startswith("final gru: epoch 1/2 loss=") and "val_accuracy=" in lines[0]
    assert lines[1].startswith("final gru: epoch 2/2")


def test_bigram_buckets_fit_the_data_and_never_pass_the_cap(sample_data):
    small = bigram_bucket_count(sample_data.train, sample_data.vocab_size_effective, 2**20)
    assert small & (small - 1) == 0 and small < 2**20  # a power of two, below the cap on 160 reviews
    assert bigram_bucket_count(sample_data.train, sample_data.vocab_size_effective, 64) == 64


def test_the_nbsvm_companion_learns_from_a_few_reviews_and_agrees_with_its_features(sample_data):
    from pipeline.train import NBSVM_C, nb_ratio, ngram_matrix, train_nbsvm_model

    cfg = TrainConfig(bigram_buckets=2**12)
    widths = (100, 400)
    model, result = train_nbsvm_model(sample_data, cfg, widths=widths)

    assert result.best_value > 0.6 and result.history == {"val_accuracy": [result.best_value]}
    # the Keras model is the logistic regression on the NB-scaled features, at any bucket width
    from sklearn.linear_model import LogisticRegression

    vocab, buckets = sample_data.vocab_size_effective, model.get_layer("ngram_ids").buckets
    features = ngram_matrix(sample_data.train.x, vocab, buckets)
    ratio = nb_ratio(features, sample_data.train.y)
    reference = LogisticRegression(C=NBSVM_C, solver="liblinear", dual=True, max_iter=1000)
    reference.fit(features.multiply(ratio).tocsr(), sample_data.train.y)
    val = ngram_matrix(sample_data.val.x, vocab, buckets).multiply(ratio).tocsr()
    expected = reference.predict_proba(val)[:, 1]
    assert model.predict(sample_data.val.x, verbose=0).reshape(-1) == pytest.approx(expected, abs=1e-5)
