"""The registered model over HTTP (`sentiment serve`): latency of one review, throughput of batches.

    make run && python -m benchmarks.serving            # the champion of the default store
    python -m benchmarks.serving --model models:/imdb-sentiment/3 --requests 500

Starts ``sentiment serve <model>`` (MLflow's scoring app behind its limits) on 127.0.0.1 (one
worker, default limits), sends real reviews from the shipped sample's test split, and writes
``benchmarks/results/serving.json`` and ``.md``: p50/p95/p99 latency of single-review requests
and reviews per second for batches of 1,000 (``{"dataframe_split": ...}`` payloads), after a
warm-up.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from itertools import cycle, islice
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.environment import environment, versions_line

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"


def sample_reviews() -> list[str]:
    from pipeline.config import SAMPLE_ARCHIVE
    from pipeline.data import read_reviews

    return read_reviews(SAMPLE_ARCHIVE).test.texts


def _invoke(url: str, texts: list[str]) -> float:
    from pipeline.http_server import post_json

    started = time.perf_counter()
    status, answer = post_json(url, {"dataframe_split": {"columns": ["text"], "data": [[t] for t in texts]}})
    seconds = time.perf_counter() - started
    if status != 200 or len(answer.get("predictions", [])) != len(texts):
        raise RuntimeError(f"HTTP {status} from {url}: {str(answer)[:500]}")
    return seconds


def measure(url: str, reviews: list[str], requests: int, batches: int, batch_size: int) -> dict[str, Any]:
    invocations = f"{url}/invocations"
    for text in reviews[:10]:  # warm-up: first calls trace the model
        _invoke(invocations, [text])
    single = [1000 * _invoke(invocations, [text]) for text in islice(cycle(reviews), requests)]
    batch = list(islice(cycle(reviews), batch_size))
    _invoke(invocations, batch)
    batch_seconds = [_invoke(invocations, batch) for _ in range(batches)]
    return {
        "single_review_requests": requests,
        "latency_ms_p50": float(np.percentile(single, 50)),
        "latency_ms_p95": float(np.percentile(single, 95)),
        "latency_ms_p99": float(np.percentile(single, 99)),
        "latency_ms_mean": statistics.fmean(single),
        "batch_size": batch_size,
        "batches": batches,
        "batch_seconds_median": statistics.median(batch_seconds),
        "reviews_per_second": batch_size * batches / sum(batch_seconds),
        "mean_review_words": statistics.fmean(len(text.split()) for text in reviews),
    }


def markdown(results: dict[str, Any]) -> str:
    m, env = results["measurements"], results["environment"]
    rows = [
        "| figure | value |",
        "|---|---|",
        f"| latency, one review per request: p50 / p95 / p99 | {m['latency_ms_p50']:.1f} / "
        f"{m['latency_ms_p95']:.1f} / {m['latency_ms_p99']:.1f} ms ({m['single_review_requests']} requests) |",
        f"| throughput, batches of {m['batch_size']:,} reviews | {m['reviews_per_second']:,.0f} reviews/s "
        f"({m['batch_seconds_median']:.2f} s a batch, median of {m['batches']}) |",
    ]
    return (
        f"## Serving over HTTP: `{results['model']}`\n\n"
        f"`{results['command']}` on {env['cpu']} ({env['cores']} cores), {results['date']}; "
        f"`sentiment serve`, 1 worker, default limits, real IMDB test reviews "
        f"(mean {m['mean_review_words']:.0f} words).\n\n"
        + "\n".join(rows)
        + f"\n\nVersions: {versions_line(env)}.\n"
    )


def main() -> None:
    from pipeline.config import build_config
    from pipeline.stores import resolve

    default = build_config().tracking
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", default=f"models:/{default.model_name}@champion", help="model URI to serve"
    )
    parser.add_argument(
        "--tracking-uri", default=resolve(build_config()).tracking_uri, help="MLflow store holding the model"
    )
    parser.add_argument("--requests", type=int, default=300, help="single-review requests to time")
    parser.add_argument("--batches", type=int, default=5, help="batches to time")
    parser.add_argument("--batch-size", type=int, default=1000, help="reviews per batch request")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for serving.json and .md")
    args = parser.parse_args()

    from pipeline.http_server import model_server

    reviews = sample_reviews()
    with tempfile.TemporaryDirectory() as tmp:
        try:
            with model_server(args.model, args.tracking_uri, Path(tmp) / "server.log") as server:
                measurements = measure(server.url, reviews, args.requests, args.batches, args.batch_size)
        except RuntimeError as error:
            raise SystemExit(f"error: cannot serve {args.model} from {args.tracking_uri}: {error}") from None
    results = {
        "model": args.model,
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "command": "python -m benchmarks.serving",
        "environment": environment(),
        "measurements": measurements,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "serving.json").write_text(json.dumps(results, indent=2))
    (args.out / "serving.md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
