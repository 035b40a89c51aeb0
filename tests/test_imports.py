"""The shape of the house: imports run one way, and each kind of knowledge lives in one module.

Walks every ``import`` in ``pipeline/`` and ``flows/`` (function-level imports included: a late
import is still a dependency) without importing anything.
"""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("pipeline", "flows")


def _modules() -> dict[str, Path]:
    return {
        f"{package}.{path.stem}": path
        for package in PACKAGES
        for path in sorted((ROOT / package).glob("*.py"))
        if path.stem != "__init__"
    }


def _imports(path: Path) -> set[str]:
    """Every module name ``path`` imports, as written (``pipeline.config``, ``mlflow.tracking``)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            if node.module in PACKAGES:  # ``from pipeline import registry``
                names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


GRAPH = {module: _imports(path) for module, path in _modules().items()}


def _project_graph() -> dict[str, set[str]]:
    return {module: {name for name in names if name in GRAPH} for module, names in GRAPH.items()}


def test_there_is_no_import_cycle():
    try:
        tuple(graphlib.TopologicalSorter(_project_graph()).static_order())
    except graphlib.CycleError as error:
        pytest.fail(f"import cycle: {' → '.join(error.args[1])}")


def test_the_cycle_check_sees_a_cycle():
    graph = _project_graph() | {
        "pipeline.tracking": _project_graph()["pipeline.tracking"] | {"pipeline.stages"}
    }
    with pytest.raises(graphlib.CycleError):
        tuple(graphlib.TopologicalSorter(graph).static_order())


@pytest.mark.parametrize("module", [m for m in GRAPH if m.startswith("pipeline.")])
def test_the_library_never_imports_an_orchestrator_or_the_cli(module):
    banned = {name for name in GRAPH[module] if name.split(".")[0] in ("flows", "prefect", "typer", "kfp")}
    assert not banned, f"{module} imports {banned}"


def test_tracking_knows_mlflow_runs_only():
    project = {name for name in GRAPH["pipeline.tracking"] if name.split(".")[0] in PACKAGES}
    assert project <= {"pipeline.stores", "pipeline.liveness", "pipeline.secrets"}, f"tracking imports {project}"
    third_party = {name.split(".")[0] for name in GRAPH["pipeline.tracking"]}
    assert not third_party & {"keras", "tensorflow", "optuna", "sklearn"}


def test_only_the_store_layer_and_its_clients_import_mlflow():
    users = {module for module, names in GRAPH.items() if any(n.split(".")[0] == "mlflow" for n in names)}
    assert users <= {
        "pipeline.stores",
        "pipeline.tracking",
        "pipeline.registry",
        "pipeline.serve",
        "flows.options",
    }


def test_only_the_store_module_knows_uri_schemes():
    for module, path in _modules().items():
        if module != "pipeline.stores":
            assert "sqlite" not in path.read_text().lower(), f"{module} mentions sqlite"
