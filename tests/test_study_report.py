"""study_report: Optuna's plots and the trials table of a real (in-memory) study with pruned trials."""

from __future__ import annotations

import optuna
import pytest

from pipeline import study_report


@pytest.fixture(scope="module")
def study() -> optuna.Study:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        study_name="plots",
        direction="maximize",
        sampler=optuna.samplers.TPESampler(seed=0),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0),
    )

    def objective(trial: optuna.Trial) -> float:
        rate = trial.suggest_float("learning_rate", 1e-3, 1e-2, log=True)
        units = trial.suggest_categorical("units", [16, 32])
        for epoch in range(3):
            value = rate * 10 + epoch * 0.01 + units / 1000
            trial.report(value, epoch)
            if trial.should_prune():
                raise optuna.TrialPruned()
        return value

    study.optimize(objective, n_trials=8)
    return study


def test_the_trials_table_has_a_row_per_trial_and_counts_a_pruned_trials_epochs(study):
    table = study_report.trials_table(study)

    assert len(table) == len(study.trials)
    assert {"trial", "state", "value", "epochs", "seconds", "param_learning_rate", "param_units"} <= set(table)
    pruned = table[table["state"] == "pruned"]
    assert len(pruned) and (pruned["epochs"] < 3).all() and pruned["value"].notna().all()
    assert (table.loc[table["state"] == "complete", "epochs"] == 3).all()


def test_every_study_plot_is_drawn_and_the_learning_rate_axis_is_logarithmic(study):
    interactive = study_report.interactive_plots(study, "val_accuracy")
    static = study_report.static_plots(study, "val_accuracy")

    names = {"optimization_history", "param_importances", "parallel_coordinate", "slice", "intermediate_values"}
    assert set(interactive) == set(static) == names
    assert "study 'plots', val_accuracy" in interactive["slice"].layout.title.text
    slice_axes = [axis for key, axis in interactive["slice"].layout.to_plotly_json().items() if key.startswith("xaxis")]
    assert any(axis.get("type") == "log" for axis in slice_axes)
    html = study_report.html_page(interactive, "Study plots")
    assert html.count("<section>") == len(names) and html.count("* plotly.js v") == 1  # embedded once



def test_importances_from_few_complete_trials_say_so_on_the_plot(study):
    complete = len([t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE])
    assert complete < 10  # the fixture's study is small: the caveat must show
    interactive = study_report.interactive_plots(study, "val_accuracy")
    static = study_report.static_plots(study, "val_accuracy")
    caveat = f"(from {complete} complete trials: rough below 10)"
    assert caveat in interactive["param_importances"].layout.title.text
    assert caveat in static["param_importances"]._suptitle.get_text()
    assert "rough" not in interactive["slice"].layout.title.text
