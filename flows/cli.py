"""The ``sentiment`` command: each command a few lines around the flow or library function it runs.

    sentiment run                                         # the whole pipeline on the shipped sample
    sentiment run --config configs/full.yaml --data ../shared/data/aclImdb_v1.tar.gz
    sentiment config show --config configs/full.yaml      # the resolved config, as YAML

Every config field is an option, generated from the config model (``flows/options.py``): option >
``SENTIMENT_*`` variable > ``--config`` file > default. Heavy imports (TensorFlow, MLflow,
Prefect) happen inside commands so ``--help`` answers at once.
"""

from __future__ import annotations

import json
import os
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from flows.cli_kubeflow import kubeflow_app
from flows.options import TRAINING, Json, config_options, fail, print_result
from pipeline.quiet import quiet_tensorflow_startup

# Before Prefect is imported: its temporary local API can take >20 s to start on 2 busy cores.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
quiet_tensorflow_startup()  # TensorFlow's C++ notices at import: back with --verbose
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")  # no network here

app = typer.Typer(
    add_completion=False, no_args_is_help=True, help="IMDB sentiment: tune, train, evaluate, register."
)
config_app = typer.Typer(no_args_is_help=True, help="The resolved configuration.")
app.add_typer(config_app, name="config")
app.add_typer(kubeflow_app, name="kubeflow")
study_app = typer.Typer(no_args_is_help=True, help="An Optuna study that workers on many machines join.")
app.add_typer(study_app, name="study")
Reason = Annotated[str, typer.Option(help="why: recorded as a tag on the version")]
Force = Annotated[bool, typer.Option(help="retrain even if the champion was trained on this data and config")]
Preset = Annotated[
    str | None, typer.Option(help="a notebook preset (see `presets`); sets the model, --vocab-size")
]
BestOf = Annotated[str | None, typer.Option(help="the best configuration of this stored Optuna study")]
Register = Annotated[bool, typer.Option(help="register it; promote it if it beats the champion")]
ModelArg = Annotated[str | None, typer.Argument(help="model URI (default: models:/<model-name>@champion)")]
ModelOpt = Annotated[str | None, typer.Option(help="model URI (default: models:/<model-name>@champion)")]
Input = Annotated[str, typer.Option(help="CSV, JSONL or Parquet file with a text column; '-': stdin lines")]
Output = Annotated[
    Path | None, typer.Option(help="CSV, JSONL or Parquet file (by extension); default: CSV on stdout")
]
TextColumn = Annotated[str, typer.Option(help="column holding the review text")]
BatchSize = Annotated[int, typer.Option(min=1, help="reviews scored at a time")]
ShowProgress = Annotated[bool, typer.Option(help="progress bar on stderr")]
class Where(StrEnum):
    local = "local"
    pool = "pool"


Dispatch = Annotated[
    Where,
    typer.Option(
        help="where the search runs: this machine (--workers processes), or --workers runs of the "
        "search-worker deployment on its Prefect work pool, all joining one study (docs/scale-out.md)",
    ),
]
Restore = Annotated[
    str | None, typer.Option(help="version to restore (default: the one the champion replaced)")
]


def champion_uri(cfg) -> str:
    return f"models:/{cfg.tracking.model_name}@champion"


@app.command()
@config_options(*TRAINING)
def run(cfg, force: Force = False, dispatch: Dispatch = Where.local, as_json: Json = False) -> None:
    """The whole pipeline as a Prefect flow: prep, search, final training, evaluation, registry.

    Skips (recording a skipped MLflow run) when the champion was trained on the same data and
    config; --force retrains anyway.
    """
    from pipeline.reaper import open_stores

    stores = open_stores(cfg)  # a missing dataset or a dead store: one line in seconds, before heavy imports
    if dispatch is Where.pool and not os.environ.get("PREFECT_API_URL"):
        fail("--dispatch pool needs the Prefect server the work pool's workers poll: set PREFECT_API_URL", code=2)
    from flows.prefect_api import prefect_api
    from flows.training import check_study, training_flow

    check_study(cfg, stores.study_storage)  # another search space: refused before Prefect starts
    with prefect_api():
        print_result(training_flow(config=cfg, force=force, dispatch=dispatch.value), as_json)


@app.command()
@config_options("data")
def prepare(cfg) -> None:
    """Read, split and encode the dataset (or load it from the cache); print sizes and balance."""
    from pipeline.data import prepare as prepare_data

    prepared = prepare_data(cfg.data)
    info = {"seconds": round(prepared.prep_seconds, 2), "from_cache": prepared.from_cache}
    print_result(prepared.summary() | info, True)


@app.command()
@config_options(*TRAINING)
def search(cfg) -> None:
    """Run (or resume) the Optuna study only, one MLflow child run per trial; print the best."""
    from pipeline.reaper import open_stores

    open_stores(cfg)
    from flows.prefect_api import prefect_api
    from flows.training import search_flow

    with prefect_api():
        result = search_flow(config=cfg)
    print_result({**result.__dict__, "best_hparams": result.best_hparams.model_dump()}, True)


@study_app.command("create")
@config_options(*TRAINING)
def study_create(cfg) -> None:
    """Create the study workers join (once): its dataset digest, search space and study-wide
    target (--trials) in the study storage, and the MLflow run its trials nest under. Running it
    again on an existing study checks it and changes nothing."""
    from pipeline.reaper import open_stores

    stores = open_stores(cfg)
    from pipeline.data import prepare as prepare_data
    from pipeline.stages import create_study

    print_result(create_study(stores, cfg, prepare_data(cfg.data)).__dict__, True)


@app.command()
@config_options(*TRAINING)
def worker(cfg) -> None:
    """Run trials of an existing study (see `study create`) until its target is met; start any
    number, on any machine, at any time. Refuses a study made for other data or another space."""
    from pipeline.reaper import open_stores

    stores = open_stores(cfg)
    from pipeline.data import prepare as prepare_data
    from pipeline.stages import search_worker

    print_result(search_worker(stores, cfg, prepare_data(cfg.data)).__dict__, True)


@app.command()
@config_options(*TRAINING, hparams=True)
def train(
    cfg,
    hparams_overrides: dict[str, Any],
    preset: Preset = None,
    best_of: BestOf = None,
    register: Register = False,
    as_json: Json = False,
) -> None:
    """Train and evaluate one configuration (a preset or a study's best, Model options on top) and
    log it; --register registers it."""
    from flows.prefect_api import prefect_api
    from flows.training import train_flow
    from pipeline.reaper import open_stores
    from pipeline.stages import chosen_hparams

    cfg, hparams = chosen_hparams(cfg, preset, best_of, hparams_overrides)
    open_stores(cfg, study=False)
    with prefect_api():
        print_result(train_flow(cfg, hparams, f"train-{preset or best_of}", register, best_of), as_json)


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
@config_options(*TRAINING)
def schedule(
    cfg,
    name: Annotated[str, typer.Option(help="deployment name")] = "scheduled-retraining",
    cron: Annotated[str, typer.Option(help="cron schedule (default: Mondays 03:00)")] = "0 3 * * 1",
    timezone: Annotated[str, typer.Option(help="IANA time zone of --cron")] = "UTC",
    mlflow_ui_url: Annotated[str | None, typer.Option(help="MLflow UI address for run links")] = None,
) -> None:
    """Run the training flow as a deployment on a cron schedule (needs a Prefect server).

    The options become the deployment's parameters; runs execute in this process, one at a time.
    Trigger one now: prefect deployment run 'imdb-sentiment-training/scheduled-retraining'.
    """
    from flows.deploy import retraining_deployment, serve_retraining
    from pipeline.stores import password_environment

    # The deployment's parameters hold store URIs without their passwords: its flow runs, here or
    # in processes started from here, take them from this environment.
    os.environ.update(password_environment(cfg))
    serve_retraining(retraining_deployment(cfg, name, cron, timezone, mlflow_ui_url))


@app.command()
@config_options("tracking")
def ui(cfg, port: Annotated[int, typer.Option(min=0, help="port (0: a free one)")] = 0) -> None:
    """The MLflow UI on the project's store, on 127.0.0.1 (prints the URL; Ctrl-C stops it)."""
    from pipeline import ui as mlflow_ui
    from pipeline.reaper import resolved_stores

    stores = resolved_stores(cfg)
    if not stores.is_local:  # a tracking server serves its own UI
        typer.echo(stores.ui_url())
        return
    try:
        mlflow_ui.serve_until_stopped(stores, cfg.tracking.experiment_name, typer.echo, port or None)
    except mlflow_ui.UiError as error:
        fail(str(error))


@app.command()
@config_options("serve", "tracking")
def serve(cfg, model: ModelArg = None) -> None:
    """Serve a registered model over HTTP (MLflow's scoring app: POST /invocations), within limits."""
    from pipeline import http_server, predict, reaper

    uri, options = model or champion_uri(cfg), cfg.serve
    path = predict.model_folder(reaper.resolved_stores(cfg), uri)  # a dead store or a missing model: one line
    typer.echo(f"serving {uri} on http://{options.host}:{options.port}", err=True)
    http_server.serve_model(path, options)


@app.command()
@config_options("tracking")
def predict(
    cfg,
    input: Input = "-",
    output: Output = None,
    model: ModelOpt = None,
    text_column: TextColumn = "text",
    batch_size: BatchSize = 256,
    progress: ShowProgress = True,
) -> None:
    """Score reviews with a registered model: each record plus probability and label. A bad record
    (not UTF-8, no text column, a missing or non-string review) exits 1 naming its row."""
    from pipeline.predict import predict_file, scorer_for
    from pipeline.reaper import resolved_stores

    uri, source = model or champion_uri(cfg), None if input == "-" else Path(input)
    options = {"text_column": text_column, "batch_size": batch_size, "progress": progress}
    scored = predict_file(lambda: scorer_for(resolved_stores(cfg), uri), source, output, **options)
    typer.echo(f"scored {scored} reviews with {uri}", err=True)


@app.command()
@config_options("tracking")
def promote(
    cfg,
    reason: Reason,
    version: Annotated[str, typer.Argument(help="the version to make champion")],
) -> None:
    """Move the champion alias to VERSION by hand, recording the reason on it."""
    from pipeline import registry
    from pipeline.stores import resolve

    previous = registry.promote(resolve(cfg), cfg.tracking, version, reason)
    print_result({"model": cfg.tracking.model_name, "champion": version, "previous_champion": previous}, True)


@app.command()
@config_options("tracking")
def rollback(cfg, reason: Reason, version: Restore = None) -> None:
    """Move the champion alias back to the previous champion (or --version), recording the reason."""
    from pipeline import registry
    from pipeline.stores import resolve

    old, new = registry.rollback(resolve(cfg), cfg.tracking, reason, version)
    print_result({"model": cfg.tracking.model_name, "champion": new, "rolled_back": old}, True)


@config_app.command("show")
@config_options(*TRAINING, "serve")
def config_show(cfg, as_json: Json = False) -> None:
    """Print the resolved config (options > SENTIMENT_* variables > --config file > defaults);
    the YAML form is itself a valid --config file."""
    import yaml

    tree = cfg.model_dump(mode="json")
    typer.echo(json.dumps(tree, indent=2) if as_json else yaml.safe_dump(tree, sort_keys=False))


if __name__ == "__main__":
    app()
