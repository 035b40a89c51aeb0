"""choose_blend: the RNN alone, or the RNN averaged with its bag-of-bigrams companion, whichever
scores higher on the validation split (the test split never takes part in the choice).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import keras
import numpy as np

from pipeline.batching import predict_proba
from pipeline.data import Split
from pipeline.evaluate import THRESHOLD
from pipeline.model import average_models


@dataclass(frozen=True)
class BlendChoice:
    model: keras.Model
    chosen: Literal["rnn", "rnn+bigrams"]
    val_accuracy: dict[str, float]  # rnn, bigrams, rnn+bigrams

    def metrics(self) -> dict[str, float]:
        """``val_accuracy_<candidate>``: the three validation accuracies behind the choice."""
        return {f"val_accuracy_{name.replace('+', '_')}": value for name, value in self.val_accuracy.items()}


def choose_blend(rnn: keras.Model, bigrams: keras.Model, val: Split, widths: tuple[int, ...]) -> BlendChoice:
    """The blend when its validation accuracy beats the RNN's, else the RNN; ties keep the RNN."""
    rnn_probability = predict_proba(rnn, val.x, val.lengths, widths)
    bigram_probability = predict_proba(bigrams, val.x, val.lengths, widths)
    candidates = {
        "rnn": rnn_probability,
        "bigrams": bigram_probability,
        "rnn+bigrams": (rnn_probability + bigram_probability) / 2,
    }
    accuracy = {
        name: float(np.mean((probability >= THRESHOLD) == val.y.astype(bool)))
        for name, probability in candidates.items()
    }
    if accuracy["rnn+bigrams"] > accuracy["rnn"]:
        return BlendChoice(average_models([rnn, bigrams]), "rnn+bigrams", accuracy)
    return BlendChoice(rnn, "rnn", accuracy)
