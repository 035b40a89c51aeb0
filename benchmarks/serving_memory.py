"""The scoring server's memory under mixed load: resident size after start-up and after each round.

    make run && python -m benchmarks.serving_memory           # the champion of the default store
    python -m benchmarks.serving_memory --tracking-uri sqlite:///… --rounds 10

Starts ``sentiment serve <model>`` on 127.0.0.1 (default limits), reads its resident size (the
process and its children) once it answers ``/ping`` and after one review, then sends ``--rounds``
rounds of mixed requests: 1, 7, 60, 300, 1,000 and twice 2,000 reviews, of real test reviews and
of long ones (2,400 characters), eight clients at once (so requests are also scored together), and reads it again after
each. Writes ``benchmarks/results/serving_memory.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from benchmarks.environment import environment, versions_line, write_results

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
FULL_DATA = REPO.parent / "shared" / "data" / "aclImdb_v1.tar.gz"
SIZES = (1, 7, 60, 300, 1000, 2000, 2000)


def mixed_round(url: str, texts: list[str], round_number: int) -> None:
    """Every size of ``SIZES`` twice, of real test reviews and of long ones (about 2,400
    characters: 2,000 of them make a body just under the 5 MiB limit), eight requests at a time."""
    from pipeline.http_server import post_json

    long = [" ".join(texts[i : i + 12])[:2400] for i in range(0, len(texts) - 12, 3)]
    payloads = []
    for pool in (texts, long):
        for size in SIZES:
            start = (round_number * 997 + size) % len(pool)
            payloads.append({"inputs": [pool[(start + i) % len(pool)] for i in range(size)]})

    def send(payload: dict) -> None:
        status, answer = post_json(f"{url}/invocations", payload, timeout=300)
        if status != 200:
            raise RuntimeError(f"HTTP {status}: {str(answer)[:300]}")

    with ThreadPoolExecutor(8) as clients:
        list(clients.map(send, payloads))


def measure(url: str, pid: int, texts: list[str], rounds: int) -> dict[str, Any]:
    from pipeline.http_server import post_json, rss_kib

    started_kib = rss_kib(pid)
    post_json(f"{url}/invocations", {"inputs": texts[:1]})
    after_kib, seconds = [], []
    for number in range(rounds):
        began = time.perf_counter()
        mixed_round(url, texts, number)
        seconds.append(round(time.perf_counter() - began, 2))
        after_kib.append(rss_kib(pid))
    return {"startup_kib": started_kib, "after_rounds_kib": after_kib, "round_seconds": seconds}


def markdown(results: dict[str, Any]) -> str:
    env, m = results["environment"], results["measurements"]
    mib = [kib / 1024 for kib in m["after_rounds_kib"]]
    start = m["startup_kib"] / 1024
    lines = [
        f"## Scoring server memory under mixed load: `{results['model']}`",
        "",
        f"`{results['command']}` on {env['cpu']} ({env['cores']} cores), {results['date']}, load average "
        f"at start {env['load_average']}; `sentiment serve`, 1 worker, default limits; each round "
        f"{2 * len(SIZES)} requests of {', '.join(map(str, SIZES))} real and long reviews, 8 at a time. "
        f"{results['note']}",
        "",
        "| after | RSS | × start-up |",
        "|---|---|---|",
        f"| start-up (first /ping) | {start:,.0f} MiB | 1.00 |",
    ]
    for number, value in enumerate(mib, start=1):
        lines.append(f"| round {number} | {value:,.0f} MiB | {value / start:.2f} |")
    lines += ["", f"Rounds took {', '.join(map(str, m['round_seconds']))} s.", ""]
    lines += [f"Versions: {versions_line(env)}.", ""]
    return "\n".join(lines)


def main() -> None:
    from pipeline.config import SAMPLE_ARCHIVE, build_config
    from pipeline.data import read_reviews
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
    parser.add_argument(
        "--data", type=Path, default=FULL_DATA if FULL_DATA.exists() else None, help="aclImdb archive"
    )
    parser.add_argument("--rounds", type=int, default=10, help="rounds of mixed requests")
    parser.add_argument("--name", default="serving_memory", help="results file name")
    parser.add_argument("--note", default="", help="what was measured, in the Markdown's first line")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for the results")
    args = parser.parse_args()

    texts = read_reviews(args.data or SAMPLE_ARCHIVE).test.texts[:6000]
    environment_at_start = environment()
    with (
        tempfile.TemporaryDirectory() as tmp,
        model_server(args.model, args.tracking_uri, Path(tmp) / "server.log") as server,
    ):
        measurements = measure(server.url, server.pid, texts, args.rounds)
    results = {
        "model": args.model,
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "command": "python -m benchmarks.serving_memory " + " ".join(sys.argv[1:]),
        "environment": environment_at_start,
        "load_average_at_end": [round(load, 2) for load in os.getloadavg()],
        "note": args.note,
        "measurements": measurements,
    }
    write_results(results, markdown(results), args.out, args.name, False)


if __name__ == "__main__":
    main()
