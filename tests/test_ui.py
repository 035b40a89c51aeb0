"""The MLflow UI as a person sees it: a tiny real pipeline run, `mlflow ui` on its store, and
Debian's headless Chromium driven by Selenium (chromium-driver; nothing is downloaded).

Without Chromium the test is skipped, except under ``CI=true``, where it fails: CI installs it
(``.ci/run``, ``make test``). Screenshots land in the test's tmp dir.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from pipeline.config import SAMPLE_ARCHIVE, build_config

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
MODEL = "ui-test-model"


@dataclass(frozen=True)
class Store:
    cfg: object
    experiment_id: str
    parent_run_id: str
    best_trial_run_id: str
    version: str


def make_store(root: Path, limit: int = 200, trials: int = 6, study: str = "ui-test", promote: bool = True) -> Store:
    """A small real pipeline run (search with pruning, training, evaluation, registration) through
    the same stages the flows run, without Prefect around them."""
    from pipeline import stages
    from pipeline.data import prepare
    from pipeline.stores import resolve

    cfg = build_config(
        {
            "data.path": SAMPLE_ARCHIVE,
            "data.cache_dir": root / "cache",
            "data.limit": limit,
            "data.max_len": 120,
            "data.vocab_size": 1500,
            "search.trials": trials,  # 6: enough for the median pruner to stop one (it did in every run seen)
            "search.epochs": 2,
            "search.cells": ("gru",),
            "search.study_name": study,
            "train.epochs": 2,
            "tracking.tracking_uri": f"sqlite:///{root / 'mlruns' / 'mlflow.db'}",
            "tracking.experiment_name": "ui-test",
            "tracking.model_name": MODEL,
        }
    )
    stores = resolve(cfg)
    data = prepare(cfg.data)
    with stages.pipeline_run(stores, cfg, data) as run:
        searched = stages.search_hparams(data, cfg, run)
        final = stages.train_final(searched.best_hparams, data, cfg, run)
        evaluation = stages.evaluate_model(final, data, run)
        model_uri = stages.log_model(final, data, run)
        decision = stages.register_model(cfg, model_uri, final, evaluation, data, run)
        stages.summarize(cfg, run, final, evaluation, searched=searched, model_uri=model_uri, decision=decision)
    if promote and not decision.promoted:  # a tiny model may rightly fail the gate; the page needs a champion
        from pipeline import registry

        registry.promote(stores, cfg.tracking, decision.version, "UI test: the page shows @champion")
    client = stores.mlflow_client()
    parent = client.get_run(run.run_id)
    return Store(cfg, run.experiment_id, run.run_id, parent.data.tags["best_trial_run_id"], decision.version)


def _chromium_or_skip() -> None:
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not shutil.which(path)]
    if missing:
        message = f"Debian's chromium and chromium-driver are needed ({', '.join(missing)} missing): make chromium"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)


def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1800,950"):
        options.add_argument(argument)
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


def wait_for_text(driver, *texts: str, timeout: float = 60.0) -> str:
    """The page's visible text once it shows every one of ``texts``."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    def shown(d) -> str | bool:
        body = d.find_element(By.TAG_NAME, "body").text
        return body if all(text in body for text in texts) else False

    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.5).until(shown)
    except TimeoutException:
        body = driver.find_element(By.TAG_NAME, "body").text
        raise AssertionError(f"the page never showed {texts}; it shows: {body[:1500]!r}") from None


def click(driver, xpath: str, timeout: float = 30.0) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    element = WebDriverWait(driver, timeout).until(expected_conditions.element_to_be_clickable((By.XPATH, xpath)))
    driver.execute_script("arguments[0].click();", element)


def wait_for_image(driver, timeout: float = 30.0) -> None:
    """Until the artifact preview shows a loaded image."""
    from selenium.webdriver.support.ui import WebDriverWait

    loaded = "return [...document.images].some(i => i.complete && i.naturalWidth > 200)"
    WebDriverWait(driver, timeout, poll_frequency=0.5).until(lambda d: d.execute_script(loaded))


def close_assistant(driver) -> None:
    """The UI's assistant panel takes a third of the width: close it when it is open."""
    from selenium.webdriver.common.by import By

    for button in driver.find_elements(By.XPATH, "//button[@aria-label='Close']"):
        if button.is_displayed():
            driver.execute_script("arguments[0].click();", button)


@pytest.fixture(scope="module")
def ui_store(tmp_path_factory):
    return make_store(tmp_path_factory.mktemp("ui-store"))


@pytest.fixture(scope="module")
def second_run(ui_store):
    """A second pipeline run into the same store and model name, on other data (more reviews): the
    registry now holds two versions measured on different test sets."""
    root = Path(ui_store.cfg.tracking.tracking_uri.removeprefix("sqlite:///")).parents[1]
    return make_store(root, limit=260, trials=2, study="ui-test-more", promote=False)


def test_two_runs_on_different_data_leave_one_champion_and_say_their_test_sets(ui_store, second_run):
    """Issue 23: after v2 took @champion, v1 still said 'promotion: champion' (two champions in
    the versions table); both versions' test accuracies stood side by side with nothing to say
    they were measured on different reviews; both logged models were named 'model'."""
    from pipeline.stores import resolve

    client = resolve(ui_store.cfg).mlflow_client()
    versions = {str(v.version): client.get_model_version(MODEL, v.version) for v in client.search_model_versions(f"name = '{MODEL}'")}
    assert sorted(versions) == ["1", "2"]
    assert sum("champion" in v.aliases for v in versions.values()) == 1
    sets = {number: v.tags["test_set"] for number, v in versions.items()}
    assert sets["1"].startswith("200 reviews") and sets["2"].startswith("260 reviews"), sets
    for version in versions.values():
        assert "promotion" not in version.tags  # the alias says who is champion now, tags what was decided
        assert version.tags["decision"] and "test_accuracy" in version.tags
    v2 = versions["2"]
    # v2 was compared with v1 on v2's own test reviews (the McNemar gate), and says so.
    assert "vs v1" in v2.tags["vs_champion"] and "on the same test reviews" in v2.tags["vs_champion"], v2.tags
    names = [m.name for m in client.search_logged_models(experiment_ids=[ui_store.experiment_id])]
    assert len(names) == 2 and len(set(names)) == 2 and all(name != "model" for name in names), names


def test_every_trial_logs_each_value_optuna_saw_the_pruned_one_included(ui_store):
    """The pruner stops a trial on an epoch's value: that value is in MLflow too, at the same
    epoch, and the run's epochs tag counts it (search.py runs the MLflow callback first)."""
    import optuna

    from pipeline.stores import resolve

    stores = resolve(ui_store.cfg)
    study = optuna.load_study(study_name="ui-test", storage=stores.study_storage)
    client = stores.mlflow_client()
    runs = {
        int(run.data.tags["optuna_trial"]): run
        for run in client.search_runs([ui_store.experiment_id], "tags.stage = 'trial'")
    }
    pruned = [t for t in study.trials if t.state == optuna.trial.TrialState.PRUNED]
    assert pruned, "the tiny study pruned no trial: the check below would not cover pruning"
    for trial in study.trials:
        run = runs[trial.number]
        logged = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "val_accuracy")}
        reported = {epoch + 1: pytest.approx(value, abs=1e-6) for epoch, value in trial.intermediate_values.items()}
        assert logged == reported, f"trial {trial.number}"
        assert run.data.tags["epochs"] == str(len(reported))
        # `objective`, the view's sort column, is what the study ranks by (the best epoch's value;
        # a pruned trial's best before it was stopped), not the last epoch's val_accuracy.
        expected = trial.value if trial.value is not None else max(trial.intermediate_values.values())
        assert run.data.metrics["objective"] == pytest.approx(expected, abs=1e-6), f"trial {trial.number}"
    for trial in pruned:
        assert runs[trial.number].info.status == "KILLED" and runs[trial.number].data.tags["outcome"] == "pruned"
        # Epochs counted from 1, as the trial's name and its metric steps count them.
        reason = runs[trial.number].data.tags["pruned_reason"]
        assert f"pruner after epoch {len(trial.intermediate_values)} (" in reason, reason


@pytest.fixture(scope="module")
def ui_url(ui_store, tmp_path_factory):
    from pipeline import ui
    from pipeline.stores import resolve

    running = ui.start(resolve(ui_store.cfg), tmp_path_factory.mktemp("ui-log") / "mlflow-ui.log")
    yield running.url
    running.stop()


@pytest.fixture(scope="module")
def driver():
    _chromium_or_skip()
    chromium = browser()
    yield chromium
    chromium.quit()


def check_runs_table(driver, ui_url: str, store: Store, shots: Path) -> str:
    """The link `sentiment ui` prints opens the runs table in model-training mode with the "Model
    selection" view; expanding the parent shows the trials by name, outcome and best mark."""
    from pipeline import tracking

    driver.get(tracking.experiment_link(ui_url, store.experiment_id))
    wait_for_text(driver, "Runs", "pipeline-", "Model selection")
    close_assistant(driver)
    # The expander is the button in the parent's run-name cell (it has no label to find it by).
    click(driver, "//*[@role='gridcell'][.//a[contains(., 'pipeline-')]]//button")
    text = wait_for_text(driver, "trial-000 gru×", "· best")
    driver.save_screenshot(str(shots / "runs_table.png"))
    return text


def check_study_view(driver, ui_url: str, store: Store, shots: Path) -> str:
    """The parent run's artifacts: the study plots (previewed) and the error-analysis table."""
    base = f"{ui_url}/#/experiments/{store.experiment_id}/runs/{store.parent_run_id}/artifacts"
    driver.get(f"{base}/evaluation/confident_errors.json?workflowType=machine_learning")
    text = wait_for_text(driver, "confident_errors.json", "View as table", "excerpt", "p_positive")
    close_assistant(driver)
    driver.save_screenshot(str(shots / "error_analysis.png"))
    click(driver, "//*[normalize-space(text())='study']")
    text += wait_for_text(driver, "plots.html", "trials.json", "optimization_history.png", "param_importances.png")
    click(driver, "//*[normalize-space(text())='optimization_history.png']")
    wait_for_text(driver, "study/optimization_history.png")
    wait_for_image(driver)
    driver.save_screenshot(str(shots / "study_view.png"))
    return text


def check_model_version(driver, ui_url: str, store: Store, shots: Path) -> str:
    driver.get(f"{ui_url}/#/models/{MODEL}/versions/{store.version}?workflowType=machine_learning")
    text = wait_for_text(driver, "champion", "Intended use", "Limitations", "Validation")
    close_assistant(driver)
    driver.save_screenshot(str(shots / "model_version.png"))
    return text


def test_a_person_opening_the_ui_finds_the_runs_the_study_and_the_champion(driver, ui_url, ui_store, tmp_path):
    runs = check_runs_table(driver, ui_url, ui_store, tmp_path)
    # Model-training mode: its sidebar has the model registry, not GenAI's observability section.
    assert "/runs" in driver.current_url and "Model registry" in runs and "Observability" not in runs
    assert "pipeline-" in runs and ("complete after" in runs or "pruned after" in runs)
    assert "model/test_accuracy" in runs or "model/test_accu" in runs  # the view's columns

    study = check_study_view(driver, ui_url, ui_store, tmp_path)
    assert "confident_errors.json" in study and "plots.html" in study

    from pipeline.stores import resolve

    champion = resolve(ui_store.cfg).mlflow_client().get_model_version_by_alias(MODEL, "champion").version
    version = check_model_version(driver, ui_url, replace(ui_store, version=champion), tmp_path)
    assert "@champion" in version or "champion" in version
    for shot in ("runs_table.png", "study_view.png", "model_version.png"):
        assert (tmp_path / shot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_sentiment_ui_prints_the_runs_table_link_and_stops_with_its_server(ui_store):
    """`sentiment ui` on the project's store: the link answers, and SIGTERM leaves no server behind."""
    import signal
    import subprocess
    import sys
    import time
    import urllib.request

    from pipeline import tracking

    command = [sys.executable, "-m", "flows.cli", "ui", "--tracking-uri", ui_store.cfg.tracking.tracking_uri]
    command += ["--experiment-name", ui_store.cfg.tracking.experiment_name]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        lines = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not any("/#/experiments/" in line for line in lines):
            lines.append(process.stdout.readline())
        link = next(line.strip() for line in lines if "/#/experiments/" in line)
        base = link.split("/#/")[0]
        assert link == tracking.experiment_link(base, ui_store.experiment_id)
        assert base.startswith("http://127.0.0.1:")
        with urllib.request.urlopen(f"{base}/health", timeout=10) as answer:
            assert answer.status == 200
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)
    time.sleep(1)
    with pytest.raises(OSError):
        urllib.request.urlopen(f"{base}/health", timeout=5)
