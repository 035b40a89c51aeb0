"""Progress of long stages: one updating line on a terminal, plain lines in logs.

On a terminal, tqdm draws a bar on stderr (done/total, rate, ETA, and the stage's latest numbers);
elsewhere (a log file, Prefect, CI) each step is one ``logging`` line instead of ``\\r`` updates,
with the same numbers and an estimate of the time left.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Mapping
from typing import Any

from tqdm import tqdm

log = logging.getLogger(__name__)


class Progress:
    """``done`` of ``total`` steps of a stage named ``label``, with its latest numbers."""

    def __init__(self, label: str, total: int, unit: str) -> None:
        self.label, self.total, self.unit = label, total, unit
        self._bar = (
            tqdm(total=total, desc=label, unit=f" {unit}", file=sys.stderr, leave=False)
            if _on_terminal()
            else None
        )
        self.done = 0
        self._started = time.monotonic()

    def update(self, done: int, numbers: Mapping[str, Any] | None = None) -> None:
        shown = {key: _short(value) for key, value in (numbers or {}).items()}
        if self._bar is not None:
            self._bar.set_postfix(shown, refresh=False)
            self._bar.update(done - self.done)
        elif done != self.done:
            eta = (time.monotonic() - self._started) / done * (self.total - done) if done else 0.0
            numbers_text = " ".join(f"{k}={v}" for k, v in shown.items())
            log.info("%s: %s %d/%d %s eta=%.0fs", self.label, self.unit, done, self.total, numbers_text, eta)
        self.done = done

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _on_terminal() -> bool:
    return sys.stderr is not None and sys.stderr.isatty()


def _short(value: Any) -> Any:
    return f"{value:.4g}" if isinstance(value, float) else value
