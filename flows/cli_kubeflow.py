"""``sentiment kubeflow``: the pipeline compiled for Kubeflow Pipelines, submitted, or run locally.

Each command is a few lines around ``flows/kubeflow.py``, imported on use: KFP is an optional
extra (``pip install '.[kubeflow]'``), and ``--help`` must answer without it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from flows.options import TRAINING, Json, config_options, fail, print_result

kubeflow_app = typer.Typer(
    no_args_is_help=True,
    help="The same pipeline on Kubeflow Pipelines (needs the extra: pip install '.\\[kubeflow]').",
)

Image = Annotated[
    str | None,
    typer.Option(help="the project's image every component runs in (`make image`; default: imdb-sentiment:0.1.0)"),
]
Workers = Annotated[int, typer.Option(min=1, max=8, help="search pods joining the study at once (search.workers)")]
Secret = Annotated[
    str | None,
    typer.Option(
        help="Kubernetes secret holding the stores, keys tracking-uri and study-storage "
        "(default: imdb-sentiment-stores)"
    ),
]


def _kubeflow():
    """flows.kubeflow, or one line saying how to install it."""
    try:
        from flows import kubeflow
    except ImportError as error:
        fail(f"Kubeflow support is not installed ({error.name}): pip install '.[kubeflow]'")
    return kubeflow


@kubeflow_app.command("compile")
def kubeflow_compile(
    output: Annotated[Path, typer.Option("--output", "-o", help="where to write the pipeline YAML")] = Path(
        "imdb_sentiment.yaml"
    ),
    image: Image = None,
    workers: Workers = 2,
    secret: Secret = None,
) -> None:
    """Compile the pipeline to YAML (upload it in the KFP UI): one parameter per config field."""
    kubeflow = _kubeflow()
    image, secret = image or kubeflow.DEFAULT_IMAGE, secret or kubeflow.DEFAULT_SECRET
    path = kubeflow.compile_pipeline(output, image, workers, secret)
    typer.echo(f"wrote {path} ({workers} search workers, image {image}, stores from secret {secret})")


@kubeflow_app.command("submit")
@config_options(*TRAINING)
def kubeflow_submit(
    cfg,
    host: Annotated[str, typer.Option(help="the KFP API, e.g. https://kfp.example")],
    experiment: Annotated[str, typer.Option(help="KFP experiment to run in")] = "imdb-sentiment",
    run_name: Annotated[str | None, typer.Option(help="KFP run name (default: KFP's)")] = None,
    image: Image = None,
    secret: Secret = None,
) -> None:
    """Compile and start a KFP run with these settings, --workers search pods (the stores come
    from the secret, never from options); prints the run's URL."""
    kubeflow = _kubeflow()
    image, secret = image or kubeflow.DEFAULT_IMAGE, secret or kubeflow.DEFAULT_SECRET
    typer.echo(kubeflow.submit(cfg, host, experiment, image, secret, run_name))


@kubeflow_app.command("run-local")
@config_options(*TRAINING)
def kubeflow_run_local(
    cfg,
    image: Annotated[
        str | None,
        typer.Option(
            help="run every task in a container of this image (KFP's DockerRunner, host network; "
            "needs a tracking server and a database): default, a subprocess of this Python each"
        ),
    ] = None,
    as_json: Json = False,
) -> None:
    """Run the compiled pipeline on this machine with KFP's local runner (--workers search
    workers, no cluster), against the stores these settings name."""
    summary = _kubeflow().run_local(cfg, image=image)
    if as_json:
        print_result(summary, True)
    else:
        from pipeline.stages import RunSummary

        print_result(RunSummary(**summary), False)
