"""The notebook recipe and the pipeline, side by side on this machine.

    python -m benchmarks.notebook_vs_pipeline                 # full dataset, ~40 minutes on 2 cores
    python -m benchmarks.notebook_vs_pipeline --quick         # a subset, a few minutes

1. Data prep of the archive, cold (empty cache) and cached.
2. The notebook recipe: Embedding(10000,16) → LSTM(8), length 500, RMSprop 1e-4, batch 64,
   EarlyStopping(patience=3, restore_best_weights), plain ``model.fit`` on fully padded arrays.
3. The same architecture through the pipeline's training path (length buckets + XLA): seconds
   per epoch and the share of padded timesteps, for the speed-up on equal work; and one epoch of
   its tf.data input pipeline alone, to show feeding never holds training up.
4. The whole pipeline as a Prefect flow (prep, search, final training, evaluation, registry) in a
   throw-away MLflow store: wall time, test accuracy, trials completed/pruned, bookkeeping share.
5. What a user could pick instead (``benchmarks.linear_baseline``): scikit-learn TF-IDF 1-2-grams
   + logistic regression and NBSVM + logistic regression, on the pipeline's own splits.

Writes ``benchmarks/results/notebook_vs_pipeline[-quick].json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import yaml

from benchmarks.environment import environment, versions_line, write_results
from benchmarks.linear_baseline import BASELINE_NAMES, linear_baselines

os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")  # no network here

REPO = Path(__file__).resolve().parents[1]
DEFAULT_ARCHIVE = REPO.parent / "shared" / "data" / "aclImdb_v1.tar.gz"
RESULTS = REPO / "benchmarks" / "results"

# The pipeline's settings for the full dataset, as a user runs them: configs/full.yaml, read as
# dotted overrides (a short search on a share of the reviews, then the chosen configuration
# trained in full with XLA and buckets).
def _dotted(config_file: Path) -> dict[str, Any]:
    tree = yaml.safe_load(config_file.read_text())
    return {f"{section}.{name}": value for section, values in tree.items() for name, value in values.items()}


FULL_PROFILE: dict[str, Any] = _dotted(REPO / "configs" / "full.yaml")
QUICK_PROFILE: dict[str, Any] = {
    **FULL_PROFILE,
    "data.limit": 2_000,
    "search.trials": 4,
    "search.epochs": 1,
    "search.subset": 1.0,
    "train.epochs": 2,
}


class EpochTimer:
    """Wall seconds of each epoch (a Keras callback built lazily so importing stays cheap)."""

    def __new__(cls):
        import keras

        class _Timer(keras.callbacks.Callback):
            def __init__(self) -> None:
                super().__init__()
                self.seconds: list[float] = []

            def on_epoch_begin(self, epoch, logs=None):
                self._started = time.perf_counter()

            def on_epoch_end(self, epoch, logs=None):
                self.seconds.append(time.perf_counter() - self._started)

        return _Timer()


def steady(seconds: list[float]) -> float:
    """Median epoch time after the first (which carries tracing/compilation)."""
    return statistics.median(seconds[1:] or seconds)


def in_fresh_process(function, *args):
    """``function(*args)`` in a new interpreter. Each measurement starts from a clean TensorFlow:
    in one process, a model trained after the notebook's ``model.fit`` ran ~3× slower."""
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        return pool.submit(function, *args).result()


def prepared(overrides: dict[str, Any]):
    from pipeline.config import build_config
    from pipeline.data import prepare

    return prepare(build_config(overrides).data)


def measure_prep(overrides: dict[str, Any]) -> dict[str, float]:
    """Prep of the archive into an empty cache (cold), then again (cached); leaves the cache filled."""
    cold = prepared(overrides)
    cached = prepared(overrides)
    assert cached.from_cache and not cold.from_cache
    return {"prep_cold_seconds": cold.prep_seconds, "prep_cached_seconds": cached.prep_seconds}


def notebook_recipe(data_options: dict[str, Any], max_epochs: int) -> dict[str, Any]:
    """The notebook, as written: full-length padded arrays, no XLA, early stopping on val_loss."""
    import keras
    import numpy as np

    from pipeline.model import PRESETS, build_model

    data = prepared(data_options)
    keras.utils.set_random_seed(42)
    keras.backend.clear_session()
    model = build_model(PRESETS["notebook-recipe"].hparams, data.vocab_size_effective, jit_compile=False)
    timer = EpochTimer()
    started = time.perf_counter()
    model.fit(
        data.train.x,
        data.train.y.astype("float32"),
        batch_size=64,
        epochs=max_epochs,
        validation_data=(data.val.x, data.val.y.astype("float32")),
        callbacks=[keras.callbacks.EarlyStopping(patience=3, restore_best_weights=True), timer],
        verbose=0,
    )
    wall = time.perf_counter() - started
    _, accuracy = model.evaluate(data.test.x, data.test.y.astype("float32"), batch_size=512, verbose=0)
    lengths = data.train.lengths
    return {
        "test_accuracy": float(accuracy),
        "wall_seconds": wall,
        "epochs": len(timer.seconds),
        "seconds_per_epoch": steady(timer.seconds),
        "padding_share": float(1 - np.minimum(lengths, data.max_len).sum() / (len(lengths) * data.max_len)),
    }


def pipeline_training_path(
    data_options: dict[str, Any], train_overrides: dict[str, Any], epochs: int
) -> dict[str, Any]:
    """The notebook's architecture through ``pipeline.train.fit``: buckets + XLA, equal work."""
    import keras
    import numpy as np

    from pipeline.batching import epoch_batches
    from pipeline.config import build_config
    from pipeline.model import PRESETS, build_model
    from pipeline.train import fit, widths_for

    data = prepared(data_options)
    cfg = build_config({**train_overrides, "train.jit_compile": True}).train
    keras.backend.clear_session()
    model = build_model(PRESETS["notebook-recipe"].hparams, data.vocab_size_effective, jit_compile=True)
    widths = widths_for(data.train, cfg, data.max_len)
    timer = EpochTimer()
    result = fit(model, data.train, data.val, cfg, widths=widths, epochs=epochs, callbacks=[timer])
    batches = epoch_batches(data.train.lengths, widths, cfg.batch_size, np.random.default_rng(0))
    fed = sum(width * len(members) for width, members in batches)
    return {
        "input_seconds_per_epoch": input_pass_seconds(data.train, widths, cfg.batch_size),
        "seconds_per_epoch": steady(timer.seconds),
        "first_epoch_seconds": timer.seconds[0],
        "epochs": result.epochs,
        "bucket_widths": list(widths),
        "padding_share": float(1 - data.train.lengths.sum() / fed),
    }


def input_pass_seconds(train, widths: tuple[int, ...], batch_size: int) -> float:
    """One epoch of the training ``tf.data`` pipeline drawn with no model: what feeding costs.
    Batches are prefetched, so while this stays well under an epoch it never holds training up."""
    from pipeline.batching import training_dataset

    dataset = training_dataset(train.x, train.y, train.lengths, widths, batch_size)
    started = time.perf_counter()
    for _ in dataset:
        pass
    return time.perf_counter() - started


def pipeline_run(overrides: dict[str, Any], data_path: Path, keep_model: Path | None = None) -> dict[str, Any]:
    """The whole flow in a throw-away store; bookkeeping share from the study's own timings.
    ``keep_model``: where to copy the registered model's folder before the store goes."""
    import optuna

    from flows.training import training_flow
    from pipeline.config import build_config
    from pipeline.stores import resolve

    with tempfile.TemporaryDirectory() as store:
        cfg = build_config(
            {
                **overrides,
                "data.path": data_path,
                "search.study_name": f"benchmark-{int(time.time())}",
                "search.storage": f"sqlite:///{store}/optuna.db",
                "tracking.tracking_uri": f"sqlite:///{store}/mlflow.db",
                "data.cache_dir": f"{store}/cache",  # starts empty: prep is timed cold
            }
        )
        started = time.perf_counter()
        summary = training_flow(config=cfg).to_dict()
        wall = time.perf_counter() - started
        stores = resolve(cfg)
        final = stores.mlflow_client().get_run(summary["run_id"]).data.metrics
        model_folder = stores.download_model(summary["model_uri"])
        members = member_test_accuracies(model_folder, cfg)
        if keep_model is not None:
            shutil.rmtree(keep_model, ignore_errors=True)
            shutil.copytree(model_folder, keep_model)
        study = optuna.load_study(study_name=cfg.search.study_name, storage=stores.study_storage)
        trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    trial_wall = sum((t.datetime_complete - t.datetime_start).total_seconds() for t in complete)
    # Training time: each fit minus the Optuna reports and MLflow metrics logged inside it.
    fit_seconds = sum(t.user_attrs["seconds"] - t.user_attrs["bookkeeping_seconds"] for t in complete)
    return {
        "test_accuracy": summary["test_metrics"]["test_accuracy"],
        "test_metrics": summary["test_metrics"],
        "wall_seconds": wall,
        "trials_complete": len(complete),
        "trials_pruned": sum(t.state.name == "PRUNED" for t in trials),
        "trials_failed": sum(t.state.name == "FAIL" for t in trials),
        "trial_overhead_share": 1 - fit_seconds / trial_wall if trial_wall else None,
        "model_kind": summary["model_kind"],
        "val_accuracy": {k: final.get(f"blend/val_accuracy_{k}") for k in ("rnn", "bigrams", "rnn_bigrams")},
        "blend_weight_rnn": final.get("blend/blend_weight_rnn"),
        "peak_rss_mb": peak_rss_mb(),
        "member_test_accuracy": members,
        "companion_seconds": final.get("bigrams/train_seconds"),
        "best_hparams": summary["best_hparams"],
        "final_epochs": final.get("rnn/epochs_run"),
        "final_seconds_per_epoch": final.get("rnn/seconds_per_epoch"),
        "final_stopped_by_time_budget": final.get("rnn/stopped_by_time_budget"),
        "search_seconds": final.get("search/seconds"),
        "promotion": summary.get("promotion_reason"),
    }


def peak_rss_mb() -> float:
    """Largest resident set of this process or any child it waited for (search workers), in MB."""
    import resource

    usage = [resource.getrusage(who).ru_maxrss for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    return max(usage) / 1024  # Linux reports kB


def member_test_accuracies(model_path: str, cfg) -> dict[str, float]:
    """Test accuracy of each model inside the logged one (the RNN and, blended, its companion):
    what the blend adds. Read after the run; nothing here feeds back into the pipeline."""
    import keras
    import mlflow
    import numpy as np

    from pipeline.batching import predict_proba
    from pipeline.data import prepare
    from pipeline.evaluate import THRESHOLD

    scorer = mlflow.pyfunc.load_model(model_path).unwrap_python_model()
    nested = [layer for layer in scorer._keras.layers if isinstance(layer, keras.Model)]
    data = prepare(cfg.data)
    accuracies = {}
    for member in nested or [scorer._keras]:
        probability = predict_proba(member, data.test.x, data.test.lengths, scorer._widths)
        accuracies[member.name] = float(np.mean((probability >= THRESHOLD) == data.test.y.astype(bool)))
    return accuracies


def markdown(results: dict[str, Any]) -> str:
    nb, path, pipe = results["notebook"], results["pipeline_training_path"], results["pipeline"]
    env = results["environment"]

    def pct(value):
        return "—" if value is None else f"{100 * value:.1f}%"

    rows = [
        "| | notebook recipe | pipeline |",
        "|---|---|---|",
        f"| test accuracy | {nb['test_accuracy']:.4f} | **{pipe['test_accuracy']:.4f}** |",
        f"| wall time | {nb['wall_seconds'] / 60:.1f} min (1 model) | {pipe['wall_seconds'] / 60:.1f} min "
        f"(prep + {pipe['trials_complete'] + pipe['trials_pruned'] + pipe['trials_failed']} trials + final + registry) |",
        f"| trials completed / pruned | — | {pipe['trials_complete']} / {pipe['trials_pruned']} |",
        f"| final model | — | {pipe['model_kind']} (test accuracy of each part: "
        f"{', '.join(f'{k} {v:.4f}' for k, v in pipe['member_test_accuracy'].items())}) |",
        f"| epochs (notebook model) | {nb['epochs']} | {path['epochs']} (speed probe) |",
        f"| s/epoch, notebook architecture, after the first | {nb['seconds_per_epoch']:.1f} | "
        f"{path['seconds_per_epoch']:.1f} (**{results['speedup']:.1f}×**; first epoch with XLA compiles "
        f"{path['first_epoch_seconds']:.1f}) |",
        f"| input pipeline alone (tf.data, no model), s/epoch | — | {path['input_seconds_per_epoch']:.2f} "
        f"({pct(path['input_seconds_per_epoch'] / path['seconds_per_epoch'])} of a training epoch; prefetched) |",
        f"| padded timesteps | {pct(nb['padding_share'])} | {pct(path['padding_share'])} (widths {path['bucket_widths']}) |",
        f"| bookkeeping share of a completed trial (Optuna + MLflow + model build) | — | {pct(pipe['trial_overhead_share'])} |",
        f"| data prep, cold / cached | {results['prep']['prep_cold_seconds']:.1f} s / "
        f"{results['prep']['prep_cached_seconds']:.2f} s | same code |",
    ]
    baseline = [
        "| scikit-learn on the same splits | test accuracy | validation accuracy (C) | wall time |",
        "|---|---|---|---|",
        *(
            f"| {BASELINE_NAMES[name]} | {row['test_accuracy']:.4f} | {row['val_accuracy']:.4f} (C={row['C']:g}) | "
            f"{row['wall_seconds']:.0f} s |"
            for name, row in results.get("linear_baseline", {}).items()
        ),
        f"| the pipeline's champion ({pipe['model_kind']}) | **{pipe['test_accuracy']:.4f}** | "
        f"{_blend_val(pipe)} | {pipe['wall_seconds'] / 60:.1f} min |",
    ]
    return (
        f"## Notebook recipe vs pipeline ({'quick subset' if results['quick'] else 'full dataset'})\n\n"
        f"`{results['command']}` on {env['cpu']} ({env['cores']} cores), {results['date']}, "
        f"load average at start {env.get('load_average')}.\n\n"
        + "\n".join(rows)
        + "\n\n"
        + "\n".join(baseline)
        + f"\n\nPipeline best configuration: `{json.dumps(pipe['best_hparams'])}`.\n"
        f"Versions: {versions_line(env)}.\n"
    )


def _blend_val(pipe: dict[str, Any]) -> str:
    chosen = "rnn_bigrams" if pipe["model_kind"] != "rnn" else "rnn"
    value = pipe["val_accuracy"].get(chosen)
    return "—" if value is None else f"{value:.4f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_ARCHIVE, help="aclImdb .tar.gz or folder")
    parser.add_argument("--quick", action="store_true", help="2,000 reviews per split, few epochs and trials")
    parser.add_argument("--notebook-epochs", type=int, default=None, help="epoch cap for the notebook recipe")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for the .json and .md results")
    args = parser.parse_args()

    profile = QUICK_PROFILE if args.quick else FULL_PROFILE
    notebook_data_options = {"data.path": args.data, "data.vocab_size": 10_000, "data.max_len": 500}
    if args.quick:
        notebook_data_options["data.limit"] = profile["data.limit"]
    data_options = {k: v for k, v in profile.items() if k.startswith("data.")} | {"data.path": args.data}
    train_options = {k: v for k, v in profile.items() if k.startswith("train.")}

    results: dict[str, Any] = {
        "quick": args.quick,
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "command": "python -m benchmarks.notebook_vs_pipeline" + (" --quick" if args.quick else ""),
        "environment": environment(),
        "profile": {k: str(v) for k, v in profile.items()},
    }
    with tempfile.TemporaryDirectory() as cache:
        data_options["data.cache_dir"] = notebook_data_options["data.cache_dir"] = cache
        results["prep"] = in_fresh_process(measure_prep, data_options)
        print("prep", results["prep"], flush=True)
        epochs = args.notebook_epochs or (2 if args.quick else 30)
        results["notebook"] = in_fresh_process(notebook_recipe, notebook_data_options, epochs)
        print("notebook", results["notebook"], flush=True)
        results["pipeline_training_path"] = in_fresh_process(
            pipeline_training_path, notebook_data_options, train_options, 4
        )
    results["speedup"] = (
        results["notebook"]["seconds_per_epoch"] / results["pipeline_training_path"]["seconds_per_epoch"]
    )
    print("training path", results["pipeline_training_path"], flush=True)
    results["pipeline"] = in_fresh_process(pipeline_run, profile, args.data)
    print("pipeline", results["pipeline"], flush=True)
    with tempfile.TemporaryDirectory() as cache:
        results["linear_baseline"] = in_fresh_process(
            linear_baselines, data_options | {"data.cache_dir": cache}
        )
    print("linear baseline", results["linear_baseline"], flush=True)

    write_results(results, markdown(results), args.out, "notebook_vs_pipeline", args.quick)


if __name__ == "__main__":
    main()
