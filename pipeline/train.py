"""fit(model, data, cfg, callbacks) → TrainResult: Keras training with early stopping.

Callbacks for tracking and pruning are injected by the caller; this module knows neither MLflow
nor Optuna (``EpochMetrics`` hands each epoch's numbers to whatever logging function it is
given). A loss that turns NaN stops training and raises TrainingDiverged.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

import keras
import numpy as np

from pipeline.batching import bucket_widths, evaluation_dataset, predict_proba, training_dataset
from pipeline.config import JIT_MIN_REVIEW_EPOCHS, HParams, TrainConfig
from pipeline.data import PreparedData, Split
from pipeline.model import build_bigram_model, build_model, build_nbsvm_model
from pipeline.progress import Progress
from pipeline.signals import deferred, raise_if_stopped


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


@dataclass(frozen=True)
class TrainResult:
    history: dict[str, list[float]]  # per-epoch loss, accuracy, val_loss, val_accuracy
    epochs: int  # epochs run (early stopping may end before the cap)
    best_epoch: int  # 1-based epoch whose weights the model holds
    best_value: float  # the monitored metric at best_epoch
    seconds: float
    widths: tuple[int, ...]  # bucket widths used for batches

    @property
    def seconds_per_epoch(self) -> float:
        return self.seconds / max(self.epochs, 1)


class EpochMetrics(keras.callbacks.Callback):
    """Each epoch's loss, accuracy, val_loss, val_accuracy to ``log(metrics, step)`` (step = epoch,
    1-based), names prefixed (``bigrams_val_accuracy``) when two models train under one run."""

    def __init__(self, log: Callable[[Mapping[str, float], int], None], prefix: str = "") -> None:
        super().__init__()
        self._log = log
        self._prefix = prefix

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        metrics = {self._prefix + k: v for k, v in (logs or {}).items() if k != "learning_rate"}
        self._log(metrics, epoch + 1)


class _StopOnSignal(keras.callbacks.Callback):
    """Ctrl-C or SIGTERM during ``fit`` stops it at the next batch end, from Python: an exception
    raised inside TensorFlow's own calls can be swallowed or leave its graph half-built."""

    def on_train_batch_end(self, batch, logs=None) -> None:
        raise_if_stopped()

    def on_test_batch_end(self, batch, logs=None) -> None:
        raise_if_stopped()


class TimeBudget(keras.callbacks.Callback):
    """Ends training before an epoch that would finish more than ``seconds`` after training began,
    judging the next epoch by the longest so far (the first holds XLA's compilations, so the guess
    errs long). The first epoch always runs; early stopping still restores the best epoch's
    weights when training ends. ``stopped`` tells whether the budget ended it."""

    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds = seconds
        self.stopped = False

    def on_train_begin(self, logs=None) -> None:
        self._started = time.perf_counter()
        self._longest_epoch = 0.0
        self.stopped = False  # of this training, when the callback is reused

    def on_epoch_begin(self, epoch: int, logs=None) -> None:
        self._epoch_started = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        now = time.perf_counter()
        self._longest_epoch = max(self._longest_epoch, now - self._epoch_started)
        last = epoch + 1 >= self.params.get("epochs", math.inf)  # the cap ends it anyway
        if not last and now - self._started + self._longest_epoch > self.seconds:
            self.model.stop_training = True
            self.stopped = True


class _EpochProgress(keras.callbacks.Callback):
    """Epoch i/n with loss, val_accuracy and seconds, as ``progress.Progress`` shows it."""

    def __init__(self, label: str, epochs: int) -> None:
        super().__init__()
        self._progress = Progress(label, epochs, "epoch")
        self._started = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        logs = logs or {}
        numbers = {k: logs[k] for k in ("loss", "val_accuracy") if k in logs}
        self._progress.update(epoch + 1, numbers | {"s": round(time.perf_counter() - self._started, 1)})

    def on_train_end(self, logs=None) -> None:
        self._progress.close()


def widths_for(train: Split, cfg: TrainConfig, max_len: int) -> tuple[int, ...]:
    """The bucket widths for this training split (one width, max_len, without bucketing)."""
    return bucket_widths(train.lengths, cfg.buckets, max_len)


def fit(
    model: keras.Model,
    train: Split,
    val: Split,
    cfg: TrainConfig,
    *,
    widths: tuple[int, ...],
    epochs: int | None = None,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    progress: str | None = None,
) -> TrainResult:
    """Train until ``epochs`` (default ``cfg.epochs``) or early stopping on ``cfg.monitor``.

    The model ends with the weights of its best epoch. ``progress`` names the model in a
    per-epoch progress line. Raises TrainingDiverged on NaN loss.
    """
    keras.utils.set_random_seed(cfg.seed)
    train_batches = training_dataset(train.x, train.y, train.lengths, widths, cfg.batch_size, seed=cfg.seed)
    val_batches = evaluation_dataset(val.x, val.y, val.lengths, widths)
    stopper = keras.callbacks.EarlyStopping(
        monitor=cfg.monitor, patience=cfg.patience, restore_best_weights=True
    )
    epochs = epochs or cfg.epochs
    shown = [_EpochProgress(progress, epochs)] if progress else []
    started = time.perf_counter()
    with deferred():
        history = model.fit(
            train_batches,
            validation_data=val_batches,
            epochs=epochs,
            callbacks=[_StopOnSignal(), keras.callbacks.TerminateOnNaN(), stopper, *callbacks, *shown],
            shuffle=False,  # the batches are shuffled already, within and across length buckets
            verbose=0,
        ).history
    seconds = time.perf_counter() - started
    losses = history.get("loss", [])
    if not losses or not all(math.isfinite(v) for v in losses):
        raise TrainingDiverged(f"training loss became {losses[-1] if losses else 'undefined'}")
    values = np.asarray(history[cfg.monitor])
    best = int(np.argmax(values) if cfg.monitor == "val_accuracy" else np.argmin(values))
    return TrainResult(
        history={k: [float(v) for v in vs] for k, vs in history.items()},
        epochs=len(losses),
        best_epoch=best + 1,
        best_value=float(values[best]),
        seconds=seconds,
        widths=widths,
    )


def _use_jit(cfg: TrainConfig, data: PreparedData, epochs: int) -> bool:
    if cfg.jit_compile is not None:
        return cfg.jit_compile
    return len(data.train) * epochs >= JIT_MIN_REVIEW_EPOCHS


def train_model(
    hparams: HParams,
    data: PreparedData,
    cfg: TrainConfig,
    *,
    epochs: int | None = None,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    progress: str | None = None,
) -> tuple[keras.Model, TrainResult]:
    """Build a fresh model for ``hparams`` and fit it on ``data.train``, validating on ``data.val``."""
    keras.backend.clear_session()  # trials must not pile up graphs and layer names
    epochs = epochs or cfg.epochs
    model = build_model(hparams, data.vocab_size_effective, jit_compile=_use_jit(cfg, data, epochs))
    widths = widths_for(data.train, cfg, data.max_len)
    result = fit(
        model, data.train, data.val, cfg, widths=widths, epochs=epochs, callbacks=callbacks, progress=progress
    )
    return model, result


def train_and_val(data: PreparedData) -> PreparedData:
    """``data`` whose training split is its training and validation reviews together (for a refit
    once every choice has been made on validation; its ``val`` is then no held-out data)."""
    both = Split(
        np.concatenate([data.train.x, data.val.x]),
        np.concatenate([data.train.y, data.val.y]),
        np.concatenate([data.train.lengths, data.val.lengths]),
    )
    return replace(data, train=both)


def bigram_bucket_count(train: Split, vocab_size: int, cap: int) -> int:
    """Buckets for the hashed bigrams: a power of two ≥ the distinct bigrams of the training
    reviews, at most ``cap``: a small dataset gets a small model, the full one ``cap``."""
    first, second = train.x[:, :-1].astype(np.int64), train.x[:, 1:]
    distinct = np.unique((first * vocab_size + second)[(first > 0) & (second > 0)]).size
    return int(min(cap, 2 ** math.ceil(math.log2(distinct + 2))))


def train_bigram_model(
    data: PreparedData,
    cfg: TrainConfig,
    *,
    widths: tuple[int, ...],
    callbacks: Sequence[keras.callbacks.Callback] = (),
    progress: str | None = None,
) -> tuple[keras.Model, TrainResult]:
    """The bag-of-bigrams companion (``build_bigram_model``), fitted like the RNN: same splits,
    batches, early stopping and epoch cap. Requires ``cfg.bigram_buckets > 0``."""
    buckets = bigram_bucket_count(data.train, data.vocab_size_effective, cfg.bigram_buckets)
    model = build_bigram_model(
        data.vocab_size_effective, buckets, cfg.bigram_dim, jit_compile=_use_jit(cfg, data, cfg.epochs)
    )
    return model, fit(model, data.train, data.val, cfg, widths=widths, callbacks=callbacks, progress=progress)


# NBSVM's logistic regression: inverse L2 strength and the naive-Bayes smoothing of Wang & Manning.
NBSVM_C = 0.3  # best of 0.03/0.1/0.3/1 on the full validation split (0.900/0.902/0.905/0.903)
NBSVM_ALPHA = 1.0


def ngram_matrix(x: np.ndarray, vocab_size: int, buckets: int, chunk: int = 2048):
    """Binary (reviews × ``vocab_size + buckets``) CSR matrix of each review's distinct unigrams and
    hashed bigrams, computed by the served model's own layer (``DistinctNgrams``), so training
    features and served features cannot drift apart."""
    from scipy.sparse import csr_matrix

    from pipeline.layers import DistinctNgrams

    layer = DistinctNgrams(vocab_size, buckets)
    rows, cols = [], []
    for start in range(0, len(x), chunk):
        ids = np.asarray(layer(x[start : start + chunk]))
        row, col = np.nonzero(ids)
        rows.append(row + start)
        cols.append(ids[row, col])
    rows, cols = np.concatenate(rows or [[]]), np.concatenate(cols or [[]])
    return csr_matrix((np.ones(len(rows), "float32"), (rows, cols)), shape=(len(x), vocab_size + buckets))


def nb_ratio(features, y: np.ndarray, alpha: float = NBSVM_ALPHA) -> np.ndarray:
    """The naive-Bayes log-count ratio of each feature, ``log((p/|p|₁)/(q/|q|₁))``; 0 for padding."""
    positive = alpha + np.asarray(features[y == 1].sum(axis=0)).ravel()
    negative = alpha + np.asarray(features[y == 0].sum(axis=0)).ravel()
    ratio = np.log((positive / positive.sum()) / (negative / negative.sum()))
    ratio[0] = 0.0
    return ratio


def train_nbsvm_model(
    data: PreparedData, cfg: TrainConfig, *, widths: tuple[int, ...]
) -> tuple[keras.Model, TrainResult]:
    """The NBSVM companion: binary unigram + hashed-bigram features scaled by their NB ratio, a
    logistic regression fitted on ``data.train`` by scikit-learn (seconds), its weights copied into
    a Keras model (``build_nbsvm_model``) so the served blend stays one Keras file. The result holds
    one "epoch": its validation accuracy."""
    from sklearn.linear_model import LogisticRegression

    started = time.perf_counter()
    vocab_size = data.vocab_size_effective
    buckets = bigram_bucket_count(data.train, vocab_size, cfg.bigram_buckets)
    features = ngram_matrix(data.train.x, vocab_size, buckets)
    ratio = nb_ratio(features, data.train.y)
    classifier = LogisticRegression(C=NBSVM_C, solver="liblinear", dual=True, max_iter=1000)
    classifier.fit(features.multiply(ratio).tocsr(), data.train.y)
    model = build_nbsvm_model(
        vocab_size, buckets, classifier.coef_.ravel() * ratio, float(classifier.intercept_[0])
    )
    probability = predict_proba(model, data.val.x, data.val.lengths, widths)
    accuracy = float(np.mean((probability >= 0.5) == data.val.y.astype(bool)))
    return model, TrainResult(
        history={"val_accuracy": [accuracy]},
        epochs=1,
        best_epoch=1,
        best_value=accuracy,
        seconds=time.perf_counter() - started,
        widths=widths,
    )
