"""The command line: one command per flow or stage, each a few lines around what the flow uses.

    sentiment run                     # the whole pipeline on the embedded sample
    sentiment run --data ../shared/data/aclImdb_v1.tar.gz --trials 20
    sentiment prepare | search | train --preset notebook-lstm | presets

Option names are the config's field names (``--max-len`` is ``data.max_len``). Heavy imports
(TensorFlow, MLflow, Prefect) happen inside commands so ``--help`` answers at once.
"""

from __future__ import annotations

import json
import os
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

# Before Prefect is imported: its temporary local API can take >20 s to start on 2 busy cores.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")  # no network here

app = typer.Typer(
    add_completion=False, no_args_is_help=True, help="IMDB sentiment: tune, train, evaluate, register."
)

DATA = "Data"
SEARCH = "Search"
TRAIN = "Training"
TRACK = "MLflow"


class CellChoice(StrEnum):
    simple_rnn = "simple_rnn"
    lstm = "lstm"
    gru = "gru"


# One definition per option; commands pick the ones they need.
DataPath = Annotated[
    Path | None,
    typer.Option(
        "--data",
        help="aclImdb .tar.gz as downloaded, or its extracted folder (default: the sample shipped in the package)",
        rich_help_panel=DATA,
    ),
]
VocabSize = Annotated[
    int | None,
    typer.Option(
        help="vocabulary: the most frequent words of the training split (default: 10000)",
        rich_help_panel=DATA,
    ),
]
MaxLen = Annotated[
    int | None, typer.Option(help="tokens kept per review, from its end (default: 500)", rich_help_panel=DATA)
]
CacheDir = Annotated[
    Path | None,
    typer.Option(
        help="where prepared arrays are cached (default: .cache/prepared in the repository)",
        rich_help_panel=DATA,
    ),
]
Limit = Annotated[
    int | None,
    typer.Option(help="use at most this many reviews per split (stratified draw)", rich_help_panel=DATA),
]
Trials = Annotated[
    int | None,
    typer.Option(
        "--trials", help="Optuna trials to run in this invocation (default: 6)", rich_help_panel=SEARCH
    ),
]
Timeout = Annotated[
    float | None, typer.Option(help="time budget for the search, in seconds", rich_help_panel=SEARCH)
]
SearchEpochs = Annotated[
    int | None, typer.Option(help="epoch cap per trial (default: 3)", rich_help_panel=SEARCH)
]
StudyName = Annotated[
    str | None,
    typer.Option(
        help="Optuna study name; an existing study resumes (default: imdb-sentiment)", rich_help_panel=SEARCH
    ),
]
Storage = Annotated[
    str | None,
    typer.Option(help="Optuna storage URL (default: sqlite beside the MLflow store)", rich_help_panel=SEARCH),
]
Cells = Annotated[
    list[CellChoice] | None,
    typer.Option(
        "--cell", help="cell types to search (repeat the option) (default: all)", rich_help_panel=SEARCH
    ),
]
Pruner = Annotated[
    str | None, typer.Option(help="median, hyperband or none (default: median)", rich_help_panel=SEARCH)
]
SearchMaxLen = Annotated[
    int | None,
    typer.Option(
        help="tokens per review (the end) in trials; the final model uses --max-len", rich_help_panel=SEARCH
    ),
]
Workers = Annotated[
    int | None,
    typer.Option(help="trials run side by side, one process each (default: 1)", rich_help_panel=SEARCH),
]
Subset = Annotated[
    float | None,
    typer.Option(
        help="share of training reviews each trial trains on (default: 1.0)", rich_help_panel=SEARCH
    ),
]
Epochs = Annotated[
    int | None, typer.Option(help="epoch cap for the final model (default: 8)", rich_help_panel=TRAIN)
]
BatchSize = Annotated[int | None, typer.Option(help="batch size (default: 64)", rich_help_panel=TRAIN)]
Patience = Annotated[
    int | None, typer.Option(help="early-stopping patience in epochs (default: 3)", rich_help_panel=TRAIN)
]
Monitor = Annotated[
    str | None,
    typer.Option(
        help="val_accuracy or val_loss: what early stopping and the search optimise", rich_help_panel=TRAIN
    ),
]
Buckets = Annotated[
    int | None,
    typer.Option(
        help="length buckets per epoch; 1 pads every batch to --max-len (default: 4)", rich_help_panel=TRAIN
    ),
]
BigramBuckets = Annotated[
    int | None,
    typer.Option(
        help="hashed bigram ids of the bag-of-bigrams companion, averaged with the RNN when that "
        "wins on validation; 0: the RNN alone (default: 1048576)",
        rich_help_panel=TRAIN,
    ),
]
BigramDim = Annotated[
    int | None,
    typer.Option(help="embedding width of the bag-of-bigrams companion (default: 16)", rich_help_panel=TRAIN),
]
JitCompile = Annotated[
    bool | None,
    typer.Option(
        "--jit-compile/--no-jit-compile",
        help="XLA-compile the model's steps (default: on from 40,000 reviews × epochs)",
        rich_help_panel=TRAIN,
    ),
]
TrackingUri = Annotated[
    str | None,
    typer.Option(
        help="MLflow tracking URI (default: sqlite:///<repo>/mlruns/mlflow.db)", rich_help_panel=TRACK
    ),
]
ExperimentName = Annotated[
    str | None, typer.Option(help="MLflow experiment (default: imdb-sentiment)", rich_help_panel=TRACK)
]
ModelName = Annotated[
    str | None, typer.Option(help="registered model name (default: imdb-sentiment)", rich_help_panel=TRACK)
]
PromotionAlpha = Annotated[
    float | None,
    typer.Option(
        help="promote only if McNemar's exact test on the same test reviews gives p below this "
        "(default: 0.05; 1 turns the test off)",
        rich_help_panel=TRACK,
    ),
]
MinGain = Annotated[
    float | None,
    typer.Option(
        help="promote only if test accuracy rises by at least this much over the champion (default: 0)",
        rich_help_panel=TRACK,
    ),
]

Force = Annotated[
    bool,
    typer.Option(
        "--force",
        help="retrain even if the champion was trained on this data and config",
        rich_help_panel=TRACK,
    ),
]
SCHEDULE = "Schedule"


def _config(**options: Any):
    """Validate the options into the config; exits 2 naming the option at fault."""
    from pipeline.config import ConfigError, build_config

    keys = {
        "data": "data.path",
        "vocab_size": "data.vocab_size",
        "max_len": "data.max_len",
        "limit": "data.limit",
        "cache_dir": "data.cache_dir",
        "trials": "search.trials",
        "timeout": "search.timeout",
        "search_epochs": "search.epochs",
        "study_name": "search.study_name",
        "storage": "search.storage",
        "cells": "search.cells",
        "pruner": "search.pruner",
        "subset": "search.subset",
        "search_max_len": "search.max_len",
        "workers": "search.workers",
        "epochs": "train.epochs",
        "batch_size": "train.batch_size",
        "patience": "train.patience",
        "monitor": "train.monitor",
        "buckets": "train.buckets",
        "jit_compile": "train.jit_compile",
        "bigram_buckets": "train.bigram_buckets",
        "bigram_dim": "train.bigram_dim",
        "tracking_uri": "tracking.tracking_uri",
        "experiment_name": "tracking.experiment_name",
        "model_name": "tracking.model_name",
        "promotion_alpha": "tracking.promotion_alpha",
        "min_gain": "tracking.min_gain",
    }
    if options.get("cells"):
        options["cells"] = tuple(cell.value for cell in options["cells"])
    for name in ("data", "cache_dir"):
        if options.get(name) is not None:
            options[name] = options[name].resolve()
    try:
        return build_config({keys[name]: value for name, value in options.items()})
    except ConfigError as error:
        _fail(str(error), code=2)


def _fail(message: str, code: int = 1) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def _guarded(work):
    """Run ``work()``; a known failure prints one clear line and exits non-zero."""
    from optuna.exceptions import StorageInternalError

    from pipeline.data import DataError
    from pipeline.search import SearchError

    try:
        return work()
    except (DataError, SearchError, StorageInternalError) as error:
        _fail(str(error))


def _print(summary: dict[str, Any]) -> None:
    typer.echo(json.dumps(summary, indent=2, default=str))


@app.command()
def run(
    data: DataPath = None,
    vocab_size: VocabSize = None,
    max_len: MaxLen = None,
    limit: Limit = None,
    cache_dir: CacheDir = None,
    trials: Trials = None,
    timeout: Timeout = None,
    search_epochs: SearchEpochs = None,
    study_name: StudyName = None,
    storage: Storage = None,
    cells: Cells = None,
    pruner: Pruner = None,
    subset: Subset = None,
    search_max_len: SearchMaxLen = None,
    workers: Workers = None,
    epochs: Epochs = None,
    batch_size: BatchSize = None,
    patience: Patience = None,
    monitor: Monitor = None,
    buckets: Buckets = None,
    jit_compile: JitCompile = None,
    bigram_buckets: BigramBuckets = None,
    bigram_dim: BigramDim = None,
    tracking_uri: TrackingUri = None,
    experiment_name: ExperimentName = None,
    model_name: ModelName = None,
    promotion_alpha: PromotionAlpha = None,
    min_gain: MinGain = None,
    force: Force = False,
) -> None:
    """Run the whole pipeline as a Prefect flow: prep, search, final training, evaluation, registry.

    Skips (recording a skipped MLflow run) when the champion was trained on the same data and
    config; --force retrains anyway.
    """
    cfg = _config(**{k: v for k, v in locals().items() if k != "force"})
    from flows.training import training_flow

    _print(_guarded(lambda: training_flow(config=cfg, force=force)))


@app.command()
def prepare(
    data: DataPath = None,
    vocab_size: VocabSize = None,
    max_len: MaxLen = None,
    limit: Limit = None,
    cache_dir: CacheDir = None,
) -> None:
    """Read, split and encode the dataset (or load it from the cache); print sizes and balance."""
    cfg = _config(**locals())
    from pipeline.data import prepare as prepare_data

    prepared = _guarded(lambda: prepare_data(cfg.data))
    _print(
        {**prepared.summary(), "seconds": round(prepared.prep_seconds, 2), "from_cache": prepared.from_cache}
    )


@app.command()
def search(
    data: DataPath = None,
    vocab_size: VocabSize = None,
    max_len: MaxLen = None,
    limit: Limit = None,
    cache_dir: CacheDir = None,
    trials: Trials = None,
    timeout: Timeout = None,
    search_epochs: SearchEpochs = None,
    study_name: StudyName = None,
    storage: Storage = None,
    cells: Cells = None,
    pruner: Pruner = None,
    subset: Subset = None,
    search_max_len: SearchMaxLen = None,
    workers: Workers = None,
    batch_size: BatchSize = None,
    monitor: Monitor = None,
    tracking_uri: TrackingUri = None,
    experiment_name: ExperimentName = None,
) -> None:
    """Run (or resume) the Optuna study only, one MLflow child run per trial; print the best."""
    cfg = _config(**locals())
    from flows.tasks import prepare_data, search_hparams
    from pipeline import tracking

    def work():
        prepared = prepare_data.fn(cfg.data)
        with tracking.pipeline_run(cfg, prepared, run_name=f"search-{cfg.search.study_name}") as parent:
            result = search_hparams.fn(prepared, cfg, parent)
        return {"run_id": parent.run_id, **result.__dict__, "best_hparams": result.best_hparams.model_dump()}

    _print(_guarded(work))


@app.command()
def train(
    preset: Annotated[
        str | None,
        typer.Option(
            help="a notebook preset (see `presets`); sets the model and --vocab-size", rich_help_panel=TRAIN
        ),
    ] = None,
    best_of: Annotated[
        str | None,
        typer.Option(help="train the best configuration of this stored Optuna study", rich_help_panel=TRAIN),
    ] = None,
    register: Annotated[
        bool,
        typer.Option(
            "--register/--no-register",
            help="register the model and promote it if it beats the champion",
            rich_help_panel=TRACK,
        ),
    ] = False,
    data: DataPath = None,
    vocab_size: VocabSize = None,
    max_len: MaxLen = None,
    limit: Limit = None,
    cache_dir: CacheDir = None,
    storage: Storage = None,
    epochs: Epochs = None,
    batch_size: BatchSize = None,
    patience: Patience = None,
    monitor: Monitor = None,
    buckets: Buckets = None,
    jit_compile: JitCompile = None,
    bigram_buckets: BigramBuckets = None,
    bigram_dim: BigramDim = None,
    tracking_uri: TrackingUri = None,
    experiment_name: ExperimentName = None,
    model_name: ModelName = None,
    promotion_alpha: PromotionAlpha = None,
    min_gain: MinGain = None,
) -> None:
    """Train and evaluate one configuration (a preset, or a study's best), log it; optionally register."""
    from pipeline.model import PRESETS

    if (preset is None) == (best_of is None):
        _fail("give exactly one of --preset or --best-of", code=2)
    if preset is not None and preset not in PRESETS:
        _fail(f"invalid option --preset: unknown preset '{preset}' (known: {', '.join(PRESETS)})", code=2)
    options = {k: v for k, v in locals().items() if k not in ("preset", "best_of", "register", "PRESETS")}
    if preset is not None and vocab_size is None:
        options["vocab_size"] = PRESETS[preset].vocab_size
    if preset is not None:
        if bigram_buckets:
            _fail("invalid option --bigram-buckets: a preset is the notebook's model as written", code=2)
        options["bigram_buckets"] = 0
    cfg = _config(**options, study_name=best_of)
    from flows.tasks import (
        blend_bigram_companion,
        evaluate_model,
        log_model,
        prepare_data,
        register_model,
        train_final,
    )
    from pipeline import search as search_stage
    from pipeline import tracking

    def work():
        hparams = PRESETS[preset].hparams if preset else search_stage.best_hparams(cfg)
        prepared = prepare_data.fn(cfg.data)
        with tracking.pipeline_run(cfg, prepared, run_name=f"train-{preset or best_of}") as run:
            model, result = train_final.fn(hparams, prepared, cfg, run)
            model, details = blend_bigram_companion.fn(model, result, prepared, cfg, run)
            evaluation = evaluate_model.fn(model, prepared, result, run)
            summary = {
                "run_id": run.run_id,
                "hparams": hparams.model_dump(),
                **details,
                "test_metrics": evaluation.metrics,
                "epochs": result.epochs,
                "seconds_per_epoch": result.seconds_per_epoch,
            }
            if register:
                model_uri = log_model.fn(run, model, prepared, result)
                decision = register_model.fn(cfg, model_uri, run, evaluation, hparams, prepared, details)
                summary |= {
                    "registered_version": decision.version,
                    "promoted": decision.promoted,
                    "promotion_reason": decision.reason,
                }
        return summary

    _print(_guarded(work))


@app.command()
def presets() -> None:
    """List the notebook presets and their Keras parameter counts."""
    from pipeline.model import PRESETS, build_model

    for name, preset in PRESETS.items():
        count = build_model(preset.hparams, preset.vocab_size).count_params()
        typer.echo(
            f"{name:22s} params={count:>7,d}  vocab_size={preset.vocab_size}  {preset.hparams.model_dump()}"
        )


@app.command()
def serve(
    name: Annotated[
        str, typer.Option(help="deployment name", rich_help_panel=SCHEDULE)
    ] = "scheduled-retraining",
    cron: Annotated[
        str, typer.Option(help="cron schedule (default: Mondays 03:00)", rich_help_panel=SCHEDULE)
    ] = "0 3 * * 1",
    timezone: Annotated[str, typer.Option(help="IANA time zone of --cron", rich_help_panel=SCHEDULE)] = "UTC",
    mlflow_ui_url: Annotated[
        str | None,
        typer.Option(help="MLflow UI address for the summary's run link", rich_help_panel=SCHEDULE),
    ] = None,
    data: DataPath = None,
    vocab_size: VocabSize = None,
    max_len: MaxLen = None,
    limit: Limit = None,
    cache_dir: CacheDir = None,
    trials: Trials = None,
    timeout: Timeout = None,
    search_epochs: SearchEpochs = None,
    study_name: StudyName = None,
    storage: Storage = None,
    cells: Cells = None,
    pruner: Pruner = None,
    subset: Subset = None,
    search_max_len: SearchMaxLen = None,
    workers: Workers = None,
    epochs: Epochs = None,
    batch_size: BatchSize = None,
    patience: Patience = None,
    monitor: Monitor = None,
    buckets: Buckets = None,
    jit_compile: JitCompile = None,
    bigram_buckets: BigramBuckets = None,
    bigram_dim: BigramDim = None,
    tracking_uri: TrackingUri = None,
    experiment_name: ExperimentName = None,
    model_name: ModelName = None,
    promotion_alpha: PromotionAlpha = None,
    min_gain: MinGain = None,
) -> None:
    """Serve the training flow as a deployment on a cron schedule (needs a Prefect server).

    The options become the deployment's parameters; runs execute in this process, one at a time.
    Trigger one now: prefect deployment run 'imdb-sentiment-training/scheduled-retraining'.
    """
    schedule = {"name": name, "cron": cron, "timezone": timezone, "mlflow_ui_url": mlflow_ui_url}
    cfg = _config(**{k: v for k, v in locals().items() if k not in ("schedule", *schedule)})
    from flows.deploy import retraining_deployment, serve_retraining

    serve_retraining(retraining_deployment(cfg, **schedule))


REGISTRY = "Registry"


def _registry_guarded(work):
    """Run ``work()``; bad input, registry and store errors print one line and exit 1."""
    from mlflow.exceptions import MlflowException

    from pipeline.registry import RegistryError
    from pipeline.serve import InputError

    try:
        return work()
    except (InputError, RegistryError) as error:
        _fail(str(error))
    except MlflowException as error:
        _fail(error.message)


@app.command()
def predict(
    input: Annotated[
        str, typer.Option("--input", help="CSV, JSONL or Parquet file with a text column; '-': stdin lines")
    ] = "-",
    output: Annotated[
        Path | None,
        typer.Option("--output", help="CSV, JSONL or Parquet file (by extension); default: CSV on stdout"),
    ] = None,
    model: Annotated[
        str | None, typer.Option(help="model URI (default: models:/<model-name>@champion)")
    ] = None,
    text_column: Annotated[str, typer.Option(help="column holding the review text")] = "text",
    batch_size: Annotated[int, typer.Option(min=1, help="reviews scored at a time")] = 256,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="progress bar on stderr")] = True,
    tracking_uri: TrackingUri = None,
    model_name: ModelName = None,
) -> None:
    """Score reviews with a registered model: each record plus probability and label.

    A bad record (not UTF-8, no text column, a missing or non-string review) exits 1 naming its row.
    """
    cfg = _config(tracking_uri=tracking_uri, model_name=model_name)
    from pipeline.predict import predict_file
    from pipeline.serve import load_scorer

    uri = model or f"models:/{cfg.tracking.model_name}@champion"

    def work() -> int:
        score = load_scorer(uri, cfg.tracking.tracking_uri)
        source = None if input == "-" else Path(input)
        return predict_file(
            score,
            source,
            output,
            text_column=text_column,
            batch_size=batch_size,
            stdin=sys.stdin.buffer,
            stdout=sys.stdout,
            progress=progress,
        )

    rows = _registry_guarded(work)
    typer.echo(f"scored {rows} reviews with {uri}", err=True)


Reason = Annotated[str, typer.Option(help="why: recorded as a tag on the version", rich_help_panel=REGISTRY)]


@app.command()
def promote(
    version: Annotated[str, typer.Argument(help="the model version to make champion")],
    reason: Reason,
    tracking_uri: TrackingUri = None,
    model_name: ModelName = None,
) -> None:
    """Move the champion alias to VERSION by hand, recording the reason on it."""
    cfg = _config(tracking_uri=tracking_uri, model_name=model_name)
    from pipeline import registry

    previous = _registry_guarded(lambda: registry.promote(cfg.tracking, version, reason))
    _print({"model": cfg.tracking.model_name, "champion": version, "previous_champion": previous})


@app.command()
def rollback(
    reason: Reason,
    version: Annotated[
        str | None, typer.Option(help="version to restore (default: the one the champion replaced)")
    ] = None,
    tracking_uri: TrackingUri = None,
    model_name: ModelName = None,
) -> None:
    """Move the champion alias back to the previous champion (or --version), recording the reason."""
    cfg = _config(tracking_uri=tracking_uri, model_name=model_name)
    from pipeline import registry

    old, new = _registry_guarded(lambda: registry.rollback(cfg.tracking, reason, version))
    _print({"model": cfg.tracking.model_name, "champion": new, "rolled_back": old})


def main() -> None:
    app()


if __name__ == "__main__":
    sys.exit(main())
