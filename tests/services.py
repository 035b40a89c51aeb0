"""Real services for the scale-out tests: a private PostgreSQL cluster and an MLflow tracking server.

Both run on 127.0.0.1 on free ports, in temporary folders, for one test session, and are stopped at
its end. PostgreSQL comes from the machine (Debian's ``postgresql`` package: ``.ci/run`` installs
it): without it the tests that need it are skipped with the reason, except under ``CI=true``,
where a missing service must fail the build rather than quietly test less.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

_PG_GLOB = "/usr/lib/postgresql/*/bin/initdb"
_PG_USER = "postgres"  # initdb refuses to run as root
# Settings for a throwaway cluster: nothing here must survive a crash, so skip the flushes.
_PG_OPTIONS = "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
_SERVER_START_S = 60.0
# MLflow's GenAI job runner (8 huey processes, ~0.7 GB) is not used here; off, the server on a
# fresh database is healthy in ~6 s instead of ~13 s on 2 cores.
_SERVER_ENV = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


def free_port() -> int:
    """A TCP port nobody listens on now (the OS's choice; taken again only by a race)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def unavailable(reason: str) -> None:
    """Skip, or fail under ``CI=true``: CI must not pass by testing less."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason} (CI=true: a missing service is a failure)", pytrace=False)
    pytest.skip(reason)


def postgres_bin() -> Path | None:
    """The newest installed PostgreSQL's bin folder (Debian layout), or None."""
    found = [Path(p).parent for p in glob.glob(_PG_GLOB)]
    return max(found, key=lambda folder: int(folder.parent.name), default=None)


@dataclass
class PostgresCluster:
    """A running private cluster; ``trust`` authentication for the ``postgres`` role on 127.0.0.1."""

    bin_dir: Path
    data_dir: Path
    port: int
    as_user: list[str]  # prefix that runs a command as the cluster's owner
    durable: bool = False  # True: PostgreSQL's defaults (fsync on), for timings that mean something

    def _ctl(self, *args: str) -> None:
        subprocess.run(
            [*self.as_user, str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir), *args],
            check=True,
            capture_output=True,
            timeout=60,
        )

    @property
    def log_path(self) -> Path:
        # Always given: without -l the server inherits pg_ctl's stdout and run() waits on it forever.
        return self.data_dir.parent / "server.log"

    def start(self) -> None:
        socket_dir = self.data_dir.parent  # not /var/run/postgresql, which may not exist
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={socket_dir} "
        self._ctl(
            "start", "-w", "-l", str(self.log_path), "-o", options + ("" if self.durable else _PG_OPTIONS)
        )

    def restart(self) -> None:
        """``pg_ctl restart`` (fast shutdown): every open connection is cut, as in a server restart."""
        self._ctl("restart", "-w", "-m", "fast", "-l", str(self.log_path))

    def stop(self) -> None:
        self._ctl("stop", "-w", "-m", "immediate")

    def url(self, dbname: str) -> str:
        """A SQLAlchemy URL for database ``dbname``, created on first use."""
        import psycopg2

        admin = psycopg2.connect(host="127.0.0.1", port=self.port, user=_PG_USER, dbname="postgres")
        try:
            admin.autocommit = True  # CREATE DATABASE cannot run in a transaction
            with admin.cursor() as cursor:
                cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", (dbname,))
                if cursor.fetchone() is None:
                    cursor.execute(f'CREATE DATABASE "{dbname}"')
        finally:
            admin.close()
        return f"postgresql://{_PG_USER}@127.0.0.1:{self.port}/{dbname}"

    def connections(self) -> int:
        """Client connections open now, all databases (the connection budget's measure)."""
        import psycopg2

        admin = psycopg2.connect(host="127.0.0.1", port=self.port, user=_PG_USER, dbname="postgres")
        try:
            with admin.cursor() as cursor:
                cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'")
                return int(cursor.fetchone()[0]) - 1  # not this one
        finally:
            admin.close()


def start_postgres(durable: bool = False) -> PostgresCluster:
    """initdb + pg_ctl start in a fresh folder the ``postgres`` user owns; ``durable`` keeps
    PostgreSQL's flushes on (benchmarks), else they are off (tests). Raises RuntimeError when
    PostgreSQL is not installed or will not start (the message says which)."""
    bin_dir = postgres_bin()
    if bin_dir is None:
        raise RuntimeError(f"PostgreSQL is not installed (no {_PG_GLOB}; apt-get install postgresql)")
    root = Path(tempfile.mkdtemp(prefix="sentiment-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:
        owner = pwd.getpwnam(_PG_USER)
        os.chown(root, owner.pw_uid, owner.pw_gid)
        as_user = ["runuser", "-u", _PG_USER, "--"]
    data_dir = root / "data"
    try:
        subprocess.run(
            [*as_user, str(bin_dir / "initdb"), "-A", "trust", "-U", _PG_USER, "-E", "UTF8", "--no-sync",
             "-D", str(data_dir)],
            check=True, capture_output=True, timeout=120,
        )  # fmt: skip
        cluster = PostgresCluster(bin_dir, data_dir, free_port(), as_user, durable)
        cluster.start()
    except subprocess.CalledProcessError as error:
        detail = (error.stderr or b"").decode(errors="replace").strip().splitlines()[-1:]
        log = root / "server.log"
        if log.exists():  # PostgresCluster.log_path
            detail += log.read_text(errors="replace").strip().splitlines()[-3:]
        shutil.rmtree(root, ignore_errors=True)
        raise RuntimeError(f"PostgreSQL did not start: {' / '.join(detail)}") from error
    return cluster


@dataclass
class MlflowServer:
    """A running ``mlflow server`` on PostgreSQL with proxied artifacts."""

    url: str
    artifacts_dir: Path
    backend_store_uri: str
    process: subprocess.Popen
    log_path: Path

    def stop(self) -> None:
        if self.process.poll() is None:
            # Its own session: the uvicorn workers are children; end the whole group.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=15)


def start_mlflow_server(
    backend_store_uri: str, folder: Path, env: dict[str, str] | None = None
) -> MlflowServer:
    """``mlflow server`` on ``backend_store_uri`` with artifacts under ``folder/artifacts``, ready
    when it answers ``/health``. Raises RuntimeError (with its log's tail) if it exits or is not
    ready within a minute."""
    port = free_port()
    artifacts = folder / "artifacts"
    artifacts.mkdir(parents=True, exist_ok=True)
    log_path = folder / "mlflow-server.log"
    command = [
        str(Path(sys.executable).parent / "mlflow"), "server",
        "--backend-store-uri", backend_store_uri,
        "--artifacts-destination", str(artifacts),
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
    ]  # fmt: skip
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, **_SERVER_ENV, **(env or {})},
        )
    server = MlflowServer(f"http://127.0.0.1:{port}", artifacts, backend_store_uri, process, log_path)
    deadline = time.monotonic() + _SERVER_START_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            break
        with contextlib.suppress(OSError), urllib.request.urlopen(f"{server.url}/health", timeout=2) as reply:
            if reply.status == 200:
                return server
        time.sleep(0.25)
    server.stop()
    tail = " / ".join(log_path.read_text(errors="replace").strip().splitlines()[-3:])
    raise RuntimeError(f"mlflow server did not become healthy (exit code {process.poll()}): {tail}")


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresCluster]:
    """A private PostgreSQL cluster for the session: ``postgres.url("optuna")`` creates and names a
    database; ``postgres.restart()`` cuts every connection."""
    try:
        cluster = start_postgres()
    except RuntimeError as error:
        unavailable(str(error))
    yield cluster
    cluster.stop()
    shutil.rmtree(cluster.data_dir.parent, ignore_errors=True)


@pytest.fixture(scope="session")
def mlflow_server(postgres: PostgresCluster, tmp_path_factory) -> Iterator[MlflowServer]:
    """``mlflow server`` on the session's PostgreSQL (database ``mlflow``), artifacts proxied into
    ``mlflow_server.artifacts_dir``; ``mlflow_server.url`` is the tracking URI."""
    server = start_mlflow_server(postgres.url("mlflow"), tmp_path_factory.mktemp("mlflow-server"))
    yield server
    server.stop()
