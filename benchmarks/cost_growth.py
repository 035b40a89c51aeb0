"""How cost grows: the whole pipeline at 25 / 50 / 100% of the training reviews, and one training
epoch at max_len 200 / 300 / 500, with wall time, peak memory (RSS) and the fitted growth.

    python -m benchmarks.cost_growth              # the full archive (about an hour on 2 cores)
    python -m benchmarks.cost_growth --quick      # a 4,000-review subset, minutes

The full-data point runs ``--repeats`` times (default 3: the champion's accuracy spread), and the
scikit-learn linear baselines (``linear_baseline``) are fitted on the same splits in the same
invocation, so the champion is compared with what a user would pick instead. Each point runs in
a fresh interpreter; its peak RSS counts the search's worker processes.
``data.limit`` draws the fraction (it caps the test split the same way, so evaluation shrinks
with it). Growth is the exponent ``b`` of ``time ∝ size^b`` fitted on the points (1: linear).
Writes ``benchmarks/results/cost_growth[-quick].json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.environment import environment, versions_line, write_results
from benchmarks.linear_baseline import BASELINE_NAMES, linear_baselines
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
# A typical searched winner (docs/benchmarks.md): what one epoch of the final model costs.
EPOCH_HPARAMS = {"cell": "gru", "units": 32, "layers": 2, "embedding_dim": 32, "learning_rate": 0.005}


def pipeline_point(profile: dict[str, Any], data_path: Path, keep_model: Path | None = None) -> dict[str, Any]:
    result = pipeline_run(profile, data_path, keep_model=keep_model)
    keys = (
        "wall_seconds", "peak_rss_mb", "test_accuracy", "model_kind", "member_test_accuracy",
        "val_accuracy", "blend_weight_rnn", "best_hparams", "search_seconds", "trials_complete",
        "trials_pruned", "trials_failed", "final_epochs", "final_seconds_per_epoch", "final_stopped_by_time_budget",
    )  # fmt: skip
    return {k: result[k] for k in keys}


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
        f"{fit['max_rss_mb']:,.0f} MB.\n\n"
        + full_runs_markdown(results)
        + f"\nVersions: {versions_line(env)}.\n"
    )


def full_runs_markdown(results: dict[str, Any]) -> str:
    """Every run on all the training reviews (accuracy spread), each part of the champion, and the
    scikit-learn baselines fitted on the same splits in the same invocation."""
    full = [p for p in results["pipeline"] if p["fraction"] == 1.0]
    rows = [
        "| run | champion test accuracy | RNN alone | companion alone | RNN weight | wall time | best RNN |",
        "|---|---|---|---|---|---|---|",
    ]
    for number, run in enumerate(full, 1):
        members = list(run["member_test_accuracy"].values())
        rnn, companion = members[0], members[1] if len(members) > 1 else None
        hp = run["best_hparams"]
        rows.append(
            f"| {number} | **{run['test_accuracy']:.4f}** | {rnn:.4f} | "
            f"{'—' if companion is None else f'{companion:.4f}'} | {run['blend_weight_rnn']} | "
            f"{run['wall_seconds'] / 60:.1f} min | {hp['cell']} {hp['units']}×{hp['layers']}"
            f"{' bi' if hp['bidirectional'] else ''}, lr {hp['learning_rate']:.4f} |"
        )
    accuracies = np.array([run["test_accuracy"] for run in full])
    baseline = [
        f"| {BASELINE_NAMES[name]} (scikit-learn) | {row['test_accuracy']:.4f} | {row['wall_seconds']:.0f} s |"
        for name, row in results.get("linear_baseline", {}).items()
    ]
    return (
        f"Whole pipeline on all training reviews, {len(full)} run(s): champion test accuracy "
        f"{accuracies.mean():.4f} (min {accuracies.min():.4f}, max {accuracies.max():.4f}).\n\n"
        + "\n".join(rows)
        + "\n\n| linear baseline, same splits | test accuracy | wall time |\n|---|---|---|\n"
        + "\n".join(baseline)
        + "\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_ARCHIVE, help="aclImdb .tar.gz or folder")
    parser.add_argument("--quick", action="store_true", help="a 4,000-review subset, few trials and epochs")
    parser.add_argument(
        "--repeats", type=int, help="runs on all the training reviews (accuracy spread; default 3, quick 1)"
    )
    parser.add_argument(
        "--keep-model", type=Path, help="copy the last full run's model folder here (for benchmarks.serving)"
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for the .json and .md results")
    args = parser.parse_args()
    args.repeats = args.repeats or (1 if args.quick else 3)

    base = QUICK_PROFILE | {"data.limit": 4_000} if args.quick else FULL_PROFILE
    total = base.get("data.limit", TRAIN_REVIEWS)
    results: dict[str, Any] = {
        "quick": args.quick,
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "command": "python -m benchmarks.cost_growth"
        + (" --quick" if args.quick else "")
        + f" --repeats {args.repeats}",
        "environment": environment(),
        "profile": {k: str(v) for k, v in base.items()},
        "pipeline": [],
        "epochs": [],
    }
    # All reviews first: the figure that matters most is known soonest.
    fractions = (1.0, *(f for f in FRACTIONS if f < 1.0), *[1.0] * (args.repeats - 1))
    for index, fraction in enumerate(fractions):
        reviews = int(total * fraction)
        keep = args.keep_model if index == len(fractions) - 1 else None
        point = in_fresh_process(pipeline_point, base | {"data.limit": reviews}, args.data, keep)
        results["pipeline"].append({"fraction": fraction, "reviews": reviews, **point})
        print("pipeline", results["pipeline"][-1], flush=True)
    data_options = {k: v for k, v in base.items() if k.startswith("data.")} | {"data.path": args.data}
    with tempfile.TemporaryDirectory() as cache:
        results["linear_baseline"] = in_fresh_process(linear_baselines, data_options | {"data.cache_dir": cache})
    print("linear baseline", results["linear_baseline"], flush=True)
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
    write_results(results, markdown(results), args.out, "cost_growth", args.quick)


if __name__ == "__main__":
    main()
