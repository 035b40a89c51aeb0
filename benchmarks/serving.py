"""The registered model over HTTP (`sentiment serve`) and in-process: latency, throughput, size.

    make run && python -m benchmarks.serving            # the champion of the default store
    python -m benchmarks.serving --model models:/imdb-sentiment/3 --data ../shared/data/aclImdb_v1.tar.gz
    python -m benchmarks.serving --quick                # fewer requests, a smoke test

Starts ``sentiment serve <model>`` (MLflow's scoring app behind its limits) on 127.0.0.1
(``--workers``, default limits), sends real test reviews (of ``--data``, default the shipped
sample), and writes ``benchmarks/results/serving.json`` and ``.md``:

- p50/p95/p99 latency of single-review requests, one client;
- requests per second and latency with ``--clients`` concurrent single-review clients;
- reviews per second for batches of 1,000 (``{"dataframe_split": ...}`` payloads);
- in-process ``pyfunc.predict`` reviews per second on ``--in-process`` reviews;
- where one request's time goes: JSON parse, tokenization, the Keras call, serialization;
- the model folder's size and a consumer's cold load (``mlflow.pyfunc.load_model`` in a fresh
  interpreter).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from itertools import cycle, islice
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.environment import environment, versions_line, write_results

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"


def test_reviews(path: Path | None) -> list[str]:
    """The test reviews of an aclImdb archive (default: the shipped sample's)."""
    from pipeline.config import SAMPLE_ARCHIVE
    from pipeline.data import read_reviews

    return read_reviews(path or SAMPLE_ARCHIVE).test.texts


def _payload(texts: list[str]) -> dict[str, Any]:
    return {"dataframe_split": {"columns": ["text"], "data": [[t] for t in texts]}}


def _invoke(url: str, texts: list[str]) -> float:
    from pipeline.http_server import post_json

    started = time.perf_counter()
    status, answer = post_json(url, _payload(texts))
    seconds = time.perf_counter() - started
    if status != 200 or len(answer.get("predictions", [])) != len(texts):
        raise RuntimeError(f"HTTP {status} from {url}: {str(answer)[:500]}")
    return seconds


def _percentiles(milliseconds: list[float], prefix: str) -> dict[str, float]:
    return {f"{prefix}_ms_p{p}": float(np.percentile(milliseconds, p)) for p in (50, 95, 99)}


def measure_http(
    url: str, reviews: list[str], requests: int, batches: int, batch_size: int, clients: int
) -> dict[str, Any]:
    """Single-review latency (one client), the same with ``clients`` at once, batch throughput."""
    invocations = f"{url}/invocations"
    for text in reviews[:20]:  # warm-up: first calls trace the model
        _invoke(invocations, [text])
    single = [1000 * _invoke(invocations, [text]) for text in islice(cycle(reviews), requests)]
    texts = list(islice(cycle(reviews), requests * 2))
    with ThreadPoolExecutor(clients) as pool:
        # Warm-up: requests that arrive together are scored as one batch, and XLA compiles each
        # new (batch chunk, width) shape once (~1 s); the timed round measures the steady state.
        warm_up = time.perf_counter()
        list(pool.map(lambda t: _invoke(invocations, [t]), texts[: clients * 10]))
        warm_up_seconds = time.perf_counter() - warm_up
        started = time.perf_counter()
        concurrent = [1000 * s for s in pool.map(lambda t: _invoke(invocations, [t]), texts)]
        concurrent_seconds = time.perf_counter() - started
    batch = list(islice(cycle(reviews), batch_size))
    _invoke(invocations, batch)
    batch_seconds = [_invoke(invocations, batch) for _ in range(batches)]
    return {
        "single_review_requests": requests,
        **_percentiles(single, "latency"),
        "latency_ms_mean": statistics.fmean(single),
        "clients": clients,
        "concurrent_requests": len(texts),
        "concurrent_requests_per_second": len(texts) / concurrent_seconds,
        "concurrent_warm_up_seconds": warm_up_seconds,
        **_percentiles(concurrent, "concurrent_latency"),
        "batch_size": batch_size,
        "batches": batches,
        "batch_seconds_median": statistics.median(batch_seconds),
        "reviews_per_second": batch_size * batches / sum(batch_seconds),
        "mean_review_words": statistics.fmean(len(text.split()) for text in reviews),
    }


def measure_in_process(model_path: str, reviews: list[str], count: int, requests: int) -> dict[str, Any]:
    """``pyfunc.predict`` on ``count`` reviews at once, and one single-review request's parts."""
    import mlflow.pyfunc
    import pandas as pd

    from pipeline.batching import predict_proba

    model = mlflow.pyfunc.load_model(model_path)
    texts = list(islice(cycle(reviews), count))
    # Warm-up at the timed size: XLA compiles each (rows, width) shape the call uses once, and a
    # 1,000-review warm-up never meets the 512-row calls of 20,000 reviews.
    model.predict(pd.DataFrame({"text": texts}))
    started = time.perf_counter()
    model.predict(pd.DataFrame({"text": texts}))
    bulk = time.perf_counter() - started
    scorer = model.unwrap_python_model()
    parts: dict[str, list[float]] = {k: [] for k in ("parse", "tokenize", "model", "serialize", "pyfunc")}
    for text in islice(cycle(reviews), requests):
        body = json.dumps(_payload([text]))
        t0 = time.perf_counter()
        frame = pd.DataFrame(**{k: v for k, v in json.loads(body)["dataframe_split"].items()})
        t1 = time.perf_counter()
        x, lengths = scorer._encode(frame["text"].tolist())
        t2 = time.perf_counter()
        probability = predict_proba(scorer._keras, x, lengths, scorer._widths)
        t3 = time.perf_counter()
        json.dumps({"predictions": [{"probability": float(p)} for p in probability]})
        t4 = time.perf_counter()
        model.predict(frame)
        t5 = time.perf_counter()
        for name, seconds in zip(parts, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4), strict=True):
            parts[name].append(1000 * seconds)
    return {
        "in_process_reviews": count,
        "in_process_reviews_per_second": count / bulk,
        "breakdown_ms_p50": {name: float(np.median(values)) for name, values in parts.items()},
    }


def model_facts(model_path: str) -> dict[str, Any]:
    """Folder and Keras-file size in MB; a consumer's cold load in a fresh interpreter (median of 3)."""
    folder = Path(model_path)
    size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
    keras_files = list(folder.rglob("*.keras"))
    probe = (
        "import time; t = time.perf_counter(); import mlflow.pyfunc; "
        f"mlflow.pyfunc.load_model({str(folder)!r}); print(time.perf_counter() - t)"
    )
    loads = [
        float(
            subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
        )
        for _ in range(3)
    ]
    return {
        "model_mb": size / 1e6,
        "keras_file_mb": sum(f.stat().st_size for f in keras_files) / 1e6,
        "cold_load_seconds": statistics.median(loads),
    }


def compile_facts(server_log: Path) -> dict[str, Any]:
    """What the server's log says its start-up spent compiling the scorer (one line per process)."""
    found = re.findall(r"scorer compiled for (\d+) input shapes in ([\d.]+) s", server_log.read_text(errors="replace"))
    if not found:
        return {}
    return {"compiled_shapes": int(found[0][0]), "compile_seconds": max(float(s) for _, s in found)}


def markdown(results: dict[str, Any]) -> str:
    m, env = results["measurements"], results["environment"]
    parts = m["breakdown_ms_p50"]
    rows = [
        "| figure | value |",
        "|---|---|",
        f"| latency, one review per request: p50 / p95 / p99 | {m['latency_ms_p50']:.1f} / "
        f"{m['latency_ms_p95']:.1f} / {m['latency_ms_p99']:.1f} ms ({m['single_review_requests']} requests) |",
        f"| {m['clients']} concurrent clients, one review per request | {m['concurrent_requests_per_second']:,.0f} "
        f"requests/s; p50 / p99 {m['concurrent_latency_ms_p50']:.1f} / {m['concurrent_latency_ms_p99']:.1f} ms "
        f"(after a {m['concurrent_warm_up_seconds']:.0f} s warm-up round of {10 * m['clients']} requests) |",
        f"| throughput, batches of {m['batch_size']:,} reviews | {m['reviews_per_second']:,.0f} reviews/s "
        f"({m['batch_seconds_median']:.2f} s a batch, median of {m['batches']}) |",
        f"| in-process `pyfunc.predict`, {m['in_process_reviews']:,} reviews at once | "
        f"{m['in_process_reviews_per_second']:,.0f} reviews/s |",
        f"| one review in-process, p50: parse / tokenize / model / serialize (whole `predict`) | "
        f"{parts['parse']:.2f} / {parts['tokenize']:.2f} / {parts['model']:.2f} / {parts['serialize']:.2f} ms "
        f"({parts['pyfunc']:.2f} ms) |",
        f"| model folder / its Keras file | {m['model_mb']:.1f} MB / {m['keras_file_mb']:.1f} MB |",
        f"| cold load, `mlflow.pyfunc.load_model` in a fresh interpreter | {m['cold_load_seconds']:.1f} s |",
        f"| server start-up, process start to first `/ping` answer | {m['server_start_seconds']:.1f} s"
        + (
            f" (of which compiling {m['compiled_shapes']} input shapes: {m['compile_seconds']:.1f} s) |"
            if "compile_seconds" in m
            else " |"
        ),
    ]
    return (
        f"## Serving: `{results['model']}`\n\n"
        f"`{results['command']}` on {env['cpu']} ({env['cores']} cores), {results['date']}, load average at "
        f"start {env.get('load_average')}; `sentiment serve`, {results['workers']} worker(s), default limits, "
        f"real IMDB test reviews (mean {m['mean_review_words']:.0f} words).\n\n"
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
    parser.add_argument("--data", type=Path, default=None, help="aclImdb archive whose test reviews are sent")
    parser.add_argument("--quick", action="store_true", help="fewer requests and reviews: a smoke test")
    parser.add_argument("--requests", type=int, default=None, help="single-review requests to time (300)")
    parser.add_argument("--clients", type=int, default=20, help="concurrent single-review clients")
    parser.add_argument("--workers", type=int, default=1, help="server worker processes")
    parser.add_argument("--batches", type=int, default=None, help="batches to time (5)")
    parser.add_argument("--batch-size", type=int, default=1000, help="reviews per batch request")
    parser.add_argument("--in-process", type=int, default=None, help="reviews for pyfunc.predict (20,000)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for serving.json and .md")
    args = parser.parse_args()
    requests = args.requests or (60 if args.quick else 300)
    batches = args.batches or (2 if args.quick else 5)
    in_process = args.in_process or (2_000 if args.quick else 20_000)

    from pipeline.config import build_config as config_with
    from pipeline.http_server import model_server

    environment_at_start = environment()
    reviews = test_reviews(args.data)
    model_path = resolve(config_with({"tracking.tracking_uri": args.tracking_uri})).download_model(args.model)
    measurements = model_facts(model_path) | measure_in_process(model_path, reviews, in_process, requests)
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "server.log"
        try:
            started = time.perf_counter()
            with model_server(args.model, args.tracking_uri, log, workers=args.workers) as server:
                measurements |= {"server_start_seconds": time.perf_counter() - started} | compile_facts(log)
                measurements |= measure_http(
                    server.url, reviews, requests, batches, args.batch_size, args.clients
                )
        except RuntimeError as error:
            raise SystemExit(f"error: cannot serve {args.model} from {args.tracking_uri}: {error}") from None
    results = {
        "model": args.model,
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "command": "python -m benchmarks.serving " + " ".join(sys.argv[1:]),
        "environment": environment_at_start,
        "workers": args.workers,
        "measurements": measurements,
    }
    write_results(results, markdown(results), args.out, "serving", args.quick)


if __name__ == "__main__":
    main()
