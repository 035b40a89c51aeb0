"""Where runs, models, studies and artifacts live: the only module that knows URI schemes.

``resolve(cfg)`` turns the config (already merged with the environment, ``MLFLOW_TRACKING_URI``
included) into a frozen ``Stores``: absolute URIs for the MLflow tracking and registry stores,
the Optuna storage and the experiments' artifact location, with local folders created. Everything
else receives clients made from those URIs; nothing sets MLflow's process-global URIs.

The embedded default keeps everything under ``mlruns/`` in the repository (``config.STATE_ROOT``:
in the user's home for an installed package), addressed by absolute
path so every process (CLI, Prefect runs, search workers, ``mlflow ui``) opens the same files.
"""

from __future__ import annotations

import fcntl
import glob
import hashlib
import logging
import os
import re
import tempfile
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.config import STATE_ROOT, PipelineConfig, env_var, flag
from pipeline.secrets import is_redacted, redact

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

log = logging.getLogger(__name__)

DEFAULT_STORE = STATE_ROOT / "mlruns"
_SQLITE = "sqlite:///"
LOCAL_UI = "http://127.0.0.1:5000"


class StoreError(RuntimeError):
    """A store that cannot be used as configured; the message names the setting to change, and
    the store's URI without its password."""

    def __init__(self, message: str) -> None:
        super().__init__(redact(message))


@dataclass(frozen=True)
class Stores:
    tracking_uri: str
    registry_uri: str
    artifact_root: str | None  # None: the tracking server chooses (proxied artifacts)
    study_storage_uri: str | None  # None: none given and none can be derived

    @property
    def study_storage(self) -> str:
        """The Optuna storage URL. Raises StoreError when the tracking store is not the embedded
        SQLite one and no storage was given: a study on one machine's disk would be invisible to
        the other machines that share the tracking server."""
        if self.study_storage_uri is None:
            raise StoreError(
                f"no Optuna storage for the tracking store {self.tracking_uri}: pass "
                f"{flag('search.storage')} (or {env_var('search.storage')}) with a database URL "
                "every worker can reach, e.g. postgresql://user@host/optuna"
            )
        return self.study_storage_uri

    @property
    def is_local(self) -> bool:
        return self.tracking_uri.startswith(_SQLITE)

    def in_files_here(self) -> list[str]:
        """The stores (tracking, study) that are files on this machine: out of a container's
        reach, or another machine's."""
        return [uri for uri in (self.tracking_uri, self.study_storage_uri) if uri and uri.startswith(_SQLITE)]

    def mlflow_client(self) -> MlflowClient:
        from mlflow.tracking import MlflowClient

        return MlflowClient(self.tracking_uri, registry_uri=self.registry_uri)

    def experiment_artifact_location(self, experiment_name: str) -> str | None:
        return None if self.artifact_root is None else f"{self.artifact_root.rstrip('/')}/{experiment_name}"

    def ui_url(self) -> str:
        """Where people browse the runs: the tracking server itself, else a local ``mlflow ui``."""
        return (
            redact(self.tracking_uri.rstrip("/"))
            if self.tracking_uri.startswith(("http://", "https://"))
            else LOCAL_UI
        )

    def ui_command(self) -> str | None:
        """The command that opens the MLflow UI on the embedded store (None with a server)."""
        if not self.is_local:
            return None
        return f"mlflow ui --backend-store-uri {self.tracking_uri}"

    @property
    def lock_database(self) -> str | None:
        """A PostgreSQL database every process that registers models can reach, for locks across
        machines: the tracking store itself when it is one, else the study storage."""
        for uri in (self.tracking_uri, self.study_storage_uri):
            if uri and uri.startswith(("postgresql:", "postgresql+")):
                return uri
        return None

    def alias_lock(self, model_name: str):
        """An exclusive lock around moving ``model_name``'s alias: a file lock beside the embedded
        store (processes on one machine); a PostgreSQL advisory lock on ``lock_database`` (any
        number of machines; released by the server if the holder dies). With neither, moves are
        serialised only by the registry's re-check after deciding, and a warning says so."""
        key = f"sentiment-alias:{model_name}"
        if self.is_local:
            folder = Path(self.tracking_uri.removeprefix(_SQLITE)).parent
            return _file_lock(folder / f".registry-{hashlib.sha1(model_name.encode()).hexdigest()[:12]}.lock")
        if self.lock_database is not None:
            return _advisory_lock(self.lock_database, key)
        log.warning(
            "no PostgreSQL database to lock the champion alias of %s across machines: pass %s",
            model_name,
            flag("search.storage"),
        )
        return nullcontext()

    def download_model(self, model_uri: str) -> str:
        """A local folder holding the MLflow model at ``model_uri`` (``models:/NAME@ALIAS``,
        ``models:/NAME/VERSION``, ``runs:/…`` or a local path). Raises MlflowException when the
        model does not exist."""
        if Path(model_uri).exists():
            return model_uri
        from mlflow.artifacts import download_artifacts
        from mlflow.store.artifact.utils.models import get_model_name_and_version

        if model_uri.startswith("models:/"):
            # MLflow resolves models:/ through its process-global registry URI: resolve it here.
            client = self.mlflow_client()
            found = get_model_name_and_version(client, model_uri)
            if len(found) == 1:  # models:/<model_id>: a logged model, registered or not
                model_uri = client.get_logged_model(found[0]).artifact_location
            else:
                model_uri = client.get_model_version_download_uri(*found)
        return download_artifacts(
            artifact_uri=model_uri, tracking_uri=self.tracking_uri, registry_uri=self.registry_uri
        )

    def check(self, study: bool = True) -> None:
        """Each store reachable and writable, in seconds: the tracking and registry store, the
        artifact folder and (with ``study``) the Optuna storage. Raises StoreError naming the
        store, its URI and the cause. Nothing is retried: a store that is down at the start is
        a mistake to report, not a blip to wait out."""
        storage = self.study_storage if study else None  # a missing one is a setting to fix first
        _check_store("MLflow tracking store", self.tracking_uri)
        if self.artifact_root is not None and self.artifact_root.startswith("file:"):
            _check_folder(
                "MLflow artifact store", self.artifact_root, Path(self.artifact_root.removeprefix("file://"))
            )
        if storage is not None:
            _check_store("Optuna study storage", storage)


@contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


_GLOBAL_URI_LOCK = threading.Lock()


@contextmanager
def mlflow_global_uri(uri: str) -> Iterator[None]:
    """MLflow's process-global tracking URI set to ``uri`` for the block, for the few MLflow APIs
    that read nothing else (``Model.log``, resolving a ``models:/<id>`` registry source).

    MLflow's own ``_use_tracking_uri`` is not safe here: it also writes ``MLFLOW_TRACKING_URI``
    into the environment and, leaving, unsets it even when the user had set it, and two threads
    (Prefect tasks) interleaving leave the other's URI behind for the rest of the process. So
    blocks take turns, and the global and the variable are put back exactly as they were."""
    from mlflow.tracking._tracking_service import utils

    with _GLOBAL_URI_LOCK:
        saved_uri, saved_env = utils._tracking_uri, os.environ.get("MLFLOW_TRACKING_URI")
        utils.set_tracking_uri(uri)
        try:
            yield
        finally:
            utils.set_tracking_uri(saved_uri)
            if saved_env is None:
                os.environ.pop("MLFLOW_TRACKING_URI", None)
            else:
                os.environ["MLFLOW_TRACKING_URI"] = saved_env


@contextmanager
def _advisory_lock(url: str, key: str) -> Iterator[None]:
    """PostgreSQL's session advisory lock on ``key``, held by one connection for the block."""
    import sqlalchemy

    lock_id = int.from_bytes(hashlib.sha1(key.encode()).digest()[:8], "big", signed=True)
    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
    try:
        with engine.connect() as connection:
            connection.execute(sqlalchemy.text("SELECT pg_advisory_lock(:id)"), {"id": lock_id})
            try:
                yield
            finally:
                connection.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:id)"), {"id": lock_id})
    finally:
        engine.dispose()


def database_pool(url: str) -> dict[str, Any]:
    """SQLAlchemy engine options for a study storage: for a database server, a small pool checked
    before use (a restarted server's dead connections are replaced, not failed on) and recycled.

    Connection budget: a search process holds at most 3 (its trials, the heartbeat thread, the
    progress line), so 8 single-process workers hold at most 24 of PostgreSQL's default 100, and
    the MLflow server's own pool the rest it needs (docs/scale-out.md). SQLite: Optuna's defaults.
    """
    if url.startswith("sqlite"):
        return {}
    options: dict[str, Any] = {"pool_size": 2, "max_overflow": 1, "pool_pre_ping": True, "pool_recycle": 900}
    if url.startswith(("postgresql", "mysql")):
        options["connect_args"] = {"connect_timeout": 10}
    return options


# One retry layer only: the Prefect tasks' bounded backoff. MLflow's own HTTP client would retry
# 7 times with 2-minute timeouts underneath it (minutes per failing call).
# And stdout is for the commands' results (JSON): MLflow's "🏃 View run … at:" lines stay off it.
_MLFLOW_HTTP = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "20",
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
}
_PROBE_TIMEOUT = 5.0


def _check_store(what: str, uri: str) -> None:
    if uri.startswith(_SQLITE):
        path = Path(uri.removeprefix(_SQLITE))
        if path.exists() and not path.is_file():
            raise StoreError(f"{what} {uri}: {path} is not a file")
        _check_folder(what, uri, path.parent)
    elif uri.startswith(("http://", "https://")):
        _check_http(what, uri)
    else:
        _check_database(what, uri)


def _check_folder(what: str, uri: str, folder: Path) -> None:
    """``folder``, or the nearest folder above it that exists, takes new files; nothing is left."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    try:
        if not existing.is_dir():
            raise NotADirectoryError(0, f"{existing} is not a folder")
        with tempfile.NamedTemporaryFile(dir=existing, prefix=".write-check-"):
            pass
    except OSError as error:
        raise StoreError(f"{what} {uri}: cannot write to {folder}: {error.strerror or error}") from None


def _check_http(what: str, uri: str) -> None:
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=_PROBE_TIMEOUT) as answer:
            answer.read(64)
    except urllib.error.HTTPError as error:
        raise StoreError(f"{what} {uri}: /health answered {error.code} {error.reason}") from None
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise StoreError(f"{what} {uri}: cannot connect ({reason})") from None


def _check_database(what: str, uri: str) -> None:
    """A database URL (postgresql://, mysql://): connect once, with a short timeout."""
    import sqlalchemy

    try:
        timeout = {"connect_timeout": int(_PROBE_TIMEOUT)} if uri.startswith(("postgresql", "mysql")) else {}
        engine = sqlalchemy.create_engine(uri, connect_args=timeout)
        with engine.connect() as connection:
            connection.execute(sqlalchemy.text("SELECT 1"))
        engine.dispose()
    except ModuleNotFoundError as error:
        raise StoreError(f"{what} {uri}: no database driver installed ({error.name})") from None
    except Exception as error:  # sqlalchemy wraps every driver's errors differently
        first = str(getattr(error, "orig", None) or error).strip().splitlines()[0]
        raise StoreError(f"{what} {uri}: cannot connect ({first})") from None


def _make_folder(what: str, uri: str, folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise StoreError(f"{what} {uri}: cannot create {folder}: {error.strerror or error}") from None


def resolve(cfg: PipelineConfig) -> Stores:
    """The stores ``cfg`` points at, local folders created.

    Defaults: the embedded SQLite store under ``mlruns/``, its artifacts in ``mlruns/artifacts``
    and the Optuna study in ``mlruns/optuna.db``. With any other tracking URI, artifacts go where
    the server says unless ``tracking.artifact_root`` is given, and the study storage must be given.
    Raises StoreError when a local folder cannot be created. Also bounds MLflow's HTTP retries for
    this process (unless set in the environment): see ``_MLFLOW_HTTP``.
    """
    for name, value in _MLFLOW_HTTP.items():
        os.environ.setdefault(name, value)
    given = _with_passwords(cfg)
    tracking_uri = _absolute_sqlite(given["tracking.tracking_uri"] or f"{_SQLITE}{DEFAULT_STORE / 'mlflow.db'}")
    local_folder = (
        Path(tracking_uri.removeprefix(_SQLITE)).parent if tracking_uri.startswith(_SQLITE) else None
    )
    artifact_root = given["tracking.artifact_root"]
    study_storage = given["search.storage"] and _absolute_sqlite(given["search.storage"])
    if local_folder is not None:
        _make_folder("MLflow tracking store", tracking_uri, local_folder)
        artifact_root = artifact_root or (local_folder / "artifacts").as_uri()
        study_storage = study_storage or f"{_SQLITE}{local_folder / 'optuna.db'}"
    if study_storage is not None and study_storage.startswith(_SQLITE):
        _make_folder("Optuna study storage", study_storage, Path(study_storage.removeprefix(_SQLITE)).parent)
    return Stores(tracking_uri, tracking_uri, artifact_root, study_storage)


# The store settings, and the environment variables that may hold each (``load_config``'s sources).
STORE_FIELDS = {
    "tracking.tracking_uri": (env_var("tracking.tracking_uri"), "MLFLOW_TRACKING_URI"),
    "tracking.artifact_root": (env_var("tracking.artifact_root"),),
    "search.storage": (env_var("search.storage"),),
}


def _with_passwords(cfg: PipelineConfig) -> dict[str, str | None]:
    """The store URIs of ``cfg``; one that arrived redacted (a deployment's or a work pool's
    parameters, which never hold a password) is taken from this process's environment, where
    the same URI with its password must be. Raises StoreError naming the variable to set."""
    section = {"tracking": cfg.tracking, "search": cfg.search}
    given: dict[str, str | None] = {}
    for dotted, variables in STORE_FIELDS.items():
        part, name = dotted.split(".")
        uri = getattr(section[part], name)
        if uri is not None and is_redacted(uri):
            found = [os.environ[v] for v in variables if v in os.environ and redact(os.environ[v]) == uri]
            if not found:
                raise StoreError(
                    f"{dotted} {uri}: passwords are never recorded in parameters; give this process "
                    f"the URI with its password in {variables[0]}"
                )
            uri = found[0]
        given[dotted] = uri
    return given


def password_environment(cfg: PipelineConfig) -> dict[str, str]:
    """The store URIs of ``cfg`` that hold a password, by the environment variable that gives them:
    for the processes a command starts (a deployment's flow runs), whose parameters hold them
    redacted."""
    given = _with_passwords(cfg)
    return {STORE_FIELDS[d][0]: uri for d, uri in given.items() if uri is not None and redact(uri) != uri}


def preflight(cfg: PipelineConfig, study: bool = True) -> Stores:
    """Everything that can be checked before any work, in seconds and without importing the heavy
    libraries: the dataset exists and every store is reachable and writable (with ``study``, the
    Optuna storage too). Returns the stores. Raises StoreError naming the path or store at fault.
    """
    data = cfg.data.path
    if isinstance(data, Path) and not data.exists() and not glob.glob(str(data)):  # a URL: check_source
        raise StoreError(f"dataset not found: {cfg.data.path}")
    stores = resolve(cfg)
    stores.check(study=study)
    return stores


def store_exists(uri: str | None) -> bool:
    """Whether there is a store at ``uri`` to look into: an embedded (SQLite) one only once its
    file exists, so a command that only looks never creates one; a server or database always."""
    return uri is not None and (not uri.startswith(_SQLITE) or Path(uri.removeprefix(_SQLITE)).exists())


def _absolute_sqlite(uri: str) -> str:
    """``sqlite:///relative.db`` follows the current folder: pin it, so every process opens one file."""
    if not uri.startswith(_SQLITE):
        return uri
    return f"{_SQLITE}{Path(uri.removeprefix(_SQLITE)).expanduser().resolve()}"


def is_transient(error: BaseException) -> bool:
    """Whether another try of a store call may succeed: a timeout, a 5xx, a locked database, a
    connection dropped mid-run. Never a permission, a wrong path or a bad request."""
    from mlflow.exceptions import MlflowException
    from optuna.exceptions import StorageInternalError
    from sqlalchemy.exc import OperationalError

    if isinstance(error, (TimeoutError, ConnectionError)):
        return True
    if isinstance(error, MlflowException) and error.get_http_status_code() >= 500:
        text = str(error).lower()
        return any(sign in text for sign in _TRANSIENT) or error.error_code in _TRANSIENT_CODES
    text = str(error).lower()
    return isinstance(error, (StorageInternalError, OperationalError)) and any(
        sign in text for sign in _TRANSIENT
    )


def tracking_unreachable(error: BaseException | None) -> bool:
    """Whether ``error`` (or one it was raised while handling) is MLflow's tracking store out of
    reach past the tracking layer's retries: a store outage, not a failed trial or stage."""
    from mlflow.exceptions import MlflowException

    while error is not None:
        if isinstance(error, MlflowException | ConnectionError) and (
            is_transient(error) or "max retries exceeded" in str(error).lower()
        ):
            return True
        error = error.__context__
    return False


def failed_store(
    error: BaseException | None, tracking_uri: str, storage_uri: str | None, when: str = ""
) -> StoreError | None:
    """``error`` as the store that failed, in one line (``when``: " during the search"), or None
    when no store is at fault.

    A store out of reach (past the tracking layer's retries) or refusing writes mid-run (an
    SQLite file made read-only, a full disk, a database that went away) is not a failed trial
    or stage: the caller stops and says which store, instead of MLflow's and SQLAlchemy's
    multi-line texts (649 stderr lines once). MLflow wraps its database's errors in an
    MlflowException; Optuna's arrive bare or as StorageInternalError."""
    from mlflow.exceptions import MlflowException
    from sqlalchemy.exc import OperationalError

    tracking, storage = f"MLflow tracking store {tracking_uri}", f"Optuna study storage {storage_uri or ''}".rstrip()
    chain: list[BaseException] = []
    while error is not None and error not in chain:
        chain.append(error)
        error = error.__cause__ or (None if error.__suppress_context__ else error.__context__)
    # The database's own error first (MLflow calls every one of them TEMPORARILY_UNAVAILABLE):
    # its driver's OperationalError, under MLflow's MlflowException or Optuna's
    # StorageInternalError. Optuna wraps a value too long (DataError) the same way: not a store
    # failure, that trial's own.
    found = next((depth for depth, link in enumerate(chain) if isinstance(link, OperationalError)), None)
    if found is not None:
        store = tracking if any(isinstance(outer, MlflowException) for outer in chain[:found]) else storage
        return StoreError(f"{store}: cannot write{when} ({_to_the_point(chain[found])})")
    for link in chain:
        if isinstance(link, MlflowException | ConnectionError) and tracking_unreachable(link):
            return StoreError(f"{tracking}: {'lost' if when else 'cannot connect'}{when} ({_to_the_point(link)})")
    return None


def refuses_writes(error: BaseException | None) -> bool:
    """Whether ``error`` (or one it was raised while handling) is a store that will not take a
    write until someone acts (a read-only file or folder, a full disk): a retry cannot help,
    unlike a database restart or a lock, which the next try rides out."""
    while error is not None:
        text = str(getattr(error, "orig", None) or error).lower()
        if any(sign in text for sign in _REFUSES_WRITES):
            return True
        error = error.__cause__ or error.__context__
    return False


_REFUSES_WRITES = (
    "readonly database",
    "read-only",
    "unable to open database file",
    "database or disk is full",
    "disk i/o error",
    "no space left",
    "permission denied",
)


def _to_the_point(error: BaseException) -> str:
    """The driver's own words (SQLAlchemy's "(sqlite3.OperationalError) unable to open database
    file" without its SQL, parameters and link; urllib3's errno without its 300 characters)."""
    text = redact(str(getattr(error, "orig", None) or error))  # before it is cut: a long token's "@" may go
    errno = re.search(r"\[Errno -?\d+\][^'\")]*", text)
    if errno:
        return errno.group(0).strip()
    lines = [line for line in text.splitlines() if line.strip() and not line.startswith(("[SQL", "[parameters", "(Background", "(raised as"))]
    return (lines[0] if lines else type(error).__name__).strip()[:200]


_TRANSIENT = (
    "database is locked",
    "timed out",
    "timeout",
    "connection refused",
    "connection reset",
    "temporarily unavailable",
    "too many requests",
    "503",
    "502",
    "504",
)
_TRANSIENT_CODES = ("TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED", "DEADLINE_EXCEEDED")
