"""A registry consumer's first contact: load the champion and score 5,000 reviews, in a fresh
interpreter that has MLflow and TensorFlow but not this project, and what it prints.

    make run && python -m benchmarks.consumer                 # the champion of the default store
    python -m benchmarks.consumer --tracking-uri sqlite:///… --data ../shared/data/aclImdb_v1.tar.gz

Each of ``--repeats`` runs is ``python -I`` with the project off the path, doing only
``mlflow.pyfunc.load_model("models:/<name>@champion").predict(DataFrame({"text": reviews}))``:
the seconds to load, to score (first call included) and in all, the lines on stderr, and how many
are TensorFlow's C++ log lines or ``tf.function retracing`` warnings. Writes
``benchmarks/results/consumer.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.environment import environment, versions_line, write_results

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
FULL_DATA = REPO.parent / "shared" / "data" / "aclImdb_v1.tar.gz"

# The consumer: nothing of the project importable, only MLflow's registry and pyfunc.
CONSUMER = """
import importlib.util, json, sys, time
sys.path = [p for p in sys.path if p not in ("", ".") and p != {root!r} and "__editable__" not in p]
sys.meta_path = [f for f in sys.meta_path if not getattr(f, "__module__", "").startswith("__editable__")]
assert importlib.util.find_spec("pipeline") is None, "the project is still importable"
started = time.perf_counter()
import mlflow, pandas as pd
mlflow.set_tracking_uri({tracking_uri!r})
reviews = json.load(open({reviews!r}))
model = mlflow.pyfunc.load_model({model!r})
loaded = time.perf_counter()
scored = model.predict(pd.DataFrame({{"text": reviews}}))
done = time.perf_counter()
assert len(scored) == len(reviews)
print(json.dumps({{"load_seconds": loaded - started, "score_seconds": done - loaded, "total_seconds": done - started}}))
"""
TF_CPP_LINE = re.compile(r"^(?:[IWEF]\d{4} |WARNING: All log messages before absl)")


def one_consumer(model: str, tracking_uri: str, reviews_file: Path) -> dict[str, Any]:
    script = CONSUMER.format(
        root=str(REPO), tracking_uri=tracking_uri, reviews=str(reviews_file), model=model
    )
    environment_without_tf_settings = {k: v for k, v in os.environ.items() if not k.startswith("TF_")}
    done = subprocess.run(
        [sys.executable, "-I", "-c", script],
        cwd=reviews_file.parent,
        capture_output=True,
        text=True,
        timeout=600,
        env=environment_without_tf_settings,
    )
    if done.returncode != 0:
        raise SystemExit(f"error: the consumer failed:\n{done.stderr[-3000:]}")
    stderr = done.stderr.splitlines()
    return json.loads(done.stdout.strip().splitlines()[-1]) | {
        "stderr_lines": len(stderr),
        "tf_cpp_lines": sum(bool(TF_CPP_LINE.match(line)) for line in stderr),
        "retracing_warnings": sum("retracing" in line for line in stderr),
        "stderr_head": stderr[:12],
    }


def markdown(results: dict[str, Any]) -> str:
    env, runs = results["environment"], results["runs"]
    lines = [
        f"## A registry consumer: `{results['model']}`, {results['reviews']:,} reviews",
        "",
        f"`{results['command']}` on {env['cpu']} ({env['cores']} cores), {results['date']}, load average "
        f"at start {env['load_average']}, at the end {results['load_average_at_end']}. {results['note']}",
        "",
        "| run | load | score (first call) | in all | stderr lines | TF C++ lines | retracing warnings |",
        "|---|---|---|---|---|---|---|",
    ]
    for i, run in enumerate(runs, start=1):
        lines.append(
            f"| {i} | {run['load_seconds']:.1f} s | {run['score_seconds']:.1f} s | {run['total_seconds']:.1f} s "
            f"| {run['stderr_lines']} | {run['tf_cpp_lines']} | {run['retracing_warnings']} |"
        )
    median = statistics.median(run["total_seconds"] for run in runs)
    lines += ["", f"Median in all: {median:.1f} s.", "", "stderr of the first run:", "", "```"]
    lines += runs[0]["stderr_head"] or ["(nothing)"]
    lines += ["```", "", f"Versions: {versions_line(env)}.", ""]
    return "\n".join(lines)


def main() -> None:
    from pipeline.config import build_config
    from pipeline.data import read_reviews
    from pipeline.stores import resolve

    default = build_config().tracking
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=f"models:/{default.model_name}@champion", help="model URI to load")
    parser.add_argument(
        "--tracking-uri", default=resolve(build_config()).tracking_uri, help="MLflow store holding the model"
    )
    parser.add_argument(
        "--data", type=Path, default=FULL_DATA if FULL_DATA.exists() else None, help="aclImdb archive"
    )
    parser.add_argument("--reviews", type=int, default=5000, help="reviews scored in one call")
    parser.add_argument("--repeats", type=int, default=3, help="fresh consumers, one after another")
    parser.add_argument("--name", default="consumer", help="results file name")
    parser.add_argument("--note", default="", help="what was measured, in the Markdown's first line")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for the results")
    args = parser.parse_args()

    from pipeline.config import SAMPLE_ARCHIVE

    texts = read_reviews(args.data or SAMPLE_ARCHIVE).test.texts
    reviews = [texts[i % len(texts)] for i in range(args.reviews)]
    environment_at_start = environment()
    with tempfile.TemporaryDirectory() as tmp:
        reviews_file = Path(tmp) / "reviews.json"
        reviews_file.write_text(json.dumps(reviews))
        runs = [one_consumer(args.model, args.tracking_uri, reviews_file) for _ in range(args.repeats)]
    results = {
        "model": args.model,
        "reviews": len(reviews),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "command": "python -m benchmarks.consumer " + " ".join(sys.argv[1:]),
        "environment": environment_at_start,
        "load_average_at_end": [round(load, 2) for load in os.getloadavg()],
        "note": args.note,
        "runs": runs,
    }
    write_results(results, markdown(results), args.out, args.name, False)


if __name__ == "__main__":
    main()
