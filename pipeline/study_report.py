"""The study at a glance: Optuna's plots of a finished search and a table of all its trials.

Pure functions of an ``optuna.Study``: figures (plotly for the interactive HTML the MLflow UI
previews, matplotlib for PNGs) and a DataFrame, one row per trial. ``stages`` logs them on the
parent run. A plot Optuna refuses to draw for this study (it raises) is left out, with the reason
logged.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import optuna
import pandas as pd
from optuna import visualization
from optuna.trial import TrialState

log = logging.getLogger(__name__)

# name → (plotly function, matplotlib function): what each plot shows is in Optuna's docs.
_PLOTS: dict[str, tuple[Callable[..., Any], Callable[..., Any]]] = {
    "optimization_history": (visualization.plot_optimization_history, visualization.matplotlib.plot_optimization_history),
    "param_importances": (visualization.plot_param_importances, visualization.matplotlib.plot_param_importances),
    "parallel_coordinate": (visualization.plot_parallel_coordinate, visualization.matplotlib.plot_parallel_coordinate),
    "slice": (visualization.plot_slice, visualization.matplotlib.plot_slice),
    "intermediate_values": (visualization.plot_intermediate_values, visualization.matplotlib.plot_intermediate_values),
}


def load(study_name: str, storage: str) -> optuna.Study:
    return optuna.load_study(study_name=study_name, storage=storage)


def interactive_plots(study: optuna.Study, metric: str) -> dict[str, Any]:
    """name → plotly Figure, titled with the study and the metric; learning rate on a log axis
    (Optuna draws a log-sampled parameter on a log axis itself)."""
    figures = {}
    for name, (plot, _) in _PLOTS.items():
        figure = _draw(plot, study, name)
        if figure is not None:
            figure.update_layout(title=f"{_title(name, study)}: study '{study.study_name}', {metric} (validation, RNN trials)")
            figures[name] = figure
    return figures


def html_page(figures: dict[str, Any], title: str) -> str:
    """The interactive figures on one self-contained HTML page: plotly.js is embedded once (about
    3.5 MB), since the MLflow UI previews an HTML artifact in a sandbox with no page beside it,
    and the UI may be opened where the internet (a CDN) is not."""
    parts = [
        figure.to_html(full_html=False, include_plotlyjs=index == 0)
        for index, figure in enumerate(figures.values())
    ]
    body = "\n".join(f"<section>{part}</section>" for part in parts)
    return f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title></head><body>{body}</body></html>"


def static_plots(study: optuna.Study, metric: str) -> dict[str, Any]:
    """name → matplotlib Figure of the same plots, for the UI's image preview."""
    figures = {}
    for name, (_, plot) in _PLOTS.items():
        axes = _draw(plot, study, name)
        if axes is not None:
            figure = _figure_of(axes)
            figure.suptitle(f"{_title(name, study)}: study '{study.study_name}', {metric} (validation)")
            figure.set_size_inches(10, 5)
            figures[name] = figure
    return figures


def _draw(plot: Callable[..., Any], study: optuna.Study, name: str) -> Any:
    with warnings.catch_warnings():  # the matplotlib backend is "experimental" in Optuna 5
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        try:
            return plot(study)
        except (ValueError, RuntimeError) as error:  # too few trials for this plot
            log.info("study plot %s left out: %s", name, error)
            return None


def _figure_of(axes: Any):
    first = axes.flat[0] if hasattr(axes, "flat") else axes
    return first.get_figure()


def _title(name: str, study: optuna.Study | None = None) -> str:
    title = name.replace("_", " ").capitalize()
    if name == "param_importances" and study is not None:
        # Importances fitted on a handful of trials are mostly noise: say on how many.
        complete = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
        if complete < _FEW_FOR_IMPORTANCES:
            title += f" (from {complete} complete trials: rough below {_FEW_FOR_IMPORTANCES})"
    return title


_FEW_FOR_IMPORTANCES = 10


def trials_table(study: optuna.Study, runs: Mapping[int, tuple[str, str]] | None = None) -> pd.DataFrame:
    """One row per trial: number, its MLflow run's name and id (``runs``: trial number → both),
    state, value, epochs (the values it reported, so a pruned trial counts the epoch it was stopped
    on), seconds, then its parameters as ``param_<name>`` (MLflow's table viewer reads a dot in a
    column name as a path into the row: ``param.units`` showed blank)."""
    runs = runs or {}
    rows = []
    for trial in study.get_trials(deepcopy=False):
        seconds = (
            (trial.datetime_complete - trial.datetime_start).total_seconds()
            if trial.datetime_complete and trial.datetime_start
            else None
        )
        run_id, run_name = runs.get(trial.number, ("", ""))
        row = {
            "trial": trial.number,
            "run_name": run_name,
            "run_id": run_id,
            "state": _STATE.get(trial.state, trial.state.name.lower()),
            "value": None if trial.value is None else float(f"{trial.value:.6g}"),  # no float32 noise
            "epochs": len(trial.intermediate_values),
            "seconds": round(seconds, 1) if seconds is not None else None,
        }
        params = {f"param_{key}": float(f"{v:.6g}") if isinstance(v, float) else v for key, v in trial.params.items()}
        rows.append(row | params)
    return pd.DataFrame(rows)


_STATE = {TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned", TrialState.FAIL: "failed"}
