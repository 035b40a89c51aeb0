"""Keras layers of the bag-of-bigrams model, registered so a saved model loads them by name.

A serving module: the pyfunc imports it before loading the Keras file (``safe_mode`` stays on).
"""

from __future__ import annotations

import keras
from keras import ops


def bigram_ids(tokens, vocab_size: int, buckets: int):
    """Each pair of adjacent token ids → a bucket in ``[1, buckets)``; 0 where a pair touches padding."""
    first = ops.cast(tokens[:, :-1], "int64")
    second = ops.cast(tokens[:, 1:], "int64")
    ids = ops.mod(first * vocab_size + second, buckets - 1) + 1
    return ops.where((first > 0) & (second > 0), ids, ops.zeros_like(ids))


@keras.saving.register_keras_serializable(package="pipeline")
class HashedBigrams(keras.layers.Layer):
    """Token ids (pre-padded with 0) → an id in ``[1, buckets)`` for each pair of adjacent tokens.

    A pair that touches padding gets 0, so the non-zero ids are exactly the review's own bigrams,
    whatever width it is fed at.
    """

    def __init__(self, vocab_size: int, buckets: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.vocab_size = vocab_size
        self.buckets = buckets

    def call(self, tokens):
        return bigram_ids(tokens, self.vocab_size, self.buckets)

    def compute_output_spec(self, tokens):
        return keras.KerasTensor((tokens.shape[0], None), dtype="int64")

    def get_config(self) -> dict:
        return {**super().get_config(), "vocab_size": self.vocab_size, "buckets": self.buckets}


@keras.saving.register_keras_serializable(package="pipeline")
class MaskedMean(keras.layers.Layer):
    """Mean of the vectors whose id is not 0 (padding); zeros for a review with none."""

    def call(self, vectors, ids):
        mask = ops.cast(ops.expand_dims(ids > 0, -1), vectors.dtype)
        return ops.sum(vectors * mask, axis=1) / ops.maximum(ops.sum(mask, axis=1), 1.0)

    def compute_output_shape(self, vectors_shape, ids_shape):
        return (vectors_shape[0], vectors_shape[-1])


@keras.saving.register_keras_serializable(package="pipeline")
class MaskedMax(keras.layers.Layer):
    """Largest value of each feature over the time steps whose id is not 0 (padding); zeros for a
    review with none."""

    def call(self, vectors, ids):
        mask = ops.expand_dims(ids > 0, -1)
        largest = ops.max(ops.where(mask, vectors, ops.full_like(vectors, -1e9)), axis=1)
        return ops.where(ops.any(mask, axis=1), largest, ops.zeros_like(largest))

    def compute_output_shape(self, vectors_shape, ids_shape):
        return (vectors_shape[0], vectors_shape[-1])


@keras.saving.register_keras_serializable(package="pipeline")
class DistinctNgrams(keras.layers.Layer):
    """Token ids → the ids of the review's distinct unigrams and hashed bigrams, each once.

    Unigram ``t`` keeps id ``t``; bigram bucket ``b`` (``HashedBigrams``) becomes ``vocab_size + b``;
    padding and repeats become 0. NBSVM reads presence, not counts (Wang & Manning 2012: binarized
    features score better), so a repeat must not count twice: ids are sorted per review and an id
    equal to its left neighbour is zeroed. Output width 2·T-1, in ``[0, vocab_size + buckets)``.
    """

    def __init__(self, vocab_size: int, buckets: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.vocab_size = vocab_size
        self.buckets = buckets

    def call(self, tokens):
        bigrams = bigram_ids(tokens, self.vocab_size, self.buckets)
        bigrams = ops.where(bigrams > 0, bigrams + self.vocab_size, ops.zeros_like(bigrams))
        ids = ops.sort(ops.concatenate([ops.cast(tokens, "int64"), bigrams], axis=1), axis=1)
        repeat = ops.concatenate(
            [ops.zeros_like(ids[:, :1], dtype="bool"), ids[:, 1:] == ids[:, :-1]], axis=1
        )
        return ops.where(repeat, ops.zeros_like(ids), ids)

    def compute_output_spec(self, tokens):
        return keras.KerasTensor((tokens.shape[0], None), dtype="int64")

    def get_config(self) -> dict:
        return {**super().get_config(), "vocab_size": self.vocab_size, "buckets": self.buckets}


@keras.saving.register_keras_serializable(package="pipeline")
class SumOverTime(keras.layers.Layer):
    """(batch, time, features) → (batch, features): the sum over time (NBSVM's linear score)."""

    def call(self, vectors):
        return ops.sum(vectors, axis=1)

    def compute_output_shape(self, shape):
        return (shape[0], shape[-1])


@keras.saving.register_keras_serializable(package="pipeline")
class WeightedAverage(keras.layers.Layer):
    """``Σ wᵢ·xᵢ`` of its inputs with fixed weights that sum to 1 (the blend chosen on validation)."""

    def __init__(self, blend_weights: list[float], **kwargs) -> None:
        super().__init__(**kwargs)
        self.blend_weights = [float(w) for w in blend_weights]

    def call(self, inputs):
        return sum(w * x for w, x in zip(self.blend_weights, inputs, strict=True))

    def compute_output_shape(self, shapes):
        return shapes[0]

    def get_config(self) -> dict:
        return {**super().get_config(), "blend_weights": self.blend_weights}
