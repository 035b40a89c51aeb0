"""How cost grows: the whole pipeline at 25 / 50 / 100% of the training reviews, and one training
epoch at max_len 200 / 300 / 500, with wall time, peak memory (RSS) and the fitted growth.

    python -m benchmarks.cost_growth              # the full archive (about an hour on 2 cores)
    python -m benchmarks.cost_growth --quick      # a 4,000-review subset, minutes

Each point runs in a fresh interpreter; its peak RSS counts the search's worker processes.
``data.limit`` draws the fraction (it caps the test split the same way, so evaluation shrinks
with it). Growth is the exponent ``b`` of ``time ∝ size^b`` fitted on the points (1: linear).
Writes ``benchmarks/results/cost_growth[-quick].json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.environment import environment, versions_line
from benchmarks.notebook_vs_pipeline import (
    DEFAULT_ARCHIVE,
    FULL_PROFILE,
    QUICK_PROFILE,
    RESULTS,
    EpochTimer,
    in_fresh_process,
    peak_rss_mb,
    pipeline_run,
    prepared,
)

FRACTIONS = (0.25, 0.5, 1.0)
MAX_LENS = (200, 300, 500)
TRAIN_REVIEWS = 25_000  # aclImdb's training split
# A typical searched winner (README): what one epoch of the final model costs.
EPOCH_HPARAMS = {"cell": "gru", "units": 32, "layers": 2, "embedding_dim": 32, "learning_rate": 0.005}


def pipeline_point(profile: dict[str, Any], data_path: Path) -> dict[str, Any]:
    result = pipeline_run(profile, data_path)
    return {k: result[k] for k in ("wall_seconds", "peak_rss_mb", "test_accuracy", "model_kind")}


def epoch_point(data_options: dict[str, Any], max_len: int) -> dict[str, Any]:
    """Two epochs of ``EPOCH_HPARAMS`` through the pipeline's training path at ``max_len``; the
    second (after XLA's compilations) is the epoch's cost."""
    import keras

    from pipeline.config import HParams, build_config
    from pipeline.model import build_model
    from pipeline.train import fit, widths_for

    data = prepared(data_options | {"data.max_len": max_len})
    cfg = build_config({"train.buckets": 8, "train.jit_compile": True}).train
    keras.backend.clear_session()
    model = build_model(HParams(**EPOCH_HPARAMS), data.vocab_size_effective, jit_compile=True)
    timer = EpochTimer()
    fit(
        model,
        data.train,
        data.val,
        cfg,
        widths=widths_for(data.train, cfg, max_len),
        epochs=2,
        callbacks=[timer],
    )
    return {
        "epoch_seconds": timer.seconds[-1],
        "first_epoch_seconds": timer.seconds[0],
        "peak_rss_mb": peak_rss_mb(),
    }


def growth_exponent(sizes: list[float], seconds: list[float]) -> float:
    """``b`` of the least-squares line log(seconds) = a + b·log(size)."""
    return float(np.polyfit(np.log(sizes), np.log(seconds), 1)[0])


def markdown(results: dict[str, Any]) -> str:
    env = results["environment"]
    rows = ["| point | wall time | peak RSS | test accuracy |", "|---|---|---|---|"]
    for point in results["pipeline"]:
        rows.append(
            f"| whole pipeline, {point['fraction']:.0%} of the training reviews ({point['reviews']:,}) | "
            f"{point['wall_seconds'] / 60:.1f} min | {point['peak_rss_mb']:,.0f} MB | {point['test_accuracy']:.4f} |"
        )
    for point in results["epochs"]:
        rows.append(
            f"| one epoch at max_len {point['max_len']} | {point['epoch_seconds']:.1f} s "
            f"(first, compiling: {point['first_epoch_seconds']:.1f} s) | {point['peak_rss_mb']:,.0f} MB | — |"
        )
    fit = results["growth"]
    return (
        f"## How cost grows ({'quick subset' if results['quick'] else 'full dataset'})\n\n"
        f"`{results['command']}` on {env['cpu']} ({env['cores']} cores), {results['date']}, load average "
        f"at start {env.get('load_average')}.\n\n"
        + "\n".join(rows)
        + f"\n\nFitted growth (time ∝ size^b): whole pipeline b = {fit['pipeline_reviews']:.2f} in the "
        f"training reviews, one epoch b = {fit['epoch_max_len']:.2f} in max_len (1 is linear). Largest RSS: "
        f"{fit['max_rss_mb']:,.0f} MB.\nVersions: {versions_line(env)}.\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_ARCHIVE, help="aclImdb .tar.gz or folder")
    parser.add_argument("--quick", action="store_true", help="a 4,000-review subset, few trials and epochs")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for the .json and .md results")
    args = parser.parse_args()

    base = QUICK_PROFILE | {"data.limit": 4_000} if args.quick else FULL_PROFILE
    total = base.get("data.limit", TRAIN_REVIEWS)
    results: dict[str, Any] = {
        "quick": args.quick,
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "command": "python -m benchmarks.cost_growth" + (" --quick" if args.quick else ""),
        "environment": environment(),
        "pipeline": [],
        "epochs": [],
    }
    for fraction in FRACTIONS:
        reviews = int(total * fraction)
        point = in_fresh_process(pipeline_point, base | {"data.limit": reviews}, args.data)
        results["pipeline"].append({"fraction": fraction, "reviews": reviews, **point})
        print("pipeline", results["pipeline"][-1], flush=True)
    data_options = {k: v for k, v in base.items() if k.startswith("data.")} | {"data.path": args.data}
    for max_len in MAX_LENS:
        point = in_fresh_process(epoch_point, data_options, max_len)
        results["epochs"].append({"max_len": max_len, **point})
        print("epoch", results["epochs"][-1], flush=True)
    pipe, epochs = results["pipeline"], results["epochs"]
    results["growth"] = {
        "pipeline_reviews": growth_exponent([p["reviews"] for p in pipe], [p["wall_seconds"] for p in pipe]),
        "epoch_max_len": growth_exponent(
            [e["max_len"] for e in epochs], [e["epoch_seconds"] for e in epochs]
        ),
        "max_rss_mb": max(p["peak_rss_mb"] for p in pipe + epochs),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "cost_growth" + ("-quick" if args.quick else "")
    (args.out / f"{stem}.json").write_text(json.dumps(results, indent=2, default=str))
    (args.out / f"{stem}.md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
