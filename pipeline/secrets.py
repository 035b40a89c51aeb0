"""Passwords in store URIs are shown as ``***``, everywhere a URI is recorded or printed.

A store URI may carry a password (``postgresql://user:password@db/optuna``, an
``https://user:token@mlflow`` tracking server). Runs, tags, model cards, Prefect parameters, log
lines and error messages are read by many more people than the password is meant for, so every
URI written to any of them goes through ``redact``; the config model does it for the store fields
whenever it is serialised (``PipelineConfig.model_dump(mode="json")``: MLflow params, Prefect
parameters, ``config show``). The value itself lives only in the memory of the processes that use
it, and in the environment they were given.
"""

from __future__ import annotations

import logging
import re

MASK = "***"
# scheme://user:password@host: the password runs to the last "@" before the path.
_USERINFO = re.compile(r"(?P<head>\b[a-zA-Z][a-zA-Z0-9+.-]*://[^:/@\s]*):(?P<password>[^/\s]*)@")
# ...?password=...: drivers that take it as a query parameter (libpq, some object stores).
_QUERY = re.compile(
    r"(?P<head>[?&](?:password|passwd|pwd|secret|token|sig|signature|access_key|secret_key)=)[^&\s#]*",
    re.IGNORECASE,
)


def redact(text: str) -> str:
    """``text`` with the password of every URI in it replaced by ``***`` (the user stays)."""
    text = _USERINFO.sub(lambda match: f"{match['head']}:{MASK}@", text)
    return _QUERY.sub(lambda match: f"{match['head']}{MASK}", text)


def redact_value(value: object) -> object:
    """A string redacted; anything else as it is (params and tags of mixed types)."""
    return redact(value) if isinstance(value, str) else value


def is_redacted(uri: str) -> bool:
    """Whether ``uri`` is a redacted one: its password was never given to this process."""
    return redact(uri) == uri and (f":{MASK}@" in uri or f"={MASK}" in uri)


class RedactingFormatter(logging.Formatter):
    """Formats as ``inner`` does, then redacts: the message, its arguments and any traceback, so
    log lines that quote a URI (a library's, an exception's) do not carry its password."""

    def __init__(self, inner: logging.Formatter | None = None) -> None:
        super().__init__()
        self.inner = inner or logging.Formatter()

    def format(self, record: logging.LogRecord) -> str:
        return redact(self.inner.format(record))


def redact_handler(handler: logging.Handler) -> logging.Handler:
    """``handler`` writing redacted lines (once: a handler already redacting is left as it is)."""
    if not isinstance(handler.formatter, RedactingFormatter):
        handler.setFormatter(RedactingFormatter(handler.formatter))
    return handler
