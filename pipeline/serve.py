"""The raw-text model registry consumers load: review strings in, probability and label out.

``SentimentModel`` is an MLflow pyfunc around the saved ``.keras`` file plus the vocabulary and
padding rules, so tokenization travels inside the model and consumers need no project code:
``mlflow.pyfunc.load_model("models:/NAME@champion").predict(pd.DataFrame({"text": [...]}))``.
It is logged with the few library modules it imports (``code_paths``) for the same reason, as a
model from code (``serve_entry.py``, which MLflow runs on load): nothing in it is pickled.

Bad input is the caller's error, never a crash: a missing ``text`` column, a missing (None/NaN)
or non-string review raises an ``MlflowException`` (INVALID_PARAMETER_VALUE, so HTTP 400 from
``mlflow models serve``) naming the row. An empty review scores like an all-padding one, and a
review of any length keeps its last ``max_len`` tokens.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd
from mlflow.models import set_model

TEXT_COLUMN = "text"
KERAS_FILE = "model.keras"
PREPROCESSING_FILE = "preprocessing.json"
_PACKAGE = Path(__file__).parent
MODEL_CODE = _PACKAGE / "serve_entry.py"  # the model from code MLflow runs on load
__all__ = ["SentimentModel", "set_model"]  # set_model: for serve_entry, the one MLflow-free importer
_INPUT_EXAMPLE = [
    "A moving, beautifully acted film; I was hooked from the first scene.",
    "Dull, predictable and far too long. I want my two hours back.",
]


# MLflow advises type hints on ``predict`` whenever a PythonModel subclass is defined; they would
# turn on its input conversion, and the untyped ``text`` column is what lets a bad row be named.
@contextmanager
def _without_type_hint_advice() -> Iterator[None]:
    """Drop that one advice while the class is defined or saved. MLflow shows it through its own
    ``simplefilter("once")``, which outranks any filter set here, so it is dropped at display."""
    show = warnings.showwarning

    def quiet(message, *args, **kwargs) -> None:
        if "Add type hints to the `predict` method" not in str(message):
            show(message, *args, **kwargs)

    warnings.showwarning = quiet
    try:
        yield
    finally:
        warnings.showwarning = show


# What TensorFlow's native code prints at import whatever TF_CPP_MIN_LOG_LEVEL says: absl's
# banner, its info lines (oneDNN, CPU features) and the CPU-features line's second line.
_TF_START_UP = re.compile(
    r"WARNING: All log messages before absl::InitializeLog|I\d{4} |To enable the following instructions"
)


@contextmanager
def _quiet_tensorflow() -> Iterator[None]:
    """Import TensorFlow in the block without its C++ chatter on stderr, for consumers who only
    load the model: ``TF_CPP_MIN_LOG_LEVEL`` 2 unless they set it (no XLA service or
    compilation lines later), and the lines its native code writes while importing, which that
    setting does not reach, held back and dropped; anything else written meanwhile is passed on.

    ``TF_CPP_MIN_LOG_LEVEL=0`` shows everything, as TensorFlow does; so does a process that
    imported TensorFlow already (nothing to hide then).
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if "tensorflow" in sys.modules or os.environ["TF_CPP_MIN_LOG_LEVEL"] == "0":
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            lines = held.read().decode("utf-8", errors="replace").splitlines(keepends=True)
            sys.stderr.write("".join(line for line in lines if not _TF_START_UP.match(line)))


with _without_type_hint_advice():

    class SentimentModel(mlflow.pyfunc.PythonModel):
        """pyfunc: DataFrame with a ``text`` column → DataFrame(probability, label)."""

        def load_context(self, context) -> None:
            with _quiet_tensorflow():
                import keras

                import pipeline.layers  # noqa: F401 (registers the bag-of-bigrams layers with Keras)
            from pipeline.data import Encoder

            self._keras = keras.saving.load_model(
                context.artifacts["keras_model"], compile=False, safe_mode=True
            )
            rules = json.loads(Path(context.artifacts["preprocessing"]).read_text())
            self._encode = Encoder(rules["vocabulary"], rules["max_len"])
            self._widths = tuple(rules["widths"])
            self._threshold = float(rules["threshold"])

        def compile_scorer(self) -> int:
            """Compile the model for every input shape scoring can use (``batching.compile_scorer``):
            what a server does once before it answers, so no request waits on XLA."""
            from pipeline.batching import compile_scorer

            return compile_scorer(self._keras, self._widths)

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


def load_scorer(model_path: str | Path) -> Callable[[Sequence[str]], pd.DataFrame]:
    """Load the pyfunc in a local folder and return ``score(texts) → DataFrame(probability, label)``.

    ``Stores.download_model`` turns a ``models:/`` or ``runs:/`` URI into such a folder.
    Raises MlflowException when the folder holds no loadable model.
    """
    model = mlflow.pyfunc.load_model(str(model_path))

    def score(texts: Sequence[str]) -> pd.DataFrame:
        return model.predict(pd.DataFrame({TEXT_COLUMN: list(texts)}))

    return score


def scoring_app(model_path: str | Path, wrap: Callable[[Any], Any] | None = None) -> Any:
    """MLflow's own scoring app (FastAPI: ``/invocations``, ``/ping``, ``/health``, ``/version``,
    the contract of ``mlflow models serve``) for the pyfunc in a local folder, loaded once.

    ``wrap`` may put a proxy around the loaded model (it keeps ``predict`` and ``metadata``).
    Here rather than in ``http_server``: this module is the one that talks to MLflow's pyfunc.
    """
    from mlflow.pyfunc import scoring_server

    model = mlflow.pyfunc.load_model(str(model_path))
    return scoring_server.init(wrap(model) if wrap is not None else model)


def save_model(
    keras_model,
    vocabulary: Sequence[str],
    max_len: int,
    widths: Sequence[int],
    threshold: float,
    folder: Path,
) -> Path:
    """Write the raw-text pyfunc as an MLflow model folder ``folder`` (see ``pyfunc_spec``)."""
    staging = folder.with_name(folder.name + "-staging")
    spec = pyfunc_spec(keras_model, vocabulary, max_len, widths, threshold, staging)
    with _without_type_hint_advice():  # given again when the model is saved
        mlflow.pyfunc.save_model(folder, **spec)
    shutil.rmtree(staging)
    return folder


def pyfunc_spec(
    keras_model,
    vocabulary: Sequence[str],
    max_len: int,
    widths: Sequence[int],
    threshold: float,
    staging: Path,
) -> dict[str, Any]:
    """Write the model's files (Keras file, preprocessing rules, the library modules it imports)
    into ``staging`` and return the keyword arguments of ``mlflow.pyfunc.save_model``/``log_model``:
    the model from code (``serve_entry.py``), its artifacts and code, signature, input example and
    pinned requirements. ``staging`` must outlive the save or log call."""
    keras_path = staging / KERAS_FILE
    staging.mkdir(parents=True, exist_ok=True)
    keras_model.save(keras_path)
    rules = {
        "vocabulary": list(vocabulary),
        "max_len": max_len,
        "widths": list(widths),
        "threshold": threshold,
    }
    rules_path = staging / PREPROCESSING_FILE
    rules_path.write_text(json.dumps(rules))
    code = staging / "code" / "pipeline"
    code.mkdir(parents=True, exist_ok=True)
    for module in serving_modules():
        shutil.copy(_PACKAGE / module, code / module)
    return {
        "python_model": str(MODEL_CODE),
        "artifacts": {"keras_model": str(keras_path), "preprocessing": str(rules_path)},
        "code_paths": [str(code)],
        "signature": _signature(),
        "input_example": pd.DataFrame({TEXT_COLUMN: _INPUT_EXAMPLE}),
        "pip_requirements": _requirements(),
    }


def serving_modules() -> list[str]:
    """The library files a consumer's interpreter imports to load the pyfunc: this module and,
    transitively, every ``pipeline`` module it imports, read from the source (never a hand list)."""
    found, pending = set(), ["__init__.py", "serve.py"]  # the package's __init__ imports too
    while pending:
        module = pending.pop()
        found.add(module)
        tree = ast.parse((_PACKAGE / module).read_text())
        for node in ast.walk(tree):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            if isinstance(node, ast.ImportFrom) and node.module == "pipeline":  # from pipeline import data
                names += [f"pipeline.{alias.name}" for alias in node.names]
            names += [alias.name for alias in node.names] if isinstance(node, ast.Import) else []
            for name in names:
                if name.startswith("pipeline."):
                    file = name.split(".")[1] + ".py"
                    if file not in found and (_PACKAGE / file).exists():
                        pending.append(file)
    return sorted(found)


def _signature():
    """``text`` in, (probability, label) out. The column holds strings, but it is typed Any on
    purpose: under a string column MLflow 3.17's server casts ``{"inputs": [...]}`` with
    ``np.array(values, str)`` (``proto_json_utils.convert_data_type``) before the model sees it,
    so a missing review would be scored as the word "None" and a number as its digits. Typed Any,
    the model gets what was sent and names the bad row (``review_texts``)."""
    from mlflow.models import ModelSignature, infer_signature
    from mlflow.types.schema import AnyType, ColSpec, Schema

    sample_output = pd.DataFrame({"probability": [0.9, 0.1], "label": ["positive", "negative"]})
    inputs = Schema([ColSpec(AnyType(), TEXT_COLUMN)])
    return ModelSignature(inputs=inputs, outputs=infer_signature(None, sample_output).outputs)


def _requirements() -> list[str]:
    pinned = []
    for name in ("mlflow", "keras", "tensorflow-cpu", "tensorflow", "numpy", "pandas"):
        try:
            pinned.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            continue
    return pinned
