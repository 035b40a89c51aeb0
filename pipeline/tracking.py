"""The only module that touches MLflow runs: open, log to and close them.

Every call names its run id explicitly (``MlflowClient`` made from the resolved ``Stores``)
instead of relying on MLflow's per-thread "active run" or its global URIs: Prefect may run tasks
on other threads, trials may run in other processes, and both must still land in the right run.
Runs never stay RUNNING: each ends FINISHED, FAILED with its reason, or as its owner ends it
(a pruned trial: KILLED).
"""

from __future__ import annotations

import functools
import json
import logging
import signal
import subprocess
import time
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param, RunStatus
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.tracking.context.registry import resolve_tags
from mlflow.utils.mlflow_tags import MLFLOW_GIT_COMMIT, MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME, MLFLOW_RUN_NOTE

from pipeline.liveness import here, is_gone, repeating
from pipeline.secrets import redact, redact_value
from pipeline.stores import StoreError, Stores, failed_store, mlflow_global_uri

log = logging.getLogger(__name__)

# The experiment's kind, for MLflow versions whose UI picks the layout from it (3.x before the
# GenAI / Model training toggle). 3.17 does not read it: see MODEL_TRAINING.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"


@dataclass(frozen=True)
class DatasetRecord:
    """What a run records of its dataset: a digest, where it came from and its profile."""

    digest: str
    source: str
    profile: Mapping[str, Any]
    name: str = "aclImdb"


@dataclass
class RunHandle:
    """An open MLflow run: its id and the client that writes to it."""

    client: MlflowClient
    run_id: str
    experiment_id: str
    stores: Stores
    ended: bool = field(default=False, compare=False)
    last_step: int = field(default=0, compare=False)  # the highest metric step logged (epochs)
    # Tags written as the run ends: the run page lists tags in the order they were first written,
    # and what only says where things live (absolute paths, store URIs) goes after the outcome.
    closing_tags: Mapping[str, str] = field(default_factory=dict, compare=False)

    # Every param, tag, description and text this handle writes is redacted (``secrets``): a
    # store URI's password never reaches a run, whichever stage's values carry it.

    def log_params(self, params: Mapping[str, Any]) -> None:
        items = [Param(key, param_value(redact_value(value))) for key, value in params.items()]
        for start in range(0, len(items), 100):  # MLflow caps a batch at 100 params
            self.client.log_batch(self.run_id, params=items[start : start + 100])

    def log_metrics(self, metrics: Mapping[str, float], step: int = 0) -> None:
        now = int(time.time() * 1000)
        # Six significant digits: float32 noise (0.8399999737) reads as the 0.84 it is.
        items = [Metric(key, float(f"{float(value):.6g}"), now, step) for key, value in metrics.items()]
        self.client.log_batch(self.run_id, metrics=items)
        self.last_step = max(self.last_step, step)

    def rename(self, name: str) -> None:
        self.client.update_run(self.run_id, name=name)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        for key, value in tags.items():
            self.client.set_tag(self.run_id, key, redact(str(value)))

    def log_figure(self, figure, path: str) -> None:
        self.client.log_figure(self.run_id, figure, path)

    def log_dict(self, value: Mapping[str, Any], path: str) -> None:
        self.client.log_dict(self.run_id, json.loads(redact(json.dumps(dict(value), default=str))), path)

    def history(self, keys: list[str]) -> dict[str, list[float]]:
        """key → its logged values in step order, for the keys this run has (epoch curves)."""
        found = {}
        for key in keys:
            points = sorted(self.client.get_metric_history(self.run_id, key), key=lambda m: m.step)
            if points:
                found[key] = [m.value for m in points]
        return found

    def log_table(self, table, path: str) -> None:
        """A DataFrame as an MLflow table artifact (``path`` ends in .json): the UI shows it as a
        table and ``mlflow.load_table`` reads it back."""
        self.client.log_table(self.run_id, data=table, artifact_file=path)

    def log_text(self, text: str, path: str) -> None:
        self.client.log_text(self.run_id, redact(text), path)

    def describe(self, markdown: str) -> None:
        """The run's description: the text the run page shows at its top."""
        self.client.set_tag(self.run_id, MLFLOW_RUN_NOTE, redact(markdown))

    def log_artifacts(self, folder: str, path: str) -> None:
        self.client.log_artifacts(self.run_id, folder, path)

    def log_model(self, name: str, spec: Mapping[str, Any]) -> str:
        """Log the pyfunc ``spec`` (``mlflow.pyfunc.log_model`` arguments) as this run's logged
        model ``name`` (MLflow 3: listed on the experiment's Models tab, linked to the run and to
        the run's step-0 metrics, the test metrics among them); returns its ``models:/<id>`` URI."""
        import mlflow.pyfunc
        from mlflow.models import Model

        # ``mlflow.pyfunc.log_model`` takes no run id (it wants the thread's active run, and
        # resuming this one would end it): ``Model.log`` under it does, given the pyfunc flavor.
        # The logged model is made here, in the run's experiment (Model.log would put it in the
        # thread's active experiment), and Model.log reads MLflow's global URI: point that at
        # this run's store for the call only.
        params = dict(self.client.get_run(self.run_id).data.params)
        model = self.client.create_logged_model(
            self.experiment_id, name=name, source_run_id=self.run_id, params=params, model_type="pyfunc"
        )
        with mlflow_global_uri(self.stores.tracking_uri):
            info = Model.log(
                artifact_path=None,
                name=name,
                flavor=mlflow.pyfunc,
                run_id=self.run_id,
                model_id=model.model_id,
                **spec,
            )
        self.client.finalize_logged_model(model.model_id, "READY")
        return info.model_uri

    def kill(self, tags: Mapping[str, Any]) -> None:
        """Close the run KILLED (stopped on purpose: a pruned trial), with ``tags`` that say why."""
        self.end(RunStatus.to_string(RunStatus.KILLED), tags)

    def end(self, status: str, tags: Mapping[str, Any] | None = None) -> None:
        """Close the run as ``status`` (FINISHED, FAILED, KILLED) with ``tags`` that say why, then
        drop the tags that only told a live run from a dead one (owner pid, heartbeat): a closed
        run needs neither, and they crowded its useful tags on the run page."""
        self.set_tags({**(tags or {}), **self.closing_tags})
        self.client.set_terminated(self.run_id, status)
        self.ended = True
        # After the status: a run still RUNNING must keep what lets the next command close it.
        for key in self.client.get_run(self.run_id).data.tags:
            if key.startswith(OWNER_PREFIX) or key == HEARTBEAT_TAG:
                self.client.delete_tag(self.run_id, key)

    def link(self, ui_url: str | None = None) -> str:
        """The run's page in the MLflow UI at ``ui_url`` (default: where the stores say), in the
        UI's model-training mode (it opens in GenAI mode unless told)."""
        base = (ui_url or self.stores.ui_url()).rstrip("/")
        return f"{base}/#/experiments/{self.experiment_id}/runs/{self.run_id}?{MODEL_TRAINING}"

    @property
    def artifact_uri(self) -> str:
        return f"runs:/{self.run_id}"


def param_value(value: Any) -> str:
    """A param as MLflow stores it: a float to six significant digits (Optuna's draws read
    ``learning_rate 0.0011097554561103106``: 0.00110976 is the same model), lists and dicts as
    JSON, cut to MLflow's 6,000 characters."""
    if isinstance(value, float):
        value = float(f"{value:.6g}")
    text = json.dumps(value) if isinstance(value, (list, tuple, dict)) else str(value)
    return text[:6000]


# A saved view of the runs table (MLflow 3.17 keeps them as experiment tags with this prefix):
# the columns that choose a model, the trials' outcome and configuration, the parent expanded.
VIEW_TAG = "mlflow.sharedViewState.model-selection"
VIEW_NAME = "Model selection"
VIEW_COLUMNS = (
    "attributes.`Dataset`",
    "attributes.`Models`",
    "metrics.`objective`",
    "metrics.`model/test_accuracy`",
    "metrics.`model/val_accuracy`",
    "metrics.`val_accuracy`",
    "tags.`outcome`",
    "tags.`epochs`",
    "tags.`best_trial`",
    "tags.`optuna_study`",
    "params.`cell`",
    "params.`layers`",
    "params.`units`",
    "params.`learning_rate`",
    "tags.`model_kind`",
)


# MLflow 3.17's UI takes its mode from the URL's workflowType, else from the browser's local
# storage (``mlflow.workflowType``, written when a person flips the sidebar's GenAI / Model
# training toggle), else GenAI: the experiment's kind tag is not read (its bundle's
# ``useExperimentKind`` returns the kind of the workflowType while the toggle exists, and the
# toggle's flag is hard-wired on). No server or experiment setting reaches it: the links this
# project prints carry the parameter, and one flip of the toggle makes every bare link open so.
MODEL_TRAINING = "workflowType=machine_learning"


def experiment_link(ui_url: str, experiment: str) -> str:
    """The experiment's runs table in model-training mode, with the "Model selection" view."""
    view = VIEW_TAG.removeprefix("mlflow.sharedViewState.")
    return f"{ui_url.rstrip('/')}/#/experiments/{experiment}/runs?{MODEL_TRAINING}&viewStateShareKey={view}"


def save_runs_view(client: MlflowClient, experiment: str) -> None:
    """The "Model selection" view in the runs table's Views menu: key metrics, outcome, epochs,
    best-trial mark, study and hyperparameters as columns, the run-name column wide enough for
    the trial names, sorted by ``objective`` (what the study ranks by; ``val_accuracy`` is the
    last epoch's). Sorted by a metric, MLflow 3.17 lists runs flat, best first, without folding
    trials under their parent: the parent ranks with its best trial, the study column says whose
    trial each is."""
    now = int(time.time() * 1000)
    state = {
        "searchFilter": "",
        "orderByKey": "metrics.`objective`",
        "orderByAsc": False,
        "startTime": "ALL",
        "lifecycleFilter": "Active",
        "datasetsFilter": [],
        "modelVersionFilter": "All Runs",
        "selectedColumns": list(VIEW_COLUMNS),
        # MLflow 3.17 applies a width only to a column named in columnOrder (the rest keep their
        # places): 560 px shows "trial-012 bi-lstm×2 128u d0.25 lr1.2e-3 · complete after 9 epochs · best".
        # The dataset column (300 px by default) narrowed to its name and digest's head.
        "columnOrder": ["attributes.`Run Name`", "attributes.`Dataset`"],
        "columnWidths": {"attributes.`Run Name`": 560, "attributes.`Dataset`": 170},
        "runsHiddenMode": "SHOW_ALL",
        "runsExpanded": {},
        "viewMaximized": False,
        "runListHidden": False,
        "isAccordionReordered": False,
        "useGroupedValuesInCharts": True,
        "hideEmptyCharts": True,
        "groupBy": None,
        "groupsExpanded": {},
        "globalLineChartConfig": {"xAxisKey": "step", "lineSmoothness": 0, "selectedXAxisMetricKey": ""},
    }
    view = {"name": VIEW_NAME, "createdAt": now, "updatedAt": now, "state": json.dumps(state)}
    client.set_experiment_tag(experiment, VIEW_TAG, json.dumps(view))


def experiment_id(client: MlflowClient, stores: Stores, name: str) -> str:
    """The experiment's id, creating it with its artifacts where the stores say. Two processes
    creating it at once (search workers, pipeline runs) both get the one that was created."""
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        if experiment.tags.get(EXPERIMENT_KIND_TAG) is None:  # made before the tag existed
            client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
        if experiment.tags.get(VIEW_TAG) is None:
            save_runs_view(client, experiment.experiment_id)
        return experiment.experiment_id
    try:
        created = client.create_experiment(
            name,
            artifact_location=stores.experiment_artifact_location(name),
            tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND},
        )
        save_runs_view(client, created)
        return created
    except MlflowException as error:
        if error.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
        return client.get_experiment_by_name(name).experiment_id


@contextmanager
def open_run(
    stores: Stores,
    experiment_name: str,
    run_name: str,
    tags: Mapping[str, str],
    closing_tags: Mapping[str, str] | None = None,
) -> Iterator[RunHandle]:
    """A run that always ends: FINISHED, FAILED with the reason tagged, or KILLED when the process
    is interrupted (Ctrl-C, SIGTERM), unless its owner ended it already (``RunHandle.end``).
    ``closing_tags`` are written as it ends (``RunHandle.closing_tags``)."""
    client = stores.mlflow_client()
    exp_id = experiment_id(client, stores, experiment_name)
    # MLflow's own context tags (source, user), as its fluent start_run sets them, and the commit.
    context = resolve_tags() | _git_commit()
    tags = {key: redact(str(value)) for key, value in {**context, MLFLOW_RUN_NAME: run_name, **tags}.items()}
    run = client.create_run(exp_id, run_name=run_name, tags=tags)
    closing = {key: redact(str(value)) for key, value in (closing_tags or {}).items()}
    handle = RunHandle(client, run.info.run_id, exp_id, stores, closing_tags=closing)
    try:
        yield handle
    except Exception as error:
        # A store that failed under the run says so in one line, not in SQLAlchemy's SQL text.
        failure = None if isinstance(error, StoreError) else failed_store(error, stores.tracking_uri, stores.study_storage_uri)
        if not handle.ended:
            reason = f"{type(failure or error).__name__}: {failure or error}"[:5000]
            with _unless_unreachable(handle):
                handle.end(RunStatus.to_string(RunStatus.FAILED), {"outcome": "failed", "failure_reason": reason})
        if failure is not None:
            raise failure from error
        raise
    except BaseException as stopped:  # Ctrl-C, SIGTERM (Prefect's TerminationSignal), exit: not broken
        if not handle.ended:
            with _unless_unreachable(handle):
                handle.kill({"outcome": "interrupted", "failure_reason": _stop_reason(stopped)})
        raise
    if not handle.ended:
        handle.end(RunStatus.to_string(RunStatus.FINISHED))


@contextmanager
def _unless_unreachable(handle: RunHandle) -> Iterator[None]:
    """Closing a run on the way out of an error: a tracking store out of reach or refusing
    writes must not replace the error that says so (or the real one) with urllib3's or
    SQLAlchemy's text. The run stays RUNNING, and the next command on this machine closes it
    (``pipeline.reaper``)."""
    try:
        yield
    except Exception as closing:
        if failed_store(closing, handle.stores.tracking_uri, None) is None:
            raise
        log.debug("run %s left open: the tracking store is out of reach or read-only", handle.run_id)


@functools.cache
def _git_commit() -> dict[str, str]:
    """The project's git commit as MLflow's tag (MLflow finds it only with GitPython installed)."""
    try:
        found = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return {}
    commit = found.stdout.strip()
    return {MLFLOW_GIT_COMMIT: commit} if found.returncode == 0 and len(commit) == 40 else {}


def _stop_reason(stopped: BaseException) -> str:
    """``interrupted by SIGTERM``: what stopped the run, however the signal was wrapped."""
    signum = getattr(stopped, "signum", None) or getattr(stopped, "signal", None)
    if isinstance(signum, int):
        return f"interrupted by {signal.Signals(signum).name}"
    return str(stopped) or f"interrupted ({type(stopped).__name__})"


@contextmanager
def pipeline_run(
    stores: Stores,
    experiment_name: str,
    params: Mapping[str, Any],
    dataset: DatasetRecord,
    run_name: str | None = None,
    tags: Mapping[str, str] | None = None,
    closing_tags: Mapping[str, str] | None = None,
) -> Iterator[RunHandle]:
    """The parent run of one pipeline run: the whole config as dotted params, the dataset as input.
    While it runs it carries this process's ``liveness.here()``, so the next run can tell it was
    killed; ``closing_tags`` are written as it ends."""
    name = run_name or f"pipeline-{time.strftime('%Y%m%d-%H%M%S')}"
    owner = {f"{OWNER_PREFIX}{key}": str(value) for key, value in here().items()}
    run_tags = {"stage": "pipeline", **(tags or {}), **owner}
    with open_run(stores, experiment_name, name, run_tags, closing_tags) as run:
        run.log_params(params)
        log_dataset(run, dataset)
        yield run


def close_dead_runs(
    stores: Stores, experiment_name: str, tags: Mapping[str, str], silent_for: float | None = None
) -> list[str]:
    """Close as KILLED the RUNNING runs carrying ``tags`` whose process is gone (a pipeline
    killed with SIGKILL cannot close its own run); their ids. On this machine the process id
    tells at once; a run of another machine is closed when its ``heartbeat`` tag (``heartbeat``)
    is older than ``silent_for`` seconds. Live runs are left alone."""
    client = stores.mlflow_client()
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is None:
        return []
    query = " and ".join([*(f"tags.{k} = '{v}'" for k, v in tags.items()), "attributes.status = 'RUNNING'"])
    closed = []
    for found in client.search_runs([experiment.experiment_id], query):
        run_tags = found.data.tags
        owner = {key.removeprefix(OWNER_PREFIX): value for key, value in run_tags.items() if key.startswith(OWNER_PREFIX)}
        beat = float(run_tags.get(HEARTBEAT_TAG, "inf"))
        if is_gone(owner):
            reason = f"its process is gone (pid {owner.get('pid')}: killed)"
        elif silent_for is not None and time.time() - beat > silent_for:
            reason = f"no heartbeat from {owner.get('host', 'its machine')} for over {silent_for:.0f} s (killed or lost)"
        else:
            continue
        RunHandle(client, found.info.run_id, experiment.experiment_id, stores).kill(
            {"outcome": "killed", "failure_reason": reason}
        )
        closed.append(found.info.run_id)
    return closed


HEARTBEAT_TAG = "heartbeat"
OWNER_PREFIX = "owner_"  # owner_host, owner_pid, ...: liveness.here() of the process that runs it


@contextmanager
def heartbeat(run: RunHandle, every: float) -> Iterator[None]:
    """While the block runs, the run's ``heartbeat`` tag holds the time, renewed every ``every``
    seconds: how a process on another machine tells a live run from a killed one."""

    def beat() -> None:
        with suppress(Exception):  # a missed beat is no error; three in a row make the run look dead
            run.set_tags({HEARTBEAT_TAG: f"{time.time():.0f}"})

    beat()  # from the start: a run is never without one
    with repeating(beat, every, "run-heartbeat", join_timeout=5):
        yield


@contextmanager
def attach_run(stores: Stores, run_id: str, end: bool = False) -> Iterator[RunHandle]:
    """A handle on an existing run opened by another process (a Kubeflow component, a pool worker):
    marked FAILED (or KILLED when interrupted) if the block raises; ended FINISHED after the block
    when ``end``; else left RUNNING for the next process."""
    client = stores.mlflow_client()
    run = RunHandle(client, run_id, client.get_run(run_id).info.experiment_id, stores)
    try:
        yield run
    except Exception as error:
        run.end(RunStatus.to_string(RunStatus.FAILED), {"outcome": "failed", "failure_reason": f"{type(error).__name__}: {error}"[:5000]})
        raise
    except BaseException as stopped:
        run.kill({"outcome": "interrupted", "failure_reason": _stop_reason(stopped)})
        raise
    if end and not run.ended:
        run.end(RunStatus.to_string(RunStatus.FINISHED))


def log_dataset(run: RunHandle, dataset: DatasetRecord) -> None:
    """Dataset digest, sizes and class balance as params and as the run's input dataset."""
    run.log_params(dataset.profile)
    log_dataset_input(run, dataset)


def log_dataset_input(run: RunHandle, dataset: DatasetRecord) -> None:
    """The dataset as the run's input (the runs table's Dataset column), without params."""
    entity = Dataset(
        name=dataset.name,
        digest=dataset.digest[:32],
        source_type="local",
        source=json.dumps({"uri": dataset.source}),
        profile=json.dumps(dict(dataset.profile)),
    )
    context = InputTag("mlflow.data.context", "training")
    run.client.log_inputs(run.run_id, [DatasetInput(entity, [context])])


@dataclass(frozen=True)
class TrialTracker:
    """Opens a nested child run per Optuna trial under the parent run.

    Holds only ids and URIs, so it pickles into the processes that run trials side by side.
    """

    parent_run_id: str
    stores: Stores
    experiment_name: str
    study_name: str
    dataset: DatasetRecord | None = None  # each trial's input dataset

    def __call__(self, number: int, params: Mapping[str, Any]) -> AbstractContextManager[RunHandle]:
        return _trial_run(self, number, params)

    def close_stale(self, number: int, reason: str) -> None:
        """Close the runs of trial ``number`` of this study that are still RUNNING (their process
        died without a word: SIGKILL, out of memory, a lost machine) as KILLED with ``reason``."""
        client = self.stores.mlflow_client()
        experiment = client.get_experiment_by_name(self.experiment_name)
        if experiment is None:
            return
        query = f"tags.optuna_study = '{self.study_name}' and tags.optuna_trial = '{number}'"
        for run in client.search_runs(
            [experiment.experiment_id], f"{query} and attributes.status = 'RUNNING'"
        ):
            stale = RunHandle(client, run.info.run_id, experiment.experiment_id, self.stores)
            stale.kill({"outcome": "stale", "failure_reason": reason})


def trial_tracker(
    parent: RunHandle, experiment_name: str, study_name: str, dataset: DatasetRecord | None = None
) -> TrialTracker:
    return TrialTracker(parent.run_id, parent.stores, experiment_name, study_name, dataset)


BEST_TAG = "best_trial"
_BEST_SUFFIX = " · best"


def mark_best_trial(parent: RunHandle, experiment_name: str, study_name: str, number: int) -> str | None:
    """Tag the run of trial ``number`` of ``study_name`` ``best_trial=true`` (and end its name with
    "· best"), untag an earlier best of the same study (a resumed study may have a new one), and
    put the trial's number and run id on ``parent``. Returns that run id (None: no run found)."""
    client = parent.client
    query = f"tags.optuna_study = '{study_name}' and tags.stage = 'trial'"
    best_id = None
    for run in client.search_runs([parent.experiment_id], query, max_results=5000):
        name = run.data.tags.get(MLFLOW_RUN_NAME, "")
        if run.data.tags.get("optuna_trial") == str(number) and run.info.status == "FINISHED":
            best_id = best_id or run.info.run_id
            if run.info.run_id == best_id:
                client.set_tag(run.info.run_id, BEST_TAG, "true")
                if not name.endswith(_BEST_SUFFIX):
                    client.update_run(run.info.run_id, name=name + _BEST_SUFFIX)
                continue
        if run.data.tags.get(BEST_TAG) == "true":
            client.set_tag(run.info.run_id, BEST_TAG, "false")
            client.update_run(run.info.run_id, name=name.removesuffix(_BEST_SUFFIX))
    if best_id is not None:
        parent.set_tags({"best_trial_number": number, "best_trial_run_id": best_id})
    return best_id


def trial_runs(parent: RunHandle, study_name: str) -> dict[int, tuple[str, str]]:
    """Trial number → (run id, run name) of its run in ``parent``'s experiment: the one started
    last, where a trial has several."""
    query = f"tags.optuna_study = '{study_name}' and tags.stage = 'trial'"
    found: dict[int, tuple[str, str]] = {}
    ordered = ["attributes.start_time ASC"]
    for run in parent.client.search_runs([parent.experiment_id], query, max_results=5000, order_by=ordered):
        number = run.data.tags.get("optuna_trial", "")
        if number.isdigit():
            found[int(number)] = (run.info.run_id, run.data.tags.get(MLFLOW_RUN_NAME, ""))
    return found


def trial_name(number: int, params: Mapping[str, Any]) -> str:
    """``trial-003 bi-gru×2 32u d0.1 lr1.1e-3``: what the trial trained, rounded (the exact values
    are its params), so the runs table's name column tells trials apart."""
    parts = [f"trial-{number:03d}"]
    if "cell" in params:
        cell = f"bi-{params['cell']}" if str(params.get("bidirectional")) == "True" else str(params["cell"])
        parts.append(f"{cell}×{params.get('layers', 1)}")
    if "units" in params:
        parts.append(f"{params['units']}u")
    if "dropout" in params:
        parts.append(f"d{float(params['dropout']):.1f}")
    if "learning_rate" in params:
        parts.append(f"lr{float(params['learning_rate']):.1e}".replace("e-0", "e-"))
    return " ".join(parts)


def outcome_name(name: str, outcome: str, epochs: int) -> str:
    """The run name with how the run ended (``… · pruned after 1 epoch``): the name is the one
    column the runs table always shows, while MLflow draws pruned and crashed runs alike (KILLED)."""
    unit = "epoch" if epochs == 1 else "epochs"
    return f"{name} · {outcome} after {epochs} {unit}"


@contextmanager
def _trial_run(tracker: TrialTracker, number: int, params: Mapping[str, Any]) -> Iterator[RunHandle]:
    """The trial's run, named by its configuration. However it ends, the ``epochs`` tag and the
    name's suffix count the epochs it logged (metric steps are 1-based epochs, so they agree)."""
    tags = {MLFLOW_PARENT_RUN_ID: tracker.parent_run_id, "stage": "trial", "optuna_trial": str(number)}
    # Whose run it is: a run its process could not close (the store was out of reach, a SIGKILL)
    # is closed by the next command on this machine (``close_dead_runs``).
    tags |= {f"{OWNER_PREFIX}{key}": str(value) for key, value in here().items()}
    tags["optuna_study"] = tracker.study_name
    name = trial_name(number, params)
    with open_run(tracker.stores, tracker.experiment_name, name, tags) as run:
        run.log_params(params)
        if tracker.dataset is not None:
            log_dataset_input(run, tracker.dataset)
        outcome = "interrupted"  # what open_run calls a run stopped by a signal
        try:
            yield run
            outcome = "complete"
        except Exception:
            outcome = "failed"
            raise
        finally:
            # Closed by its owner (pruned, stale) with its own outcome tag, else as it went here.
            outcome = run.client.get_run(run.run_id).data.tags.get("outcome", outcome) if run.ended else outcome
            run.set_tags({"outcome": outcome, "epochs": run.last_step})
            run.rename(outcome_name(name, outcome, run.last_step))
