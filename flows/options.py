"""CLI options generated from the config model: one option per field, nothing declared twice.

``config_options("data", "search")`` decorates a typer command: it adds an option for every field
of those config sections (flag, type, help, bounds and default read from the pydantic field,
grouped in one help panel per section), plus ``--config FILE`` and ``--verbose``, and calls the
command with the resolved, validated ``PipelineConfig`` as ``cfg``. Precedence is
option > ``SENTIMENT_*`` environment variable > config file > default (``config.load_config``).

Why typer with this small generator rather than pydantic-settings' own CLI source: the flags are
the project's established names (``--max-len``, ``--search-epochs``, ``--cell`` repeated,
``--jit-compile/--no-jit-compile``), commands need options of their own beside the config, and
typer gives grouped help panels; pydantic-settings still does what it is best at, the
environment and file sources and their precedence.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import sys
import traceback
import types
import typing
import warnings
from collections.abc import Callable
from logging.handlers import RotatingFileHandler
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import typer
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from pipeline.config import (
    PROJECT_ROOT,
    SECTIONS,
    STATE_ROOT,
    ConfigError,
    HParams,
    env_var,
    flag,
    load_config,
)
from pipeline.quiet import loud_tensorflow_startup
from pipeline.secrets import RedactingFormatter, redact
from pipeline.signals import stop_on_signals

PANELS = {
    "data": "Data",
    "train": "Training",
    "search": "Search",
    "tracking": "MLflow",
    "serve": "Scoring server",
    "hparams": "Model",
}


def _unwrap(annotation: Any) -> tuple[Any, bool]:
    """(the click-facing type, whether the option repeats) of a field's annotation."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        kinds = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        # Path | str (data.path: a file or a database URL): text, which click leaves whole.
        annotation = str if str in kinds else kinds[0]
    many = typing.get_origin(annotation) is tuple
    if many:
        annotation = typing.get_args(annotation)[0]
    if typing.get_origin(annotation) is Literal:
        annotation = str  # pydantic checks the value, so every bad value gets the same message
    return annotation, many


def _help(field: FieldInfo, dotted: str | None) -> str:
    """The field's description, its bounds, choices, default and environment variable."""
    notes = []
    bounds = {"ge": "≥", "gt": ">", "le": "≤", "lt": "<"}
    limits = [
        f"{sign} {getattr(m, key)}" for m in field.metadata for key, sign in bounds.items() if hasattr(m, key)
    ]
    if limits:
        notes.append("x " + ", ".join(limits))
    choices = _choices(field.annotation)
    if choices:
        notes.append(" | ".join(choices))
    default = field.default
    if "default" not in (field.description or "") and default is not None:
        if isinstance(default, Path) and default.is_relative_to(PROJECT_ROOT):
            default = default.relative_to(PROJECT_ROOT)
        shown = ",".join(default) if isinstance(default, tuple) else default
        notes.append(f"default: {shown}")
    if dotted is not None:
        notes.append(f"env {env_var(dotted)}")
    return f"{field.description or ''} ({'; '.join(notes)})" if notes else field.description or ""


def _choices(annotation: Any) -> tuple[str, ...]:
    for arg in (annotation, *typing.get_args(annotation)):
        if typing.get_origin(arg) is Literal:
            return typing.get_args(arg)
        if typing.get_origin(arg) is tuple:
            return _choices(typing.get_args(arg)[0])
    return ()


def _parameter(
    name: str, cli_flag: str, field: FieldInfo, panel: str, dotted: str | None
) -> inspect.Parameter:
    kind, many = _unwrap(field.annotation)
    decls = [f"{cli_flag}/--no-{cli_flag[2:]}"] if kind is bool else [cli_flag]
    option = typer.Option(*decls, help=_help(field, dotted), rich_help_panel=panel, show_default=False)
    annotation = Annotated[(list[kind] if many else kind) | None, option]
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=annotation)


def _section_parameters(sections: tuple[str, ...]) -> dict[str, tuple[str, inspect.Parameter]]:
    """``{python name: (dotted field, parameter)}`` for every field of ``sections``."""
    generated = {}
    for section in sections:
        for leaf, field in SECTIONS[section].model_fields.items():
            dotted = f"{section}.{leaf}"
            name = dotted.replace(".", "__")
            generated[name] = (
                dotted,
                _parameter(name, flag(dotted, sections), field, PANELS[section], dotted),
            )
    return generated


def _model_parameters(model: type[BaseModel], panel: str) -> dict[str, tuple[str, inspect.Parameter]]:
    """Options for a plain model's fields (``HParams``): ``--learning-rate`` and so on."""
    return {
        f"hp__{leaf}": (leaf, _parameter(f"hp__{leaf}", "--" + leaf.replace("_", "-"), field, panel, None))
        for leaf, field in model.model_fields.items()
    }


_COMMON = [
    inspect.Parameter(
        "config_file",
        inspect.Parameter.KEYWORD_ONLY,
        default=None,
        annotation=Annotated[
            Path | None,
            typer.Option(
                "--config",
                help="YAML or TOML config file (configs/full.yaml); options and "
                "SENTIMENT_* variables override it",
                show_default=False,
            ),
        ],
    ),
    inspect.Parameter(
        "verbose",
        inspect.Parameter.KEYWORD_ONLY,
        default=False,
        annotation=Annotated[
            bool, typer.Option("--verbose", "-v", help="Prefect's and MLflow's logs, tracebacks")
        ],
    ),
]


def config_options(*sections: str, hparams: bool = False) -> Callable[[Callable], Callable]:
    """Give a command one option per field of ``sections`` (plus ``--config`` and ``--verbose``)
    and call it with ``cfg`` and, with ``hparams``, ``hparams_overrides`` (the ``HParams`` fields
    given as options), inside the signal handling and the one-line error reporting."""

    def decorate(command: Callable) -> Callable:
        own = [
            p
            for p in inspect.signature(command, eval_str=True).parameters.values()
            if p.name not in ("cfg", "verbose", "hparams_overrides")
        ]
        fields = _section_parameters(sections)
        models = _model_parameters(HParams, PANELS["hparams"]) if hparams else {}

        def wrapper(**kwargs: Any) -> Any:
            options = {dotted: kwargs.pop(name) for name, (dotted, _) in fields.items()}
            overrides = {
                leaf: value for name, (leaf, _) in models.items() if (value := kwargs.pop(name)) is not None
            }
            verbose = kwargs.pop("verbose")
            configure_output(verbose)
            try:
                cfg = load_config(options, kwargs.pop("config_file"), sections)
            except ConfigError as error:
                fail(str(error), code=2)
            extra = {"hparams_overrides": overrides} if hparams else {}
            with stop_on_signals():
                return guarded(lambda: command(cfg=cfg, **kwargs, **extra), verbose)

        parameters = [*own, *_COMMON, *(p for _, p in fields.values()), *(p for _, p in models.values())]
        wrapper.__signature__ = inspect.Signature(parameters)
        wrapper.__name__, wrapper.__doc__ = command.__name__, command.__doc__
        return wrapper

    return decorate


def fail(message: str, code: int = 1) -> typing.NoReturn:
    typer.echo(f"error: {redact(message)}", err=True)
    raise typer.Exit(code)


_QUIET = {
    "prefect": logging.WARNING,
    "mlflow": logging.WARNING,
    "mlflow.pyfunc": logging.ERROR,  # "python_model is cloudpickled": how the pyfunc is saved
    # "SQLAlchemy database error" and its traceback, for an error that is raised anyway and
    # reported in one line (a read-only store printed 649 lines before it).
    "mlflow.store.db.utils": logging.CRITICAL,
    "tensorflow": logging.ERROR,  # retracing notes: each length bucket is a batch shape
}


LOG_FILE = STATE_ROOT / ".cache" / "logs" / "sentiment.log"
_details = logging.getLogger("sentiment")  # tracebacks: to the log file only, never the terminal


def configure_output(verbose: bool) -> None:
    """Quiet by default: the library's progress lines and warnings, not Prefect's per-task lines
    (they still reach Prefect's API) or MLflow's download bars; everything with ``--verbose``.
    Every failure's traceback goes to ``LOG_FILE``."""
    _log_to_file()
    if verbose:
        loud_tensorflow_startup()
    else:
        # Optuna's notes on a small study ("too few trials to compute importances", flat axes):
        # the plots still draw; the terminal is for what the user must act on.
        warnings.filterwarnings("ignore", category=UserWarning, module=r"optuna\.")
        os.environ["PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL"] = "CRITICAL"
        os.environ["PREFECT_LOGGING_HANDLERS_CONSOLE_FLOW_RUNS_LEVEL"] = "CRITICAL"
        os.environ["PREFECT_LOGGING_HANDLERS_CONSOLE_TASK_RUNS_LEVEL"] = "CRITICAL"
        os.environ["MLFLOW_LOGGING_LEVEL"] = "WARNING"
        os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
        for name, level in _QUIET.items():
            logging.getLogger(name).setLevel(level)
        import optuna  # sets its own level on first use: set it after

        optuna.logging.set_verbosity(optuna.logging.ERROR)  # failed trials: counted, reasons in MLflow
    library = logging.getLogger("pipeline")
    if not any(isinstance(handler, _Stderr) for handler in library.handlers):
        handler = _Stderr()
        handler.setFormatter(RedactingFormatter(logging.Formatter("%(message)s")))
        library.addHandler(handler)
    library.setLevel(logging.INFO)
    library.propagate = False


def _log_to_file() -> None:
    if any(isinstance(handler, logging.FileHandler) for handler in _details.handlers):
        return
    try:
        LOG_FILE.parent.mkdir(parents=True, exist_ok=True)
        handler = RotatingFileHandler(LOG_FILE, maxBytes=5 * 2**20, backupCount=2)
    except OSError:  # a read-only checkout: tracebacks only with --verbose then
        return
    handler.setFormatter(RedactingFormatter(logging.Formatter("%(asctime)s %(process)d %(name)s %(levelname)s %(message)s")))
    _details.addHandler(handler)
    _details.setLevel(logging.INFO)
    _details.propagate = False
    logging.getLogger("pipeline").addHandler(handler)


class _Stderr(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time (test runners swap it per invocation)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


T = TypeVar("T")


def guarded(work: Callable[[], T], verbose: bool) -> T:
    """Run ``work()``. A known failure (bad input, data, store, registry) prints one line and exits
    1, its traceback in ``LOG_FILE`` (and on the terminal with --verbose); Ctrl-C or SIGTERM exits
    130 or 143 once the work in hand is closed."""
    try:
        return work()
    except KeyboardInterrupt as stop:
        _details.warning("%s", stop or "interrupted", exc_info=True)
        fail(
            f"{stop or 'interrupted'}: stopped; open MLflow runs closed KILLED",
            code=getattr(stop, "exit_code", 130),
        )
    except Exception as error:
        if not _known(error):
            raise
        _details.error("%s", error, exc_info=True)
        if verbose:
            typer.echo(redact(traceback.format_exc()), err=True)
        code = 2 if isinstance(error, ConfigError) else 1  # a setting to change (StudyMismatch too)
        fail(getattr(error, "message", None) or str(error), code=code)


# Failures with a message meant for people; anything else is a bug and keeps its traceback.
_KNOWN = {
    "ConfigError",
    "DataError",
    "SearchError",
    "StoreError",
    "RegistryError",
    "InputError",
    "MlflowException",
    "StorageInternalError",
}


def _known(error: BaseException) -> bool:
    """By class name, so the CLI imports neither MLflow nor TensorFlow to recognise them."""
    return any(cls.__name__ in _KNOWN for cls in type(error).__mro__)


# The config sections of the commands that train (run, search, train, worker, kubeflow …).
TRAINING = ("data", "search", "train", "tracking")
Json = Annotated[bool, typer.Option("--json", help="print the result as JSON")]


def print_result(result: Any, as_json: bool) -> None:
    if as_json or not hasattr(result, "to_text"):
        data = result.to_dict() if hasattr(result, "to_dict") else result
        typer.echo(json.dumps(data, indent=2, default=str))
    else:
        typer.echo(result.to_text())
