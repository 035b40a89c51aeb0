"""Scale-out: trials per hour with 1, 2 and 4 `sentiment worker` processes on one study, against
PostgreSQL + an MLflow tracking server and against the embedded SQLite stores.

For each store and worker count it creates a fresh study (`sentiment study create`), starts the
workers together and waits for them, then reads the study back:

- trials per hour: finished trials over the span from the first trial's start to the last one's
  end (process start-up and data loading excluded; the wall-clock figure with them is kept too);
- time per trial outside training: the trial's wall time less its ``fit`` seconds (model
  building, the MLflow run's start and end, Optuna's bookkeeping), plus the store calls timed
  inside ``fit`` (per-epoch metrics, pruning reports), plus the worker's gap before its next
  trial (sampling, the target check). Model building and the CPU others use swing it by
  seconds, so the remote stores' overhead is measured apart: a replay of one trial's store calls
  through the library (``tracking.TrialTracker``, ``search.suggest_hparams``, an Optuna storage
  with heartbeats) with no training, PostgreSQL + server less SQLite, mean of 30 trials;
- on PostgreSQL, the database's own cost per trial (transactions and statement time, from
  ``pg_stat_database``), the MLflow server's CPU and its HTTP requests per trial;
- a paper projection for 8 machines: 8 × one machine's measured rate, capped by what one
  database core and one MLflow server process can serve at the measured cost per trial.

    python -m benchmarks.scale_out [--quick]        # make benchmark-scale-out

The machine is shared: `uptime` is recorded before and after, beside the figures.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.environment import environment, versions_line, write_results
from pipeline.config import PROJECT_ROOT

# The PostgreSQL cluster and MLflow server the scale-out tests use (tests/services.py).
sys.path.insert(0, str(PROJECT_ROOT / "tests"))
import services  # noqa: E402

RESULTS = PROJECT_ROOT / "benchmarks" / "results"
SENTIMENT = str(Path(sys.executable).parent / "sentiment")
MACHINES = 8
LAN_RTT_MS = 0.5  # an assumed round trip inside one data centre, for the projection


@dataclass(frozen=True)
class Backend:
    name: str
    tracking_uri: str
    storage_uri: str
    postgres: services.PostgresCluster | None = None
    server: services.MlflowServer | None = None


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def workload(args: argparse.Namespace) -> list[str]:
    """The search options every command of a case shares (same data, same space: same digest)."""
    return [
        "--limit", str(args.limit), "--max-len", str(args.max_len), "--vocab-size", "2000",
        "--search-epochs", str(args.epochs), "--experiment-name", "scale-out",
    ]  # fmt: skip


def sentiment(command: list[str], backend: Backend, study: str, args: argparse.Namespace) -> list[str]:
    stores = ["--tracking-uri", backend.tracking_uri, "--storage", backend.storage_uri, "--study-name", study]
    return [SENTIMENT, *command, *workload(args), *stores]


def run_workers(backend: Backend, workers: int, args: argparse.Namespace, logs: Path) -> dict[str, Any]:
    """One case: a fresh study with ``args.trials`` as its target, ``workers`` processes started
    together; their wall time and exit codes."""
    study = f"scale-{backend.name}-{workers}w-{int(time.time())}"
    create = sentiment(["study", "create", "--trials", str(args.trials)], backend, study, args)
    subprocess.run(create, check=True, capture_output=True, timeout=600)
    before = server_costs(backend)
    started = time.perf_counter()
    processes = []
    for index in range(workers):
        log = (logs / f"{study}-{index}.log").open("wb")
        processes.append(
            subprocess.Popen(sentiment(["worker"], backend, study, args), stdout=log, stderr=log)
        )
    codes = [process.wait(timeout=3600) for process in processes]
    wall = time.perf_counter() - started
    if any(codes):
        tail = (logs / f"{study}-{codes.index(next(c for c in codes if c))}.log").read_text(errors="replace")
        raise SystemExit(f"error: a worker of {study} exited with {codes}: {tail.strip()[-500:]}")
    time.sleep(2)  # PostgreSQL publishes a backend's statistics when it goes idle (at most ~1 s)
    return {"study": study, "wall_seconds": wall, "costs": costs_between(before, server_costs(backend))}


def server_costs(backend: Backend) -> dict[str, float]:
    """Cumulative counters of the remote stores: database transactions and statement time, the
    MLflow server's CPU seconds and HTTP requests. Empty for the embedded stores."""
    if backend.postgres is None or backend.server is None:
        return {}
    import psutil
    import psycopg2

    connection = psycopg2.connect(
        host="127.0.0.1", port=backend.postgres.port, user="postgres", dbname="postgres"
    )
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT sum(xact_commit + xact_rollback), sum(active_time) FROM pg_stat_database")
            transactions, active_ms = cursor.fetchone()
    finally:
        connection.close()
    root = psutil.Process(backend.server.process.pid)
    cpu = sum(sum(p.cpu_times()[:2]) for p in [root, *root.children(recursive=True)])
    requests = len(re.findall(r'" \d{3}', backend.server.log_path.read_text(errors="replace")))
    return {"transactions": float(transactions), "db_active_ms": float(active_ms), "server_cpu_s": cpu,
            "http_requests": float(requests)}  # fmt: skip


def costs_between(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {key: after[key] - before[key] for key in before}


def study_figures(backend: Backend, study_name: str) -> dict[str, Any]:
    """Throughput and per-trial time split, read from the study's trials."""
    import optuna

    study = optuna.load_study(study_name=study_name, storage=backend.storage_uri)
    done = [t for t in study.trials if t.state.name in ("COMPLETE", "PRUNED")]
    by_worker: dict[str, list] = defaultdict(list)
    for trial in done:
        by_worker[str(trial.user_attrs.get("worker", trial.user_attrs.get("pid")))].append(trial)
    gaps = []  # from a worker's trial's end to its next trial's start
    for trials in by_worker.values():
        ordered = sorted(trials, key=lambda t: t.datetime_start)
        gaps += [
            (b.datetime_start - a.datetime_complete).total_seconds()
            for a, b in zip(ordered, ordered[1:], strict=False)
        ]
    span = (max(t.datetime_complete for t in done) - min(t.datetime_start for t in done)).total_seconds()
    trial_s = [(t.datetime_complete - t.datetime_start).total_seconds() for t in done]
    fit_s = [float(t.user_attrs.get("seconds", 0.0)) for t in done]
    bookkeeping_s = [float(t.user_attrs.get("bookkeeping_seconds", 0.0)) for t in done]
    outside = statistics.fmean(t - f for t, f in zip(trial_s, fit_s, strict=True))
    gap = statistics.fmean(gaps) if gaps else 0.0
    return {
        "finished": len(done),
        "states": {s: sum(t.state.name == s for t in study.trials) for s in ("COMPLETE", "PRUNED", "FAIL", "RUNNING")},
        "workers_with_trials": len(by_worker),
        "span_seconds": span,
        "trials_per_hour": 3600 * len(done) / span,
        "trial_seconds": statistics.fmean(trial_s),
        "fit_seconds": statistics.fmean(fit_s),
        "outside_training_ms_per_trial": 1000 * (outside + statistics.fmean(bookkeeping_s) + gap),
        "parts_ms": {"outside_fit": 1000 * outside, "inside_fit": 1000 * statistics.fmean(bookkeeping_s),
                     "between_trials": 1000 * gap},
    }  # fmt: skip


def replay_store_calls(backend: Backend, epochs: int, repeats: int = 30) -> dict[str, float]:
    """Milliseconds per trial of a trial's store calls alone, through the library: its user
    attributes, the sampled hyperparameters, a child run with its params, per-epoch metrics and
    pruning reports, the closing tags and metrics, and Optuna's ask/tell. (No dataset input: one
    request fewer than a real trial.)"""
    import optuna
    from optuna.study import MaxTrialsCallback

    from pipeline.config import build_config, run_params
    from pipeline.liveness import here
    from pipeline.search import FINISHED, suggest_hparams
    from pipeline.stores import database_pool, resolve
    from pipeline.tracking import TrialTracker

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # not a line per replayed trial
    cfg = build_config({"tracking.tracking_uri": backend.tracking_uri, "search.storage": backend.storage_uri})
    stores = resolve(cfg)
    client = stores.mlflow_client()
    experiment = client.get_experiment_by_name("scale-out-replay")
    experiment_id = experiment.experiment_id if experiment else client.create_experiment("scale-out-replay")
    parent = client.create_run(experiment_id, run_name="replay")
    study_name = f"replay-{backend.name}-{int(time.time())}"
    tracker = TrialTracker(parent.info.run_id, stores, "scale-out-replay", study_name)
    storage = optuna.storages.RDBStorage(
        backend.storage_uri,
        engine_kwargs=database_pool(backend.storage_uri),
        heartbeat_interval=60,
        grace_period=180,
    )
    study = optuna.create_study(study_name=study_name, storage=storage, direction="maximize")
    seconds: list[float] = []

    def objective(trial: optuna.Trial) -> float:
        started = time.perf_counter()
        for name, value in here().items():
            trial.set_user_attr(name, value)
        params = run_params(suggest_hparams(trial, cfg.search), cfg, 2000)
        with tracker(trial.number, params) as run:
            for epoch in range(1, epochs + 1):
                value = 0.5 + 0.01 * epoch
                run.log_metrics({"loss": 0.6, "accuracy": 0.7, "val_loss": 0.6, "val_accuracy": value}, epoch)
                trial.report(value, epoch)
                trial.should_prune()
            for name in ("epochs", "seconds", "bookkeeping_seconds"):
                trial.set_user_attr(name, 1.0)
            run.log_metrics({"best_value": value, "best_epoch": epochs, "train_seconds": 1.0})
        seconds.append(time.perf_counter() - started)
        return value

    total = time.perf_counter()
    study.optimize(objective, n_trials=repeats, callbacks=[MaxTrialsCallback(repeats, states=FINISHED)])
    total = time.perf_counter() - total
    client.set_terminated(parent.info.run_id)
    return {
        "objective_ms": 1000 * statistics.median(seconds),  # inside the trial
        "per_trial_ms": 1000 * total / repeats,  # with Optuna's ask/tell and the callbacks
    }


def start_backends(stack: ExitStack, folder: Path, only: list[str]) -> list[Backend]:
    backends = []
    if "sqlite" in only:
        local = folder / "sqlite"
        local.mkdir()
        backends.append(Backend("sqlite", f"sqlite:///{local}/mlflow.db", f"sqlite:///{local}/optuna.db"))
    if "postgres" in only:
        try:
            cluster = services.start_postgres(durable=True)  # fsync on, like a real server
        except RuntimeError as error:
            raise SystemExit(f"error: {error}") from None
        stack.callback(lambda: (cluster.stop(), shutil.rmtree(cluster.data_dir.parent, ignore_errors=True)))
        server = services.start_mlflow_server(cluster.url("mlflow"), folder / "server")
        stack.callback(server.stop)
        backends.append(Backend("postgres", server.url, cluster.url("optuna"), cluster, server))
    return backends


def projection(cases: list[dict[str, Any]]) -> dict[str, Any]:
    """8 machines like this one, one database and one MLflow server process, on paper."""
    remote = [c for c in cases if c["backend"] == "postgres"]
    if not remote:
        return {}
    best = max(remote, key=lambda c: c["trials_per_hour"])
    per_trial = {k: statistics.fmean(c["per_trial"][k] for c in remote) for k in remote[0]["per_trial"]}
    round_trips = per_trial["transactions"] + per_trial["http_requests"]
    machine_rate = best["trials_per_hour"]
    caps = {
        "machines": MACHINES * machine_rate,
        "database_core": 3600 * 1000 / per_trial["db_active_ms"],
        "mlflow_server_process": 3600 / per_trial["server_cpu_s"],
    }
    return {
        "machine_rate": machine_rate,
        "machine_workers": best["workers"],
        "per_trial": per_trial,
        "round_trips_per_trial": round_trips,
        "lan_overhead_ms_per_trial": round_trips * LAN_RTT_MS,
        "caps_trials_per_hour": caps,
        "trials_per_hour": min(caps.values()),
        "bound_by": min(caps, key=caps.get),
    }


def _overhead(ms: float) -> str:
    if ms >= 0:
        return f"; the remote stores' overhead is **{ms:.0f} ms per trial**.\n"
    return f"; the remote stores cost **{-ms:.0f} ms per trial less** than the embedded SQLite here.\n"


def markdown(results: dict[str, Any]) -> str:
    env, cases, paper = results["environment"], results["cases"], results["projection"]
    rows = [
        "| stores | workers | finished trials | trials/hour | with start-up | ms/trial outside training | "
        "DB transactions/trial | DB ms/trial | server CPU ms/trial | HTTP requests/trial |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    label = {"postgres": "PostgreSQL + MLflow server", "sqlite": "SQLite (embedded)"}
    for c in cases:
        p = c.get("per_trial") or {}
        extra = (
            f"{p['transactions']:.0f} | {p['db_active_ms']:.0f} | {1000 * p['server_cpu_s']:.0f} | {p['http_requests']:.0f}"
            if p
            else "– | – | – | –"
        )
        rows.append(
            f"| {label[c['backend']]} | {c['workers']} | {c['finished']} | {c['trials_per_hour']:.0f} | "
            f"{c['wall_trials_per_hour']:.0f} | {c['outside_training_ms_per_trial']:.0f} | {extra} |"
        )
    lines = [
        "# Scale-out: trials per hour\n",
        f"`{results['command']}` on {env['cpu']} ({env['cores']} cores), {results['date']}. "
        f"`uptime` before: `{results['uptime_before']}`; after: `{results['uptime_after']}` "
        "(the machine is shared with other work: the figures are a lower bound).\n",
        f"Workload: {results['trials']} trials per study, the shipped sample limited to {results['limit']} "
        f"reviews per split, {results['max_len']} tokens, {results['epochs']} epoch(s) per trial.\n",
        *rows,
        "",
    ]
    replay = results.get("replay", {})
    if replay:
        lines.append(
            "A trial's store calls alone (replayed through the library without training, mean of 30 trials): "
            + "; ".join(f"{label[name]} {r['per_trial_ms']:.0f} ms" for name, r in replay.items())
            + (_overhead(results["remote_overhead_ms"]) if "remote_overhead_ms" in results else ".\n")
        )
    if paper:
        caps = paper["caps_trials_per_hour"]
        lines.append(
            f"Paper projection, {MACHINES} machines like this one: {MACHINES} × {paper['machine_rate']:.0f} "
            f"(this machine with {paper['machine_workers']} worker{'s' if paper['machine_workers'] > 1 else ''}) = {caps['machines']:.0f} trials/hour; "
            f"one database core serves {caps['database_core']:.0f} and one MLflow server process "
            f"{caps['mlflow_server_process']:.0f} at the measured cost per trial, so "
            f"**{paper['trials_per_hour']:.0f} trials/hour** (bound by {paper['bound_by'].replace('_', ' ')}). "
            f"On a LAN each trial's {paper['round_trips_per_trial']:.0f} round trips add about "
            f"{paper['lan_overhead_ms_per_trial']:.0f} ms at {LAN_RTT_MS} ms each.\n"
        )
    lines.append(f"Versions: {versions_line(env)}.\n")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="4 trials per case on 200 reviews: a smoke test")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4], help="worker counts to measure")
    parser.add_argument("--stores", nargs="+", default=["postgres", "sqlite"], choices=["postgres", "sqlite"])
    parser.add_argument("--trials", type=int, default=None, help="target per study (8; quick 4)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for scale_out.json and .md")
    args = parser.parse_args()
    args.trials = args.trials or (4 if args.quick else 8)
    args.limit, args.max_len, args.epochs = (200, 60, 1) if args.quick else (400, 80, 2)

    results: dict[str, Any] = {
        "command": "python -m benchmarks.scale_out " + " ".join(sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "environment": environment(),
        "uptime_before": uptime(),
        **{k: getattr(args, k) for k in ("trials", "limit", "max_len", "epochs")},
        "cases": [],
    }
    with tempfile.TemporaryDirectory(prefix="scale-out-") as tmp, ExitStack() as stack:
        folder = Path(tmp)
        os.environ["SENTIMENT_DATA_CACHE_DIR"] = str(folder / "cache")  # prepared once, shared by all
        logs = folder / "logs"
        logs.mkdir()
        for backend in start_backends(stack, folder, args.stores):
            results.setdefault("replay", {})[backend.name] = replay_store_calls(backend, args.epochs)
            for workers in args.workers:
                run = run_workers(backend, workers, args, logs)
                case = {"backend": backend.name, "workers": workers, **study_figures(backend, run["study"])}
                case["wall_seconds"] = run["wall_seconds"]
                case["wall_trials_per_hour"] = 3600 * case["finished"] / run["wall_seconds"]
                if run["costs"]:
                    case["per_trial"] = {k: v / case["finished"] for k, v in run["costs"].items()}
                results["cases"].append(case)
                print(f"{backend.name} × {workers}: {case['trials_per_hour']:.0f} trials/hour", flush=True)
    results["uptime_after"] = uptime()
    replay = results.get("replay", {})
    if {"postgres", "sqlite"} <= replay.keys():
        results["remote_overhead_ms"] = replay["postgres"]["per_trial_ms"] - replay["sqlite"]["per_trial_ms"]
    results["projection"] = projection(results["cases"])
    write_results(results, markdown(results), args.out, "scale_out", args.quick)


if __name__ == "__main__":
    main()
