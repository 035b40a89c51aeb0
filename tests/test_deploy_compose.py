"""deploy/compose.yaml runs only what exists: there is no Docker engine here, so every command in it
is checked against the installed CLIs' own ``--help`` (sentiment, mlflow server, prefect), every
setting it passes through the environment against the settings those programs read, and its
connection budget against PostgreSQL's default limit."""

from __future__ import annotations

import os
import re
import shlex
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
TOOLS = ("sentiment", "mlflow", "prefect")
BIN = Path(sys.executable).parent
_VARIABLE = re.compile(r"\$\{(\w+)(?::?-([^}]*))?\}")

# PostgreSQL's default max_connections, less its superuser_reserved_connections.
PG_AVAILABLE = 100 - 3
# Engines one `mlflow server` process opens on its backend store: measured with
# MLFLOW_SQLALCHEMYSTORE_POOL_SIZE=2 / MAX_OVERFLOW=1 under 12 concurrent clients, 9 connections.
MLFLOW_ENGINES_PER_PROCESS = 3
WORKERS_BUDGETED = 8


def interpolate(text: str) -> str:
    """Compose's ``${VAR:-default}``, with each variable unset (its default, or a placeholder)."""
    return _VARIABLE.sub(lambda match: match.group(2) if match.group(2) is not None else "value", text)


def load_compose() -> dict:
    return yaml.safe_load(interpolate(COMPOSE.read_text(encoding="utf-8")))


def service_commands(service: dict) -> list[list[str]]:
    """The argument vectors a service runs: entrypoint + command, or each ``&&`` step of ``sh -c``."""
    entrypoint, command = service.get("entrypoint") or [], service.get("command") or []
    if isinstance(command, str):
        command = shlex.split(command)
    if entrypoint == ["sh", "-c"]:
        return [shlex.split(step) for step in command[0].split("&&")]
    return [[*entrypoint, *command]] if entrypoint or command else []


def all_commands() -> list[tuple[str, list[str]]]:
    return [
        (name, argv)
        for name, service in load_compose()["services"].items()
        for argv in service_commands(service)
        if not service.get("image", "").startswith("postgres")
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
    if extra > len([p for p in placeholders if p not in ("[OPTIONS]", "OPTIONS", "COMMAND")]):
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
    keys = {key for service in compose["services"].values() for key in (service.get("environment") or {})}
    sentiment_help = "".join(help_text("sentiment", (cmd,))[1] for cmd in ("worker", "run"))
    unknown = [
        key
        for key in sorted(keys)
        if (key.startswith("SENTIMENT_") and key not in sentiment_help)
        or (key.startswith("MLFLOW_") and not hasattr(mlflow.environment_variables, key))
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
    processes = int(next(t.split("=")[1] for t in services["mlflow"]["command"] if t.startswith("--workers")))
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

    for name in ("postgres-init.sql", "zombie-automation.yaml"):
        assert (DEPLOY / name).is_file()
    assert (PROJECT_ROOT / "configs" / "full.yaml").is_file()
    automation = AutomationCore.model_validate(
        yaml.safe_load((DEPLOY / "zombie-automation.yaml").read_text())
    )
    assert automation.trigger.within.total_seconds() == 3 * int(
        load_compose()["services"]["pool-worker"]["environment"]["PREFECT_FLOWS_HEARTBEAT_FREQUENCY"]
    )
