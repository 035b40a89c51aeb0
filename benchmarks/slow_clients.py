"""Clients that start a request and stall, against `sentiment serve`: does everyone else get in?

    make run && python -m benchmarks.slow_clients           # the champion of the default store
    python -m benchmarks.slow_clients --model models:/imdb-sentiment/1 --tracking-uri sqlite:///…

Starts ``sentiment serve <model>`` on 127.0.0.1 with the default limits (``max_concurrency`` 32,
``request_timeout`` 5 s), times single-review requests alone, then opens ``--stalled`` raw
connections at once (for each count: half send headers and one body byte, half headers only, then
nothing; each takes a slot or gets 503) and times a normal client's first answer that is not a
503, asking every 0.2 s for at most ``--bound`` seconds, then 20 more requests while the stalled
connections stay open. Writes ``benchmarks/results/slow_clients.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.environment import environment, versions_line, write_results

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
PAYLOAD = {"inputs": ["A moving, beautifully acted film; I was hooked from the first scene."]}


def _latencies_ms(url: str, count: int) -> list[float]:
    from pipeline.http_server import post_json

    times = []
    for _ in range(count):
        started = time.perf_counter()
        status, answer = post_json(f"{url}/invocations", PAYLOAD, timeout=60)
        times.append(1000 * (time.perf_counter() - started) if status == 200 else float("nan"))
    return times


def with_stalled(url: str, stalled: int, bound: float) -> dict[str, Any]:
    """A normal client's first answer and 20 latencies while ``stalled`` clients hold connections."""
    from pipeline.http_server import first_answer_after, stalled_connections

    clients = stalled_connections(url, stalled)
    try:
        status, seconds, attempts = first_answer_after(url, PAYLOAD, bound)
        after = _latencies_ms(url, 20) if status == 200 else []
        dropped = sum(_let_go(client) for client in clients)
    finally:
        for client in clients:
            client.close()
    time.sleep(1)  # the server notices the closes before the next round
    return {
        "stalled": stalled,
        "first_status": status,
        "first_answer_seconds": round(seconds, 2),
        "attempts": attempts,
        "latency_ms_p50_after": round(statistics.median(after), 1) if after else None,
        "stalled_answered_or_dropped": dropped,
    }


def _let_go(client) -> bool:
    """Whether the server answered or closed this stalled connection (within half a second)."""
    client.settimeout(0.5)
    try:
        client.recv(4096)  # an answer (408, 503) or b"" for a close
    except TimeoutError:
        return False
    return True


def markdown(results: dict[str, Any]) -> str:
    env = results["environment"]
    lines = [
        f"## Slow clients: `{results['model']}`",
        "",
        f"`{results['command']}` on {env['cpu']} ({env['cores']} cores), {results['date']}, load average "
        f"at start {env['load_average']}; `sentiment serve`, 1 worker, default limits "
        f"(max_concurrency 32), request_timeout {results['request_timeout']:g} s. {results['note']}",
        "",
        f"Alone: one-review request p50 {results['alone_ms_p50']:.1f} ms (20 requests).",
        "",
        "| stalled clients | first answer of a normal client | after it (p50 of 20) | stalled ones answered or dropped |",
        "|---|---|---|---|",
    ]
    for row in results["rounds"]:
        first = f"{row['first_status']} after {row['first_answer_seconds']} s ({row['attempts']} tries)"
        after = f"{row['latency_ms_p50_after']} ms" if row["latency_ms_p50_after"] is not None else "—"
        lines.append(f"| {row['stalled']} | {first} | {after} | {row['stalled_answered_or_dropped']} |")
    lines += ["", f"Versions: {versions_line(env)}.", ""]
    return "\n".join(lines)


def main() -> None:
    from pipeline.config import ServeConfig, build_config
    from pipeline.http_server import model_server
    from pipeline.stores import resolve

    default = build_config().tracking
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", default=f"models:/{default.model_name}@champion", help="model URI to serve"
    )
    parser.add_argument(
        "--tracking-uri", default=resolve(build_config()).tracking_uri, help="MLflow store holding the model"
    )
    parser.add_argument("--stalled", type=int, nargs="+", default=[32, 200], help="stalled clients per round")
    parser.add_argument("--bound", type=float, default=30.0, help="seconds a normal client keeps asking")
    parser.add_argument("--name", default="slow_clients", help="results file name")
    parser.add_argument("--request-timeout", type=float, default=None, help="the server's request_timeout")
    parser.add_argument("--note", default="", help="what was measured, in the Markdown's first line")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for the results")
    args = parser.parse_args()

    options = {} if args.request_timeout is None else {"request_timeout": args.request_timeout}
    environment_at_start = environment()
    with (
        tempfile.TemporaryDirectory() as tmp,
        model_server(args.model, args.tracking_uri, Path(tmp) / "server.log", **options) as server,
    ):
        alone = _latencies_ms(server.url, 20)
        rounds = [with_stalled(server.url, count, args.bound) for count in args.stalled]
    results = {
        "model": args.model,
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "command": "python -m benchmarks.slow_clients " + " ".join(sys.argv[1:]),
        "environment": environment_at_start,
        "request_timeout": args.request_timeout or ServeConfig().request_timeout,
        "note": args.note,
        "alone_ms_p50": statistics.median(alone),
        "rounds": rounds,
    }
    write_results(results, markdown(results), args.out, args.name, False)


if __name__ == "__main__":
    main()
