"""Keras layers of the bag-of-bigrams model, registered so a saved model loads them by name.

A serving module: the pyfunc imports it before loading the Keras file (``safe_mode`` stays on).
"""

from __future__ import annotations

import keras
from keras import ops


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
        first = ops.cast(tokens[:, :-1], "int64")
        second = ops.cast(tokens[:, 1:], "int64")
        ids = ops.mod(first * self.vocab_size + second, self.buckets - 1) + 1
        return ops.where((first > 0) & (second > 0), ids, ops.zeros_like(ids))

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
