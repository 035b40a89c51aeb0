"""The raw-text model registry consumers load: review strings in, probability and label out.

``SentimentModel`` is an MLflow pyfunc around the saved ``.keras`` file plus the vocabulary and
padding rules, so tokenization travels inside the model and consumers need no project code:
``mlflow.pyfunc.load_model("models:/NAME@champion").predict(pd.DataFrame({"text": [...]}))``.
It is logged with the few library modules it imports (``code_paths``) for the same reason.

Bad input is the caller's error, never a crash: a missing ``text`` column, a missing (None/NaN)
or non-string review raises an ``MlflowException`` (INVALID_PARAMETER_VALUE, so HTTP 400 from
``mlflow models serve``) naming the row. An empty review scores like an all-padding one, and a
review of any length keeps its last ``max_len`` tokens.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

import mlflow.pyfunc
import numpy as np
import pandas as pd

TEXT_COLUMN = "text"
KERAS_FILE = "model.keras"
PREPROCESSING_FILE = "preprocessing.json"
# The library modules the pyfunc imports when a consumer loads it.
_SERVING_MODULES = ("__init__.py", "serve.py", "data.py", "batching.py", "config.py", "layers.py")


class SentimentModel(mlflow.pyfunc.PythonModel):
    """pyfunc: DataFrame with a ``text`` column → DataFrame(probability, label)."""

    def load_context(self, context) -> None:
        import keras

        import pipeline.layers  # noqa: F401 (registers the bag-of-bigrams layers with Keras)
        from pipeline.data import Encoder

        self._keras = keras.saving.load_model(context.artifacts["keras_model"], compile=False, safe_mode=True)
        rules = json.loads(Path(context.artifacts["preprocessing"]).read_text())
        self._encode = Encoder(rules["vocabulary"], rules["max_len"])
        self._widths = tuple(rules["widths"])
        self._threshold = float(rules["threshold"])

    def predict(self, context, model_input, params=None) -> pd.DataFrame:
        from mlflow.exceptions import MlflowException
        from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

        from pipeline.batching import predict_proba

        try:
            texts = review_texts(model_input)
        except InputError as error:
            raise MlflowException(str(error), error_code=INVALID_PARAMETER_VALUE) from None
        x, lengths = self._encode(texts)
        probability = predict_proba(self._keras, x, lengths, self._widths)
        label = np.where(probability >= self._threshold, "positive", "negative")
        return pd.DataFrame({"probability": probability, "label": label})


class InputError(ValueError):
    """Input the model cannot score; the message names the row or column at fault."""


def review_texts(model_input) -> list[str]:
    """The review strings of a DataFrame's ``text`` column, a ``{"text": [...]}`` dict or a sequence.

    Raises InputError naming the missing column or the first row that is not a string.
    """
    if isinstance(model_input, pd.DataFrame | dict):
        if TEXT_COLUMN not in model_input:
            columns = list(model_input.columns if isinstance(model_input, pd.DataFrame) else model_input)
            raise InputError(f"input has no '{TEXT_COLUMN}' column (columns: {columns})")
        values = model_input[TEXT_COLUMN]
    else:
        values = model_input
    if isinstance(values, str):
        values = [values]
    values = values.tolist() if isinstance(values, np.ndarray | pd.Series) else list(values)
    # The server turns {"inputs": ["a", "b"]} under the signature's Any-typed column into one row
    # holding the whole list: that row is the list of reviews.
    if len(values) == 1 and isinstance(values[0], list | tuple | np.ndarray):
        values = list(values[0])
    for row, value in enumerate(values):
        if not isinstance(value, str):
            got = "a missing value" if is_missing(value) else type(value).__name__
            raise InputError(f"row {row}: '{TEXT_COLUMN}' must be a string, got {got}")
    return values


def is_missing(value) -> bool:
    """None or NaN: how pandas and JSON spell an absent review."""
    return value is None or (isinstance(value, float) and np.isnan(value))


def load_scorer(model_uri: str, tracking_uri: str | None = None) -> Callable[[Sequence[str]], pd.DataFrame]:
    """Load a registered (or any) pyfunc and return ``score(texts) → DataFrame(probability, label)``.

    ``model_uri`` is any MLflow model URI (``models:/NAME@champion``, ``runs:/…``, a folder).
    Raises MlflowException when the model cannot be found or loaded.
    """
    import mlflow

    if tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)
        mlflow.set_registry_uri(tracking_uri)
    model = mlflow.pyfunc.load_model(model_uri)

    def score(texts: Sequence[str]) -> pd.DataFrame:
        return model.predict(pd.DataFrame({TEXT_COLUMN: list(texts)}))

    return score


def stage_model(
    keras_model, vocabulary: Sequence[str], max_len: int, widths: Sequence[int], folder: Path
) -> tuple[dict[str, str], list[str]]:
    """Write what the pyfunc needs under ``folder``: (artifacts, code_paths) for ``log_model``."""
    from pipeline.evaluate import THRESHOLD  # training side only: not among _SERVING_MODULES

    folder.mkdir(parents=True, exist_ok=True)
    keras_path = folder / KERAS_FILE
    keras_model.save(keras_path)
    rules = {
        "vocabulary": list(vocabulary),
        "max_len": max_len,
        "widths": list(widths),
        "threshold": THRESHOLD,
    }
    rules_path = folder / PREPROCESSING_FILE
    rules_path.write_text(json.dumps(rules))
    code = folder / "code" / "pipeline"
    code.mkdir(parents=True, exist_ok=True)
    for module in _SERVING_MODULES:
        shutil.copy(Path(__file__).parent / module, code / module)
    artifacts = {"keras_model": str(keras_path), "preprocessing": str(rules_path)}
    return artifacts, [str(code)]
