"""choose_blend: the RNN alone, or a weighted average of the RNN and its bag-of-n-grams companion,
whichever scores higher on the validation split (the test split never takes part in the choice).
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

# The RNN's weights tried in the blend. The companion alone is never served (its weight stays
# below 1), and ties go to the weight nearest 0.5: equal weights unless validation says otherwise.
RNN_WEIGHTS = tuple(round(0.05 * step, 2) for step in range(1, 20))


@dataclass(frozen=True)
class BlendChoice:
    model: keras.Model
    chosen: Literal["rnn", "rnn+bigrams"]
    val_accuracy: dict[str, float]  # rnn, bigrams, rnn+bigrams (at the chosen weight)
    rnn_weight: float = 1.0  # the RNN's share of the served probability

    def metrics(self) -> dict[str, float]:
        """``val_accuracy_<candidate>``: the three validation accuracies behind the choice, and
        ``blend_weight_rnn``, the RNN's weight in the best blend."""
        accuracy = {
            f"val_accuracy_{name.replace('+', '_')}": value for name, value in self.val_accuracy.items()
        }
        return accuracy | {"blend_weight_rnn": self.rnn_weight}


def _accuracy(probability: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean((probability >= THRESHOLD) == y.astype(bool)))


def choose_blend(rnn: keras.Model, bigrams: keras.Model, val: Split, widths: tuple[int, ...]) -> BlendChoice:
    """The best weighted blend (``RNN_WEIGHTS``) when its validation accuracy beats the RNN's, else
    the RNN; ties keep the RNN."""
    rnn_probability = predict_proba(rnn, val.x, val.lengths, widths)
    bigram_probability = predict_proba(bigrams, val.x, val.lengths, widths)
    blends = {w: _accuracy(w * rnn_probability + (1 - w) * bigram_probability, val.y) for w in RNN_WEIGHTS}
    weight = max(RNN_WEIGHTS, key=lambda w: (blends[w], -abs(w - 0.5)))
    accuracy = {
        "rnn": _accuracy(rnn_probability, val.y),
        "bigrams": _accuracy(bigram_probability, val.y),
        "rnn+bigrams": blends[weight],
    }
    if accuracy["rnn+bigrams"] > accuracy["rnn"]:
        model = average_models([rnn, bigrams], [weight, 1 - weight])
        return BlendChoice(model, "rnn+bigrams", accuracy, weight)
    return BlendChoice(rnn, "rnn", accuracy)
