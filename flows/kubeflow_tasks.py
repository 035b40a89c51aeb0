"""What every Kubeflow task does around its one library stage (``flows/kubeflow.py``'s components).

The pipeline parameters, generated from the config model, and the config a task rebuilds from
them; the task's stores; the pipeline's parent MLflow run (the KFP MLflow plugin's, when it is on);
in-memory values handed from one task to the next. Like ``flows/tasks.py`` for Prefect. It imports
no KFP: the components import it inside KFP's executor, where importing ``kfp.compiler`` is a
circular import.
"""

from __future__ import annotations

import os
import pickle
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from pipeline import config as config_model
from pipeline.config import PipelineConfig, load_config

# The sections a training run reads (``sentiment run``'s), less the stores: they come from the secret.
SECTIONS = ("data", "search", "train", "tracking")
STORE_FIELDS = ("tracking.tracking_uri", "tracking.artifact_root", "search.storage")
# KFP fixes a loop's parallelism when it compiles: on Kubeflow, search.workers is the number of
# search pods (`--workers`), each running one trial at a time, not a parameter.
COMPILE_FIELDS = ("search.workers",)
# Set by the KFP MLflow plugin in every task's container: the task's own run, nested under the run
# the plugin opened for the pipeline run.
PLUGIN_RUN_ENV = "MLFLOW_RUN_ID"
PARENT_RUN_TAG = "mlflow.parentRunId"


# --- pipeline parameters, generated from the config model ------------------------------------


@dataclass(frozen=True)
class Parameter:
    """One pipeline parameter: a config field under a valid KFP name."""

    dotted: str  # data.max_len
    name: str  # data_max_len (section names hold no "_", so the name maps back)
    annotation: type
    default: Any
    description: str
    text: bool  # the field takes text as it is (str, Literal, Path): never parsed
    many: bool  # a tuple field: comma-separated in the parameter


def parameters() -> list[Parameter]:
    """Every field of the training sections, as a pipeline parameter; not the stores (they come
    from the secret) nor the worker count (the loop's width, fixed when compiling)."""
    found = []
    for dotted, field in config_model.fields():
        if dotted.split(".")[0] not in SECTIONS or dotted in STORE_FIELDS + COMPILE_FIELDS:
            continue
        annotation, default = _kfp_type(field.default)
        leaf_type = _leaf_type(field.annotation)
        found.append(
            Parameter(
                dotted=dotted,
                name=dotted.replace(".", "_"),
                annotation=annotation,
                default=default,
                description=field.description or "",
                text=leaf_type in (str, Path),
                many=isinstance(field.default, tuple),
            )
        )
    return found


def _kfp_type(default: Any) -> tuple[type, Any]:
    """(KFP parameter type, its default) for a field's default. KFP parameters cannot be None
    (its local runner rejects a parameter without a default), and a path default names a folder of
    the compiling machine: both become "" (the config's default where the task runs)."""
    if isinstance(default, bool | int | float | str):
        return type(default), default
    if isinstance(default, tuple):
        return str, ",".join(default)
    return str, ""


def _leaf_type(annotation: Any) -> Any:
    import typing

    args = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
    if typing.get_origin(annotation) is typing.Literal:
        return str
    if args and typing.get_origin(annotation) is not typing.Literal:
        return _leaf_type(args[0])
    return annotation


def config_from_parameters(values: Mapping[str, Any]) -> PipelineConfig:
    """The config a task runs with: the pipeline parameters (``{"data.max_len": 300}``) over the
    task's environment (the secret's ``MLFLOW_TRACKING_URI`` and ``SENTIMENT_SEARCH_STORAGE``) over
    the defaults. KFP may hand a parameter over as text (its local runner writes ``300.0``):
    non-text values are parsed as YAML scalars, and pydantic checks them. Raises ConfigError
    naming the field."""
    options: dict[str, Any] = {}
    for parameter in parameters():
        value = values.get(parameter.dotted)
        if value is None or value == "":
            continue
        if parameter.many and isinstance(value, str):
            value = [item.strip() for item in value.split(",") if item.strip()]
        elif isinstance(value, str) and not parameter.text:
            value = yaml.safe_load(value)
        options[parameter.dotted] = value
    return load_config(options, sections=SECTIONS)


def pipeline_arguments(cfg: PipelineConfig) -> dict[str, Any]:
    """The parameters a run of ``cfg`` sets: only those that differ from the compiled defaults,
    encoded as the parameters are (paths as text, tuples comma-separated)."""
    flat = cfg.flat_params()
    defaults = config_model.build_config().flat_params()
    arguments = {}
    for parameter in parameters():
        value = flat[parameter.dotted]
        if value == defaults[parameter.dotted]:
            continue
        if isinstance(value, list | tuple):
            value = ",".join(value)
        elif value is None:
            value = ""
        elif parameter.annotation is str and not isinstance(value, str):
            value = yaml.safe_dump(value).removesuffix("\n...\n").strip()  # 300, true: read back as YAML
        arguments[parameter.name] = value
    return arguments


# --- what every component does around its stage ------------------------------------------------


def task_config(config: Mapping[str, Any], stores: bool = True) -> tuple[PipelineConfig, Any]:
    """The task's config and, with ``stores``, its stores (checked: a dead store fails here, in
    seconds, naming it). The library's progress lines go to the task's log."""
    import logging

    from pipeline.stores import preflight

    library = logging.getLogger("pipeline")
    if not library.handlers:
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
        library.addHandler(handler)
        library.setLevel(logging.INFO)
    cfg = config_from_parameters(config)
    return cfg, preflight(cfg) if stores else None


def worker_config(cfg: PipelineConfig) -> PipelineConfig:
    """A search pod's config: one trial at a time, the pods being the workers (each
    joining the study draws its own sampler seed: ``search.join_study``)."""
    return cfg.model_copy(update={"search": cfg.search.model_copy(update={"workers": 1})})


@contextmanager
def parent_run(stores: Any, cfg: PipelineConfig, data: Any, kfp_run_id: str) -> Iterator[str]:
    """The MLflow run of this pipeline run, every later task logs under it: the run the KFP MLflow
    plugin opened for the pipeline run when it is on (the parent of its task run, ``MLFLOW_RUN_ID``),
    else a parent run made here like the Prefect flow's (config params, dataset). Yields its id."""
    from pipeline import stages, tracking

    plugin_task_run = os.environ.get(PLUGIN_RUN_ENV)
    if plugin_task_run:
        found = stores.mlflow_client().get_run(plugin_task_run)
        run_id = found.data.tags.get(PARENT_RUN_TAG, plugin_task_run)
        with tracking.attach_run(stores, run_id) as run:
            run.log_params(cfg.flat_params() | {"tracking.tracking_uri": stores.tracking_uri})
            tracking.log_dataset(run, stages.dataset_record(data))
            run.set_tags({"kfp_run_id": kfp_run_id, "stage": "pipeline"})
            yield run.run_id
        return
    with stages.pipeline_run(stores, cfg, data, run_name=f"kfp-{kfp_run_id}") as run:
        run.set_tags({"kfp_run_id": kfp_run_id, "orchestrator": "kubeflow"})
        yield run.run_id


@contextmanager
def on_parent(stores: Any, run_id: str, task: str, end: bool = False) -> Iterator[Any]:
    """The pipeline's parent run, for one task: tagged with the task that ran (``kfp_task.<name>``),
    marked FAILED with the reason if the task raises, ended FINISHED by the last task (``end``)."""
    from pipeline import tracking

    with tracking.attach_run(stores, run_id, end=end) as run:
        yield run
        run.set_tags({f"kfp_task.{task}": "done"})


def save_value(value: Any, path: str) -> None:
    """An in-memory result (a FinalModel with its Keras model, an Evaluation) as a file for the
    next task. Pickle, because both ends run the same image within one pipeline run; nothing kept
    longer goes this way (the model to keep is logged to MLflow)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as out:
        pickle.dump(value, out)


def load_value(path: str) -> Any:
    import pipeline.layers  # noqa: F401 (registers the companion's Keras layers before unpickling)

    with open(path, "rb") as stored:
        return pickle.load(stored)
