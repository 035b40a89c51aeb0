"""The same stages as a Kubeflow Pipelines (KFP v2) pipeline: components, the pipeline, compile, submit.

    prepare → create_study → ParallelFor(workers) search_worker → train_best → evaluate → register

Each component is a lightweight Python component whose body runs one library stage on values it
reads from its inputs (the config, the prepared data, the model), in the project's image. What
crosses pods: the prepared arrays as a ``Dataset`` artifact (``pipeline.data.save``/``load``), the
trained model and its evaluation as artifacts, and the MLflow run id of the pipeline's parent run;
the study itself lives in the study storage every worker reaches.

Pipeline parameters are the config fields, generated from the config model (``parameters()``):
``data.max_len`` is the parameter ``data_max_len``, with the field's default; a field whose default
is None or a path of the compiling machine is a string whose "" means "the config's default where
the task runs" (``data_path=""``: the sample shipped in the image). The stores are no parameters:
``MLFLOW_TRACKING_URI`` and ``SENTIMENT_SEARCH_STORAGE`` come from a Kubernetes secret
(``use_secret_as_env``), so no URI or password is ever written into the compiled YAML.

This module imports KFP: the CLI imports it only inside the ``kubeflow`` commands, and KFP is the
optional extra ``[kubeflow]``. The component functions are written without ``from __future__ import
annotations`` because KFP reads their annotations as types. What the tasks do around their stage
(the config from the parameters, the stores, the parent run) is ``flows/kubeflow_tasks.py``, which
imports no KFP: inside KFP's executor, importing ``kfp.compiler`` is a circular import (here too,
``kfp.compiler`` and ``kfp.kubernetes`` are imported only where the pipeline is built).
"""

import contextlib
import inspect
import os
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, NamedTuple

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Metrics, Model, Output

from flows.kubeflow_tasks import Parameter, parameters, pipeline_arguments
from pipeline.config import STATE_ROOT, ConfigError, PipelineConfig

PIPELINE_NAME = "imdb-sentiment"
DEFAULT_IMAGE = "imdb-sentiment:0.1.0"
DEFAULT_SECRET = "imdb-sentiment-stores"
# The secret's keys and the environment variables they become in every task that touches a store.
SECRET_KEYS = {"tracking-uri": "MLFLOW_TRACKING_URI", "study-storage": "SENTIMENT_SEARCH_STORAGE"}


# --- the components: one library stage each ----------------------------------------------------


def prepare(config: dict, prepared: Output[Dataset]) -> None:
    """Read, split and encode the reviews (``data.prepare``); the arrays as a Dataset artifact."""
    from flows.kubeflow_tasks import task_config
    from pipeline import data

    cfg, _ = task_config(config, stores=False)
    data.save(data.prepare(cfg.data), prepared.path)


def create_study(config: dict, prepared: Input[Dataset], kfp_run_id: str) -> dict:
    """The study every search worker joins (``stages.create_study``), under the pipeline's parent
    MLflow run; returns the study and the parent run id."""
    from dataclasses import asdict

    from flows.kubeflow_tasks import parent_run, task_config
    from pipeline import data, stages

    cfg, stores = task_config(config)
    prepared_data = data.load(prepared.path)
    with parent_run(stores, cfg, prepared_data, kfp_run_id) as run_id:
        study = stages.create_study(stores, cfg, prepared_data, parent_run_id=run_id)
    return asdict(study) | {"pipeline_run_id": run_id}


def search_worker(config: dict, prepared: Input[Dataset], study: dict, worker: int) -> dict:
    """Join the study until its study-wide target is met (``stages.search_worker``); a retried
    worker resumes the study rather than adding trials."""
    from dataclasses import asdict

    from flows.kubeflow_tasks import task_config, worker_config
    from pipeline import data, stages

    cfg, stores = task_config(config)
    cfg = worker_config(cfg)
    return asdict(stages.search_worker(stores, cfg, data.load(prepared.path))) | {"worker": worker}


def train_best(
    config: dict, prepared: Input[Dataset], study: dict, workers: list[dict], model: Output[Model]
) -> dict:
    """Train the study's best configuration (``stages.study_result`` → ``stages.train_final``) on
    the parent run; the model (a pickled FinalModel) as a Model artifact."""
    from flows.kubeflow_tasks import on_parent, save_value, task_config
    from pipeline import data, stages

    cfg, stores = task_config(config)
    prepared_data = data.load(prepared.path)
    with on_parent(stores, study["pipeline_run_id"], "train-best") as run:
        best = stages.study_result(stores, cfg, run)
        final = stages.train_final(best.best_hparams, prepared_data, cfg, run)
    save_value(final, model.path)
    return {
        "best_trial": best.best_trial,
        "best_value": best.best_value,
        "best_hparams": best.best_hparams.model_dump(),
    }


def evaluate(
    config: dict,
    prepared: Input[Dataset],
    study: dict,
    model: Input[Model],
    evaluation: Output[Artifact],
    metrics: Output[Metrics],
) -> None:
    """Test metrics and plots on the parent run (``stages.evaluate_model``), and in the KFP UI."""
    from flows.kubeflow_tasks import load_value, on_parent, save_value, task_config
    from pipeline import data, stages

    cfg, stores = task_config(config)
    with on_parent(stores, study["pipeline_run_id"], "evaluate") as run:
        result = stages.evaluate_model(load_value(model.path), data.load(prepared.path), run)
    save_value(result, evaluation.path)
    for name, value in result.metrics.items():
        if value == value:  # NaN: an undefined metric
            metrics.log_metric(name, value)


def register(
    config: dict,
    prepared: Input[Dataset],
    study: dict,
    model: Input[Model],
    evaluation: Input[Artifact],
    best: dict,
) -> dict:
    """Log the model and register it, promoted only if it beats the champion on the same test
    reviews (``stages.log_model`` → ``stages.register_model``, as the Prefect flow runs them);
    ends the parent run. Returns the run's summary, with the ``best`` trial train_best trained."""
    from flows.kubeflow_tasks import load_value, on_parent, task_config
    from pipeline import data, stages

    cfg, stores = task_config(config)
    final, result = load_value(model.path), load_value(evaluation.path)
    prepared_data = data.load(prepared.path)
    with on_parent(stores, study["pipeline_run_id"], "register", end=True) as run:
        uri = stages.log_model(final, prepared_data, run)
        decision = stages.register_model(cfg, uri, final, result, prepared_data, run)
    return stages.summarize(cfg, run, final, result, model_uri=uri, decision=decision).to_dict() | best


COMPONENTS = (prepare, create_study, search_worker, train_best, evaluate, register)


# --- resources ---------------------------------------------------------------------------------


class Resources(NamedTuple):
    cpu_request: str
    cpu_limit: str
    memory_request: str
    memory_limit: str


# CPU: a trial's recurrent loop keeps about one core busy (../shared/notes/stack-facts.md) and a
# search pod runs one trial at a time; the final training is the longest single task, so it gets
# more. Memory: the largest task of a local run on 600 reviews peaked at 0.95 GB resident
# (TensorFlow's runtime, mostly); the full dataset's padded arrays add ~0.2 GB (50k reviews × 500
# int32 ids × 2 copies), so the requests leave headroom rather than reflect a full-data measurement.
RESOURCES = {
    "prepare": Resources("1", "2", "2Gi", "4Gi"),
    "create-study": Resources("500m", "1", "1Gi", "2Gi"),
    "search-worker": Resources("1", "2", "3Gi", "6Gi"),
    "train-best": Resources("2", "4", "4Gi", "8Gi"),
    "evaluate": Resources("1", "2", "3Gi", "6Gi"),
    "register": Resources("1", "2", "3Gi", "6Gi"),
}
SEARCH_RETRIES = 2


def _configure(task: Any, name: str, secret: str | None) -> Any:
    """Resources, no KFP cache (the stores hold the state: a cached search or registration would
    silently skip work) and, for tasks that touch a store, the secret as environment variables."""
    from kfp import kubernetes

    limits = RESOURCES[name]
    task.set_cpu_request(limits.cpu_request).set_cpu_limit(limits.cpu_limit)
    task.set_memory_request(limits.memory_request).set_memory_limit(limits.memory_limit)
    task.set_caching_options(False)
    if secret is not None:
        kubernetes.use_secret_as_env(task, secret_name=secret, secret_key_to_env=SECRET_KEYS)
    return task


# --- the pipeline --------------------------------------------------------------------------------


def build_pipeline(
    image: str = DEFAULT_IMAGE, workers: int = 2, secret: str | None = DEFAULT_SECRET
) -> Callable:
    """The KFP pipeline: one parameter per config field (``parameters()``), ``workers`` search pods
    at once, every component in ``image``, the stores from the Kubernetes secret ``secret`` (None: from
    the environment the tasks inherit, as with the local runner)."""
    if workers < 1:
        raise ConfigError(f"invalid option --workers: must be at least 1 (got {workers})")
    found = parameters()
    made = {
        name: dsl.component(function, base_image=image, install_kfp_package=False)
        for name, function in ((f.__name__, f) for f in COMPONENTS)
    }

    def imdb_sentiment(*values: Any) -> dict:
        config = {parameter.dotted: value for parameter, value in zip(found, values, strict=True)}
        prep = _configure(made["prepare"](config=config), "prepare", None)
        prepared = prep.outputs["prepared"]
        study = _configure(
            made["create_study"](config=config, prepared=prepared, kfp_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER),
            "create-study",
            secret,
        )
        with dsl.ParallelFor(items=list(range(workers)), parallelism=workers) as worker:
            searched = _configure(
                made["search_worker"](config=config, prepared=prepared, study=study.output, worker=worker),
                "search-worker",
                secret,
            )
            searched.set_retry(num_retries=SEARCH_RETRIES, backoff_duration="30s", backoff_factor=2)
        trained = _configure(
            made["train_best"](
                config=config, prepared=prepared, study=study.output, workers=dsl.Collected(searched.output)
            ),
            "train-best",
            secret,
        )
        model = trained.outputs["model"]
        evaluated = _configure(
            made["evaluate"](config=config, prepared=prepared, study=study.output, model=model),
            "evaluate",
            secret,
        )
        registered = _configure(
            made["register"](
                config=config,
                prepared=prepared,
                study=study.output,
                model=model,
                evaluation=evaluated.outputs["evaluation"],
                best=trained.outputs["Output"],
            ),
            "register",
            secret,
        )
        return registered.output

    imdb_sentiment.__signature__ = inspect.Signature(
        [
            inspect.Parameter(p.name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=p.default, annotation=p.annotation)
            for p in found
        ],
        return_annotation=dict,
    )
    imdb_sentiment.__doc__ = _docstring(found)
    return dsl.pipeline(name=PIPELINE_NAME)(imdb_sentiment)


def _docstring(found: list[Parameter]) -> str:
    """KFP reads parameter descriptions from the pipeline's docstring (Google style)."""
    lines = [
        "IMDB sentiment: prepare, an Optuna search fanned out over pods, final training, evaluation "
        "and the McNemar-gated registry, tracked in MLflow.",
        "",
        "Args:",
    ]
    for parameter in found:
        note = " ('': the config's default)" if parameter.default == "" else ""
        if parameter.many:
            note = " (comma-separated)"
        lines.append(f"    {parameter.name}: {parameter.dotted}: {parameter.description}{note}")
    return "\n".join(lines)


def compile_pipeline(
    output: Path, image: str = DEFAULT_IMAGE, workers: int = 2, secret: str = DEFAULT_SECRET
) -> Path:
    """Write the pipeline's YAML to ``output`` (the same bytes for the same arguments); ``output``."""
    from kfp import compiler

    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(build_pipeline(image, workers, secret), str(output))
    return output


def submit(
    cfg: PipelineConfig,
    host: str,
    experiment: str,
    image: str = DEFAULT_IMAGE,
    secret: str = DEFAULT_SECRET,
    run_name: str | None = None,
) -> str:
    """Compile (``search.workers`` search pods) and start a run on the KFP at ``host`` with
    ``cfg``'s non-default settings as arguments (``kfp.Client``: credentials from the usual
    kube/KFP environment); the run's URL."""
    import kfp

    from pipeline.stores import StoreError

    with tempfile.TemporaryDirectory() as tmp:
        package = compile_pipeline(Path(tmp) / "imdb_sentiment.yaml", image, cfg.search.workers, secret)
        try:
            with warnings.catch_warnings():  # "This client only works with KFP v2.0.0-beta.2 and later"
                warnings.simplefilter("ignore", FutureWarning)
                client = kfp.Client(host=host)
            run = client.create_run_from_pipeline_package(
                str(package), arguments=pipeline_arguments(cfg), experiment_name=experiment, run_name=run_name
            )
        except Exception as error:  # the client's errors are urllib3's and its API's: name the host
            reason = str(error).strip().splitlines()[0][:300]
            raise StoreError(f"Kubeflow Pipelines API {host}: {type(error).__name__}: {reason}") from error
    return f"{host.rstrip('/')}/#/runs/details/{run.run_id}"


def run_local(cfg: PipelineConfig, root: Path | None = None, image: str | None = None) -> dict:
    """Run the pipeline (``search.workers`` search workers) on this machine with KFP's local
    runner, no cluster: each task a subprocess of this Python, or with ``image`` a container of
    that image (``DockerRunner``, host network: the image a cluster would pull). The stores ``cfg``
    resolves to are handed to the tasks through the environment, as the secret hands them over on
    a cluster. Returns the register task's summary; raises RuntimeError naming the failed task."""

    from pipeline.stores import preflight

    stores = preflight(cfg)
    root = Path(root or STATE_ROOT / ".cache" / "kfp-local").resolve()
    if image is not None:
        return _run_in_containers(cfg, stores, root, image)
    # The tasks run `python3 -m kfp.dsl.executor_main`: this interpreter's, with the project on it.
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    with _environment(
        MLFLOW_TRACKING_URI=stores.tracking_uri, SENTIMENT_SEARCH_STORAGE=stores.study_storage, PATH=path
    ):
        from kfp import local

        return _run_locally(cfg, local.SubprocessRunner(use_venv=False), root, image=DEFAULT_IMAGE)


def _run_in_containers(cfg: PipelineConfig, stores: Any, root: Path, image: str) -> dict:
    """``run_local`` with every task in ``image``: the containers share this machine's network
    (so a server on 127.0.0.1 is theirs too), run as this user (what they write in the pipeline
    root is yours) with a scratch home, and see the dataset read-only at its own path."""
    from docker.types import Mount
    from kfp import local

    from pipeline.stores import StoreError

    if stores.in_files_here():
        raise StoreError(
            "invalid option --image: the tasks run in containers, which cannot share the embedded "
            "stores' files: give a tracking server (--tracking-uri http://...) and a database "
            "(--storage postgresql://...)"
        )
    # A file source is mounted where it is here; a database (a URL) is reached over the network.
    data = cfg.data.path
    mounts = [Mount(str(data.parent), str(data.parent), type="bind", read_only=True)] if isinstance(data, Path) else []
    runner = local.DockerRunner(
        network_mode="host",
        entrypoint=[],  # the component's command, as Kubernetes runs it, not the image's `sentiment`
        user=f"{os.getuid()}:{os.getgid()}",
        environment={
            "MLFLOW_TRACKING_URI": stores.tracking_uri,
            "SENTIMENT_SEARCH_STORAGE": stores.study_storage,
            "HOME": "/tmp",
            "SENTIMENT_HOME": "/tmp/imdb-sentiment",
            "MPLCONFIGDIR": "/tmp/matplotlib",
        },
        mounts=mounts,
    )
    # The data cache is the container's own (a path of this machine may not exist there).
    moved = cfg.model_copy(update={"data": cfg.data.model_copy(update={"cache_dir": None})})
    root.mkdir(parents=True, exist_ok=True)
    return _run_locally(moved, runner, root, image)


@contextlib.contextmanager
def _environment(**variables: str) -> Iterator[None]:
    """``variables`` in this process's environment (the local runner's tasks inherit it) for the
    block, then put back as they were."""
    saved = {name: os.environ.get(name) for name in variables}
    os.environ.update(variables)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _run_locally(cfg: PipelineConfig, runner: Any, root: Path, image: str) -> dict:
    from kfp import local

    local.init(runner=runner, pipeline_root=str(root))
    # KFP's local runner writes every task's log to stdout: send it to stderr, so stdout holds the
    # result alone (`--json`); and hush its notes on what a cluster does (the image, resources).
    with warnings.catch_warnings(), contextlib.redirect_stdout(sys.stderr):
        warnings.filterwarnings("ignore", "You may be attemp", RuntimeWarning)
        warnings.filterwarnings("ignore", ".*have no effect in the current local runner", UserWarning)
        task = build_pipeline(image, cfg.search.workers, secret=None)(**pipeline_arguments(cfg))
    return _typed_summary(task.output)


def _typed_summary(summary: Mapping[str, Any]) -> dict:
    """The register task's summary with its whole numbers whole again (KFP hands a dict output
    over as a protobuf Struct, whose numbers are all floats)."""
    from pipeline.config import HParams

    typed = dict(summary)
    if typed.get("best_trial") is not None:
        typed["best_trial"] = int(typed["best_trial"])
    if typed.get("best_hparams"):
        typed["best_hparams"] = HParams.model_validate(typed["best_hparams"]).model_dump()
    return typed

