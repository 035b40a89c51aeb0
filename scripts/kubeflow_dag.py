"""Draw the compiled Kubeflow pipeline's DAG as Graphviz DOT, read from the compiled YAML itself.

A screenshot of the KFP UI needs a cluster; this draws what the UI would: the tasks, the
ParallelFor, what flows along each edge (artifacts and parameters), each task's resources and
retries, and which tasks get the stores from the secret.

    sentiment kubeflow compile -o /tmp/imdb_sentiment.yaml
    python scripts/kubeflow_dag.py /tmp/imdb_sentiment.yaml | dot -Tsvg -o docs/kubeflow_dag.svg
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml


def _upstream(task: dict) -> list[tuple[str, str]]:
    """(producer task, the input it feeds) for each input of a task that another task produces."""
    edges = []
    for kind in ("artifacts", "parameters"):
        for name, value in task.get("inputs", {}).get(kind, {}).items():
            for key in ("taskOutputArtifact", "taskOutputParameter"):
                if key in value:
                    edges.append((value[key]["producerTask"], _input_name(name, value[key]["producerTask"])))
    return edges


def _input_name(name: str, producer: str) -> str:
    """``study``, or for a loop's inputs (``pipelinechannel--create-study-Output``) the producer's output."""
    name = name.removeprefix("pipelinechannel--").removeprefix(f"{producer}-")
    return {"Output": "study" if producer == "create-study" else "result"}.get(name, name)


def _label(name: str, executor: dict, retries: int | None, secret: bool) -> str:
    resources = executor["container"].get("resources", {})
    lines = [f"<b>{name}</b>"]
    if resources:
        cpu = f"cpu {resources.get('cpuRequest', '?'):g}–{resources.get('cpuLimit', '?'):g}"
        gib = 2**30 / 1e9  # KFP writes memory in GB
        memory = f"memory {resources.get('memoryRequest', 0) / gib:g}–{resources.get('memoryLimit', 0) / gib:g} GiB"
        lines.append(f"<font point-size='10'>{cpu}, {memory}</font>")
    if retries:
        lines.append(f"<font point-size='10'>retries: {retries}</font>")
    if secret:
        lines.append("<font point-size='10'>stores from secret</font>")
    return "<" + "<br/>".join(lines) + ">"


def to_dot(compiled: Path) -> str:
    spec, *platform = yaml.safe_load_all(compiled.read_text())
    executors = spec["deploymentSpec"]["executors"]
    kubernetes = platform[0]["platforms"]["kubernetes"]["deploymentSpec"]["executors"] if platform else {}
    components = spec["components"]
    out = [
        "digraph kfp {",
        '  rankdir=LR; node [shape=box, style="rounded,filled", fillcolor="#eef3fb", fontname="Helvetica"];',
        '  edge [fontname="Helvetica", fontsize=10, color="#555555"];',
        f'  label="{spec["pipelineInfo"]["name"]}: {len(spec["root"]["inputDefinitions"]["parameters"])} '
        'parameters (the config fields)"; labelloc=t; fontname="Helvetica";',
    ]
    loops: dict[str, str] = {}  # loop task → its inner task

    def node(name: str, task: dict, indent: str) -> None:
        component = components[task["componentRef"]["name"]]
        executor_name = component["executorLabel"]
        retries = task.get("retryPolicy", {}).get("maxRetryCount")
        label = _label(name, executors[executor_name], retries, executor_name in kubernetes)
        out.append(f'{indent}"{name}" [label={label}];')

    root = spec["root"]["dag"]["tasks"]
    for name, task in sorted(root.items()):
        component = components[task["componentRef"]["name"]]
        if "dag" not in component:
            node(name, task, "  ")
            continue
        policy = task.get("iteratorPolicy", {}).get("parallelismLimit")
        items = json.loads(task["parameterIterator"]["items"]["raw"])
        out.append(f'  subgraph "cluster_{name}" {{')
        out.append(f'    label="ParallelFor: {len(items)} workers, parallelism {policy}"; style=dashed;')
        for inner, inner_task in sorted(component["dag"]["tasks"].items()):
            node(inner, inner_task, "    ")
            loops[name] = inner
        out.append("  }")
    for name, task in sorted(root.items()):
        target = loops.get(name, name)
        for producer, what in sorted(set(_upstream(task))):
            source = loops.get(producer, producer)
            out.append(f'  "{source}" -> "{target}" [label="{what}"];')
    out.append("}")
    return "\n".join(out) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("compiled", type=Path, help="the YAML `sentiment kubeflow compile` wrote")
    sys.stdout.write(to_dot(parser.parse_args().compiled))


if __name__ == "__main__":
    main()
