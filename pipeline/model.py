"""build_model(hparams): Embedding → (stacked, optionally bidirectional) RNN → Dense sigmoid;
build_bigram_model: its bag-of-bigrams companion; average_models: both as one model.

Inputs are token ids of any length, pre-padded with 0 (no mask): that keeps the layers eligible
for cuDNN kernels on a GPU and lets length buckets feed short batches. Dropout sits between
layers (``keras.layers.Dropout``), never as ``recurrent_dropout``, which would disable cuDNN.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import keras
import numpy as np

from pipeline.config import ConfigError, HParams, PipelineConfig
from pipeline.layers import DistinctNgrams, HashedBigrams, MaskedMax, MaskedMean, SumOverTime, WeightedAverage

_CELLS = {
    "simple_rnn": keras.layers.SimpleRNN,
    "lstm": keras.layers.LSTM,
    "gru": keras.layers.GRU,
}
_GATES = {"simple_rnn": 1, "lstm": 4, "gru": 3}  # weight matrices per cell, each units × (input + units)
_OPTIMIZERS = {"rmsprop": keras.optimizers.RMSprop, "adam": keras.optimizers.Adam}


def build_model(hparams: HParams, vocab_size: int, *, jit_compile: bool = False) -> keras.Model:
    """A compiled binary classifier over token ids in ``[0, vocab_size)``: Embedding → RNN layers →
    (with ``pooling="max_mean"``) the max and the mean of the last layer's states over the review's
    tokens → Dense sigmoid.

    ``jit_compile=True`` asks XLA to compile the train step; Keras' "auto" does not compile these
    RNNs on the TensorFlow backend, and compiling makes them about 3× faster on a CPU.
    """
    tokens = keras.Input(shape=(None,), dtype="int32", name="tokens")
    x = keras.layers.Embedding(vocab_size, hparams.embedding_dim, name="embedding")(tokens)
    over_time = hparams.pooling == "max_mean"
    for index in range(hparams.layers):
        rnn = _CELLS[hparams.cell](hparams.units, return_sequences=over_time or index < hparams.layers - 1)
        x = (keras.layers.Bidirectional(rnn) if hparams.bidirectional else rnn)(x)
        if hparams.dropout:
            x = keras.layers.Dropout(hparams.dropout)(x)
    if over_time:
        # The strongest and the average evidence anywhere in the review, not only what the last
        # state still remembers: +0.016 test accuracy on the full data (docs/benchmarks.md).
        x = keras.layers.Concatenate(name="pooled")(
            [MaskedMax(name="max_over_time")(x, tokens), MaskedMean(name="mean_over_time")(x, tokens)]
        )
    probability = keras.layers.Dense(1, activation="sigmoid", name="probability")(x)
    model = keras.Model(tokens, probability, name=f"{hparams.cell}_sentiment")
    model.compile(
        optimizer=_OPTIMIZERS[hparams.optimizer](learning_rate=hparams.learning_rate),
        loss="binary_crossentropy",
        metrics=["accuracy"],
        jit_compile=jit_compile,
    )
    return model


def multiply_adds_per_token(hparams: HParams) -> int:
    """The recurrent layers' multiply-adds for one token, all layers and directions: what a step of
    training and scoring costs, up to a constant (the embedding is a lookup, the output layer runs
    once per review)."""
    directions = 2 if hparams.bidirectional else 1
    inputs, total = hparams.embedding_dim, 0
    for _ in range(hparams.layers):
        total += directions * _GATES[hparams.cell] * hparams.units * (inputs + hparams.units)
        inputs = directions * hparams.units
    return total


# fastText-style models converge at this rate in 4-6 epochs on IMDB (Adam, batch 64).
BIGRAM_LEARNING_RATE = 2e-3


def build_bigram_model(vocab_size: int, buckets: int, dim: int, *, jit_compile: bool = False) -> keras.Model:
    """A compiled bag-of-bigrams classifier (fastText, Joulin et al. 2016) over the same token ids.

    The means of the review's word embeddings and of its hashed-bigram embeddings → Dense sigmoid.
    Word order within a review is lost beyond pairs, so its errors differ from an RNN's and the
    two averaged (``average_models``) often score better than either; ``blend`` decides on
    validation data whether they do.
    """
    tokens = keras.Input(shape=(None,), dtype="int32", name="tokens")
    words = keras.layers.Embedding(vocab_size, dim, name="word_embedding")(tokens)
    bigram_ids = HashedBigrams(vocab_size, buckets, name="bigram_ids")(tokens)
    bigrams = keras.layers.Embedding(buckets, dim, name="bigram_embedding")(bigram_ids)
    features = keras.layers.Concatenate(name="means")(
        [MaskedMean(name="word_mean")(words, tokens), MaskedMean(name="bigram_mean")(bigrams, bigram_ids)]
    )
    probability = keras.layers.Dense(1, activation="sigmoid", name="probability")(features)
    model = keras.Model(tokens, probability, name="bigram_sentiment")
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=BIGRAM_LEARNING_RATE),
        loss="binary_crossentropy",
        metrics=["accuracy"],
        jit_compile=jit_compile,
    )
    return model


def build_nbsvm_model(vocab_size: int, buckets: int, ngram_weights, bias: float) -> keras.Model:
    """NBSVM-LR (Wang & Manning 2012) over the same token ids, with weights fitted elsewhere
    (``train.train_nbsvm_model``): the sigmoid of ``bias`` plus the weights of the review's distinct
    unigrams and hashed bigrams (``DistinctNgrams``). ``ngram_weights`` has ``vocab_size + buckets``
    entries, entry 0 (padding) zero. Not compiled: it is never trained by Keras.
    """
    tokens = keras.Input(shape=(None,), dtype="int32", name="tokens")
    ids = DistinctNgrams(vocab_size, buckets, name="ngram_ids")(tokens)
    table = keras.layers.Embedding(vocab_size + buckets, 1, name="ngram_weight")
    score = SumOverTime(name="score")(table(ids))
    output = keras.layers.Dense(1, activation="sigmoid", name="probability")
    model = keras.Model(tokens, output(score), name="nbsvm_sentiment")
    table.set_weights([np.asarray(ngram_weights, dtype="float32").reshape(-1, 1)])
    output.set_weights([np.ones((1, 1), "float32"), np.asarray([bias], "float32")])
    return model


def inference_copy(model: keras.Model) -> keras.Model:
    """An uncompiled copy with the same weights: what is saved for serving. A compiled model (and
    ``clone_model`` of one) saves its optimizer state too: Adam's two moments of every weight,
    134 of the 209 MB of a blend with a 2^20-bucket bigram table."""
    copy = keras.Model.from_config(model.get_config())
    copy.set_weights(model.get_weights())
    return copy


def average_models(
    members: Sequence[keras.Model], weights: Sequence[float] | None = None, name: str = "blend"
) -> keras.Model:
    """One model whose probability is the (``weights``-weighted, default equal) mean of its
    members' (saved and served as one file). Members enter as uncompiled copies (``inference_copy``)."""
    weights = list(weights) if weights is not None else [1 / len(members)] * len(members)
    tokens = keras.Input(shape=(None,), dtype="int32", name="tokens")
    scores = [inference_copy(member)(tokens) for member in members]
    probability = WeightedAverage(weights, name="probability")(scores)
    return keras.Model(tokens, probability, name=name)


@dataclass(frozen=True)
class Preset:
    """A notebook model: its hyperparameters and the data options it was trained with."""

    hparams: HParams
    vocab_size: int
    max_len: int = 500

    def configure(self, cfg: PipelineConfig) -> PipelineConfig:
        """``cfg`` for this preset: its vocabulary unless one was set, and never the bigram
        companion (a preset is the notebook's model as written). Raises ConfigError when the
        companion was asked for."""
        if "bigram_buckets" in cfg.train.model_fields_set and cfg.train.bigram_buckets:
            raise ConfigError(
                "invalid option train.bigram_buckets (--bigram-buckets): a preset is the "
                "notebook's model as written, without the bigram companion"
            )
        data = {} if "vocab_size" in cfg.data.model_fields_set else {"vocab_size": self.vocab_size}
        return cfg.model_copy(
            update={
                "data": cfg.data.model_copy(update=data),
                "train": cfg.train.model_copy(update={"bigram_buckets": 0}),
            }
        )


_NOTEBOOK = {"embedding_dim": 16, "units": 8, "optimizer": "rmsprop", "learning_rate": 1e-4, "pooling": "last"}

# The Keras notebooks' models; parameter counts as Keras reports them (tests check these).
PRESETS: dict[str, Preset] = {
    # Embedding(500,16) + LSTM(8): 8,809
    "notebook-lstm": Preset(HParams(cell="lstm", **_NOTEBOOK), vocab_size=500),
    # Embedding(500,16) + 2×LSTM(8): 9,353
    "notebook-2lstm": Preset(HParams(cell="lstm", layers=2, dropout=0.2, **_NOTEBOOK), 500),
    # Embedding(500,16) + GRU(8): 8,633
    "notebook-gru": Preset(HParams(cell="gru", **_NOTEBOOK), vocab_size=500),
    # Embedding(300,16) + SimpleRNN(8): 5,009
    "notebook-simple-rnn": Preset(HParams(cell="simple_rnn", **_NOTEBOOK), vocab_size=300),
    # Embedding(10000,16) + 2×GRU(8): 161,065
    "notebook-2gru": Preset(HParams(cell="gru", layers=2, dropout=0.2, **_NOTEBOOK), 10_000),
    # The benchmark's reference recipe: Embedding(10000,16) + LSTM(8), length 500, RMSprop 1e-4.
    "notebook-recipe": Preset(HParams(cell="lstm", **_NOTEBOOK), vocab_size=10_000),
}
