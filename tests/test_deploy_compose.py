"""deploy/compose.yaml read, not run (tests/test_containers.py runs it): every command in it is
checked against the installed CLIs' own ``--help`` (sentiment, mlflow server, prefect), every
setting it passes through the environment against the settings those programs read, its connection
budget against PostgreSQL's default limit, its defaults against what a user trips over (a password,
published ports, a data folder), and the host-network override against these machines' rules."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from pathlib import Path

import pytest
import yaml

from pipeline.config import PROJECT_ROOT

DEPLOY = PROJECT_ROOT / "deploy"
COMPOSE = DEPLOY / "compose.yaml"
HOST_OVERRIDE = DEPLOY / "compose.host.yaml"
TOOLS = ("sentiment", "mlflow", "prefect")
BIN = Path(sys.executable).parent
_VARIABLE = re.compile(r"\$\{(\w+)(?::?([-?])([^}]*))?\}")

# PostgreSQL's default max_connections, less its superuser_reserved_connections.
PG_AVAILABLE = 100 - 3
# Engines one `mlflow server` process opens on its backend store: measured with
# MLFLOW_SQLALCHEMYSTORE_POOL_SIZE=2 / MAX_OVERFLOW=1 under 12 concurrent clients, 9 connections.
MLFLOW_ENGINES_PER_PROCESS = 3
WORKERS_BUDGETED = 8
# Positional arguments a CLI takes but its --help hides: `prefect automation inspect NAME`
# (prefect/cli/automation.py 3.8.8: the name is `cyclopts.Parameter(show=False)`).
HIDDEN_POSITIONALS = {("prefect", "automation", "inspect"): 1}


def interpolate(text: str) -> str:
    """Compose's ``${VAR:-default}`` and ``${VAR:?error}``, with each variable unset (its default),
    or set to a placeholder (a required one)."""
    return _VARIABLE.sub(lambda match: match.group(3) if match.group(2) == "-" else "value", text)


def load_compose(path: Path = COMPOSE) -> dict:
    return yaml.safe_load(interpolate(path.read_text(encoding="utf-8")))


def service_commands(service: dict) -> list[list[str]]:
    """The argument vectors a service runs: entrypoint + command, or each ``&&`` step of ``sh -c``."""
    entrypoint, command = service.get("entrypoint") or [], service.get("command") or []
    if isinstance(command, str):
        command = shlex.split(command)
    if entrypoint == ["sh", "-c"]:  # steps joined by && / || / ;, grouped in { }, output redirected
        steps = re.split(r"&&|\|\||;", command[0])
        return [
            argv
            for step in steps
            if (argv := [t for t in shlex.split(step) if t not in "{}" and ">" not in t])
        ]
    return [[*entrypoint, *command]] if entrypoint or command else []


def all_commands() -> list[tuple[str, list[str]]]:
    """Every command the project's image runs (PostgreSQL's own image aside)."""
    return [
        (name, argv)
        for name, service in load_compose()["services"].items()
        for argv in service_commands(service)
        if name != "postgres"
    ]


@cache
def help_text(tool: str, words: tuple[str, ...]) -> tuple[int, str]:
    """``<tool> <words...> --help`` run as users run it: exit code and output, wide enough that
    nothing is cut."""
    env = {**os.environ, "COLUMNS": "250", "NO_COLOR": "1", "TERM": "dumb"}
    done = subprocess.run(
        [str(BIN / tool), *words, "--help"], capture_output=True, text=True, timeout=120, env=env
    )
    return done.returncode, done.stdout + done.stderr


def check_command(argv: list[str]) -> list[str]:
    """What is wrong with one command line: unknown (sub)command, extra arguments, unknown flags."""
    tool, rest = argv[0], argv[1:]
    words = tuple(token for token in _leading_words(rest))
    code, text = help_text(tool, words)
    usage = re.search(rf"Usage: {tool}((?: [a-z][\w-]*)*)((?: \S+)*)", text)
    if code != 0 or usage is None:
        return [f"`{tool} {' '.join(words)} --help` failed ({code}): {text.strip()[-300:]}"]
    path = usage.group(1).split()
    placeholders = [token for token in usage.group(2).split() if token.strip("[].").isupper()]
    problems = []
    if tuple(path) != words[: len(path)]:
        problems.append(f"`{tool} {' '.join(words)}`: the CLI knows it as `{tool} {' '.join(path)}`")
    extra = len(words) - len(path)
    allowed = len([p for p in placeholders if p not in ("[OPTIONS]", "OPTIONS", "COMMAND")])
    if extra > allowed + HIDDEN_POSITIONALS.get((tool, *path), 0):
        problems.append(f"`{' '.join(argv)}`: {extra} positional argument(s), usage is `{usage.group(0)}`")
    for flag in (token.split("=", 1)[0] for token in rest if token.startswith("--")):
        if not re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", text):
            problems.append(f"`{tool} {' '.join(path)}` has no option {flag}")
    return problems


def _leading_words(tokens: list[str]):
    for token in tokens:
        if token.startswith("-"):
            return
        yield token


def test_compose_runs_only_our_tools():
    commands = all_commands()
    assert {argv[0] for _, argv in commands} <= set(TOOLS), commands
    names = {name for name, _ in commands}
    assert {"mlflow", "prefect", "study", "worker", "train"} <= names
    assert any(argv[:2] == ["sentiment", "worker"] for _, argv in commands)


@pytest.mark.integration  # runs the real CLIs, ~12 processes: 10-30 s on 2 cores
def test_every_command_and_flag_exists_in_the_clis_help():
    commands = all_commands()
    with ThreadPoolExecutor(max_workers=4) as pool:  # ~2 s per prefect/mlflow --help
        reports = list(pool.map(lambda item: check_command(item[1]), commands))
    problems = [
        f"{name}: {problem}"
        for (name, _), report in zip(commands, reports, strict=True)
        for problem in report
    ]
    assert problems == []


@pytest.mark.integration  # runs the real CLIs, ~12 processes: 10-30 s on 2 cores
def test_the_check_catches_a_wrong_command_and_flag():
    assert check_command(["sentiment", "worker", "--study-name=x"]) == []
    assert check_command(["sentiment", "worker", "--no-such-flag=1"]) == [
        "`sentiment worker` has no option --no-such-flag"
    ]
    assert check_command(["mlflow", "server", "--serve-artifacts"]) == []
    assert check_command(["mlflow", "server", "--artifact-destination=x"])  # singular: not MLflow's flag
    assert check_command(["prefect", "work-pool", "set-concurrency-limit", "search", "4"]) == []
    assert check_command(["prefect", "wrk-pool", "create", "search"])


def test_environment_settings_are_ones_the_programs_read():
    import mlflow.environment_variables
    import prefect.settings

    compose = load_compose()
    from mlflow.cli import server

    compose, host = load_compose(), load_compose(HOST_OVERRIDE)
    keys = {
        key
        for services in (compose["services"], host["services"])
        for service in services.values()
        for key in (service.get("environment") or {})
    }
    sentiment_help = "".join(help_text("sentiment", (cmd,))[1] for cmd in ("worker", "run"))
    server_options = {option.envvar for option in server.params if option.envvar}
    unknown = [
        key
        for key in sorted(keys)
        if (key.startswith("SENTIMENT_") and key not in sentiment_help)
        or (
            key.startswith("MLFLOW_")
            and not hasattr(mlflow.environment_variables, key)
            and key not in server_options
        )
        or (key.startswith("PREFECT_") and not hasattr(prefect.settings, key))
    ]
    assert unknown == []
    assert compose["services"]["worker"]["environment"]["SENTIMENT_SEARCH_STORAGE"].startswith(
        "postgresql://"
    )
    assert compose["services"]["worker"]["environment"]["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"


def test_connection_budget_leaves_room_in_postgres_default_limit():
    """8 workers × Optuna's pool (MLflow goes through the server) + the MLflow and Prefect servers'
    pools + the study/train jobs stay within 75% of PostgreSQL's default 100 connections."""
    from pipeline.stores import database_pool

    services = load_compose()["services"]
    mlflow_env = services["mlflow"]["environment"]
    # MLflow ignores a 0 (falsy) pool setting and falls back to SQLAlchemy's defaults (5 + 10).
    pool, overflow = (
        int(mlflow_env["MLFLOW_SQLALCHEMYSTORE_POOL_SIZE"]),
        int(mlflow_env["MLFLOW_SQLALCHEMYSTORE_MAX_OVERFLOW"]),
    )
    assert pool > 0 and overflow > 0
    processes = int(mlflow_env["MLFLOW_WORKERS"])
    mlflow_server = processes * MLFLOW_ENGINES_PER_PROCESS * (pool + overflow)
    prefect_env = services["prefect"]["environment"]
    prefect_server = sum(
        int(prefect_env[f"PREFECT_SERVER_DATABASE_SQLALCHEMY_{k}"]) for k in ("POOL_SIZE", "MAX_OVERFLOW")
    )
    optuna = database_pool(services["worker"]["environment"]["SENTIMENT_SEARCH_STORAGE"])
    per_worker = optuna["pool_size"] + optuna["max_overflow"]
    jobs = per_worker + 1  # `study create` or `train`, + the alias lock's one connection
    total = mlflow_server + prefect_server + WORKERS_BUDGETED * per_worker + jobs
    assert total <= 0.75 * PG_AVAILABLE, (mlflow_server, prefect_server, per_worker, total)


def test_files_the_compose_mounts_exist_and_the_zombie_automation_is_valid():
    from prefect.events.schemas.automations import AutomationCore

    for name in ("postgres.Dockerfile", "postgres-entrypoint.sh", "zombie-automation.yaml"):
        assert (DEPLOY / name).is_file()
    assert os.access(DEPLOY / "postgres-entrypoint.sh", os.X_OK)
    assert (PROJECT_ROOT / "configs" / "sample.yaml").is_file()
    assert (PROJECT_ROOT / "pipeline" / "sample" / "aclImdb_sample.tar.gz").is_file()  # DATA_DIR's default
    automation = AutomationCore.model_validate(
        yaml.safe_load((DEPLOY / "zombie-automation.yaml").read_text())
    )
    assert automation.trigger.within.total_seconds() == 3 * int(
        load_compose()["services"]["pool-worker"]["environment"]["PREFECT_FLOWS_HEARTBEAT_FREQUENCY"]
    )


def test_defaults_a_user_would_trip_over_are_gone():
    """No password default, no published port on every interface, no data folder outside the
    clone, no database URI on the MLflow server's command line, and nothing only Compose v2 reads."""
    text = COMPOSE.read_text(encoding="utf-8")
    raw = yaml.safe_load(text)
    assert "name" not in raw  # Compose v1: 'name' does not match any of the regexes: '^x-'
    uses = re.findall(r"\$\{POSTGRES_PASSWORD([^}]*)\}", text)
    assert uses and all(use.startswith(":?set POSTGRES_PASSWORD") for use in uses), uses
    assert "shared/data" not in text
    services = load_compose()["services"]
    for name, service in services.items():
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), (name, port)  # BIND_ADDRESS's default
    mlflow = services["mlflow"]
    assert not any("://" in token for token in mlflow["command"])
    assert mlflow["environment"]["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql://")
    assert "mlflow:*" in mlflow["environment"]["MLFLOW_SERVER_ALLOWED_HOSTS"].split(",")


def test_pool_setup_creates_the_zombie_automation_only_once():
    steps = service_commands(load_compose()["services"]["pool-setup"])
    command = load_compose()["services"]["pool-setup"]["command"][0]
    assert "automation inspect crash-zombie-flow-runs" in command
    assert re.search(r"inspect crash-zombie-flow-runs[^|]*\|\|\s*prefect automation create", command)
    assert yaml.safe_load((DEPLOY / "zombie-automation.yaml").read_text())["name"] == "crash-zombie-flow-runs"
    assert ["prefect", "work-pool", "create", "search", "--type", "process", "--overwrite"] in steps


def test_host_override_puts_every_container_on_the_host_network_listening_on_loopback():
    main, host = load_compose()["services"], load_compose(HOST_OVERRIDE)["services"]
    assert set(host) == set(main)
    for name, service in host.items():
        assert service["network_mode"] == "host", name
        assert set(service["extra_hosts"]) == {"postgres:127.0.0.1", "mlflow:127.0.0.1", "prefect:127.0.0.1"}
    assert host["postgres"]["environment"]["POSTGRES_LISTEN_ADDRESSES"] == "127.0.0.1"
    assert host["mlflow"]["environment"]["MLFLOW_HOST"] == "127.0.0.1"
    assert host["prefect"]["environment"]["PREFECT_SERVER_API_HOST"] == "127.0.0.1"


@pytest.mark.skipif(
    shutil.which("docker-compose") is None, reason="Compose v1 (apt-get install docker-compose) absent"
)
def test_compose_v1_accepts_both_files_and_stops_without_a_password():
    files = ["-f", str(COMPOSE), "-f", str(HOST_OVERRIDE)]
    env = {k: v for k, v in os.environ.items() if k != "POSTGRES_PASSWORD"}
    done = subprocess.run(
        ["docker-compose", "-p", "t", *files, "config", "-q"], capture_output=True, text=True, env=env
    )
    assert done.returncode != 0 and "set POSTGRES_PASSWORD" in done.stderr
    env["POSTGRES_PASSWORD"] = "placeholder"
    done = subprocess.run(
        ["docker-compose", "-p", "t", *files, "config", "-q"], capture_output=True, text=True, env=env
    )
    assert done.returncode == 0, done.stderr
