"""TensorFlow's native start-up notices, kept off the terminal unless asked for.

While ``import tensorflow`` loads its shared libraries, TensorFlow 2.21 writes notices from C++
straight to file descriptor 2 (``WARNING: All log messages before absl::InitializeLog() is
called…``, oneDNN's "custom operations are on", the CPU-feature guard) and ignores
``TF_CPP_MIN_LOG_LEVEL`` for them: no Python setting reaches them. So the import itself runs
with descriptor 2 pointed at a temporary file, and whatever it wrote that is not one of those
notices is written back to stderr: a real error at import still shows.

``quiet_tensorflow_startup()`` arms this for the first import of TensorFlow, whoever does it
(Keras, MLflow's flavour, a registry consumer's ``load_model``); child processes inherit it
through ``QUIET_ENV`` (``pipeline/__init__.py`` re-arms it before anything imports TensorFlow).
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import os
import re
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType

QUIET_ENV = "PIPELINE_QUIET_TENSORFLOW"
NOTICES = re.compile(
    r"absl::InitializeLog\(\)|oneDNN custom operations are on|cpu_feature_guard|"
    r"This TensorFlow binary is optimized|Unable to register cu(DNN|FFT|BLAS) factory|"
    r"computation placer already registered|TF-TRT Warning|failed call to cuInit"
)


@contextmanager
def native_notices_dropped() -> Iterator[None]:
    """Run the block with descriptor 2 captured; write back what is not a known notice."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            lines = captured.read().decode(errors="replace").splitlines(keepends=True)
            kept = "".join(line for line in lines if not NOTICES.search(line))
            if kept:
                sys.stderr.write(kept)
                sys.stderr.flush()


class _QuietLoader(importlib.abc.Loader):
    def __init__(self, inner: importlib.abc.Loader) -> None:
        self._inner = inner

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self._inner.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        with native_notices_dropped():
            self._inner.exec_module(module)


class _QuietTensorFlowFinder(importlib.abc.MetaPathFinder):
    """Finds nothing itself: hands the real spec of ``tensorflow`` back with a quiet loader."""

    def find_spec(self, name: str, path: object = None, target: object = None) -> importlib.machinery.ModuleSpec | None:
        if name != "tensorflow":
            return None
        sys.meta_path.remove(self)  # once: the real finders answer from here on
        spec = importlib.machinery.PathFinder.find_spec(name)
        if spec is not None and spec.loader is not None:
            spec.loader = _QuietLoader(spec.loader)
        return spec


def quiet_tensorflow_startup() -> None:
    """Drop TensorFlow's native start-up notices from now on, in this process and its children."""
    os.environ[QUIET_ENV] = "1"
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # what TensorFlow logs later through its own logger
    if "tensorflow" in sys.modules or any(isinstance(f, _QuietTensorFlowFinder) for f in sys.meta_path):
        return
    sys.meta_path.insert(0, _QuietTensorFlowFinder())


def loud_tensorflow_startup() -> None:
    """Undo ``quiet_tensorflow_startup`` (``--verbose``): TensorFlow's notices show again."""
    os.environ.pop(QUIET_ENV, None)
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _QuietTensorFlowFinder)]
