"""The MLflow UI as a person sees it: a tiny real pipeline run, `mlflow ui` on its store, and
Debian's headless Chromium driven by Selenium (chromium-driver; nothing is downloaded).

Without Chromium the test is skipped, except under ``CI=true``, where it fails: CI installs it
(``.ci/run``, ``make test``). Screenshots land in the test's tmp dir.
"""

from __future__ import annotations

import os
import shutil
import time
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
        for run in client.search_runs([ui_store.experiment_id], "tags.stage = 'trial' and tags.optuna_study = 'ui-test'")
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


ROWS_JS = """
return [...document.querySelectorAll("[role='gridcell'] a[href*='/runs/']")]
  .filter(a => a.textContent.includes('trial-') || a.textContent.includes('pipeline-'))
  .map(a => {
    const text = document.createRange();
    text.selectNodeContents(a);
    const cell = a.closest("[role='gridcell']").getBoundingClientRect();
    const id = a.getAttribute('href').split('/runs/')[1].split(/[?/]/)[0];
    return [a.textContent, id, text.getBoundingClientRect().right - cell.right];
  });
"""


def check_runs_table(driver, ui_url: str, store: Store, shots: Path) -> tuple[str, list[tuple[str, str, float]]]:
    """The link `sentiment ui` prints opens the runs table in model-training mode with the "Model
    selection" view, sorted by objective; its rows as (run name, run id, how many pixels the
    name's text runs past its cell: > 0 is cut)."""
    from pipeline import tracking

    driver.get(tracking.experiment_link(ui_url, store.experiment_id))
    text = wait_for_text(driver, "Runs", "Model selection", "Sort: objective", "trial-000 gru×", "· best")
    close_assistant(driver)
    driver.save_screenshot(str(shots / "runs_table.png"))
    rows = [tuple(row) for row in driver.execute_script(ROWS_JS)]
    # The grid draws only the columns in sight: scroll across it, reading the headers drawn.
    viewport = "document.querySelector('.ag-body-horizontal-scroll-viewport')"
    width = driver.execute_script(f"return {viewport}.scrollWidth")
    for left in range(0, width + 400, 400):
        driver.execute_script(f"{viewport}.scrollLeft = {left}")
        time.sleep(0.3)
        text += "\n" + "\n".join(driver.execute_script("return [...document.querySelectorAll('.ag-header-cell[col-id]')].map(h => h.textContent)"))
    return text, rows


def check_bare_link(ui_url: str, store: Store, shots: Path) -> tuple[str, str]:
    """In a browser that never opened the UI: where a bare experiment link lands, then where it
    lands after one flip of the sidebar's toggle to "Model training" (the README's one click)."""
    from selenium.webdriver.support.ui import WebDriverWait

    chromium = browser()  # its own: local storage, which keeps the toggle, starts empty
    try:
        bare = f"{ui_url}/#/experiments/{store.experiment_id}"
        chromium.get(bare)
        wait_for_text(chromium, "GenAI", "Model training")
        WebDriverWait(chromium, 30).until(lambda d: "workflowType=" in d.current_url)  # its redirect
        first = chromium.current_url
        click(chromium, "//span[normalize-space(text())='Model training']")
        wait_for_text(chromium, "Model registry")
        chromium.get(f"{ui_url}/#/experiments")  # elsewhere, then the bare link again
        wait_for_text(chromium, "Experiments")
        chromium.get(bare)
        wait_for_text(chromium, "Runs", "pipeline-", "Model registry")
        chromium.save_screenshot(str(shots / "bare_link_after_toggle.png"))
        return first, chromium.current_url
    finally:
        chromium.quit()


TABLE_JS = """
return [...document.querySelectorAll('[role=row]')]
  .map(row => [...row.children].map(cell => cell.textContent.trim()));
"""


def check_trials_table(driver, ui_url: str, store: Store, shots: Path) -> list[dict[str, str]]:
    """study/trials.json in MLflow's artifact viewer, as a table: its rows by column name."""
    base = f"{ui_url}/#/experiments/{store.experiment_id}/runs/{store.parent_run_id}/artifacts"
    driver.get("about:blank")  # a fresh load: a hash change alone leaves the artifact open before
    driver.get(f"{base}/study/trials.json?workflowType=machine_learning")
    wait_for_text(driver, "trials.json", "View as table", "run_name", "param_units")
    close_assistant(driver)
    driver.save_screenshot(str(shots / "trials_table.png"))
    header, *rows = driver.execute_script(TABLE_JS)
    return [dict(zip(header, row, strict=True)) for row in rows]


def visit(driver, url: str, shot: Path, *texts: str) -> str:
    """Open ``url``, wait for ``texts``, close the assistant, save the page to ``shot``: its text."""
    driver.get(url)
    text = wait_for_text(driver, *texts)
    close_assistant(driver)
    driver.save_screenshot(str(shot))
    return text


def check_versions(driver, ui_url: str, shots: Path) -> str:
    url = f"{ui_url}/#/models/{MODEL}?workflowType=machine_learning"
    return visit(driver, url, shots / "versions.png", "Version 1", "Version 2", "test_set")


def check_run_page(driver, ui_url: str, store: Store, shots: Path) -> str:
    url = f"{ui_url}/#/experiments/{store.experiment_id}/runs/{store.parent_run_id}?workflowType=machine_learning"
    return visit(driver, url, shots / "run_page.png", "Tags", "registered_version", "where.data.path")


def check_study_view(driver, ui_url: str, store: Store, shots: Path) -> str:
    """The parent run's artifacts: the study plots (previewed) and the error-analysis table."""
    base = f"{ui_url}/#/experiments/{store.experiment_id}/runs/{store.parent_run_id}/artifacts"
    driver.get("about:blank")
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
    url = f"{ui_url}/#/models/{MODEL}/versions/{store.version}?workflowType=machine_learning"
    return visit(driver, url, shots / "model_version.png", "champion", "Intended use", "Limitations", "Validation")


def test_a_person_opening_the_ui_finds_the_runs_the_study_and_the_champion(driver, ui_url, ui_store, second_run, tmp_path):
    """Issue 23's walk, on a store with two pipeline runs on different data."""
    import optuna

    from pipeline.stores import resolve

    stores = resolve(ui_store.cfg)
    client = stores.mlflow_client()

    # A bare experiment link: MLflow 3.17 opens GenAI mode (it reads no server or experiment
    # setting); one flip of the toggle, as the README says, and every bare link opens the runs.
    first, after_toggle = check_bare_link(ui_url, ui_store, tmp_path)
    assert "workflowType=genai" in first, f"MLflow now opens {first}: the README's one click may be gone"
    assert "/runs" in after_toggle and "workflowType=machine_learning" in after_toggle, after_toggle

    runs, rows = check_runs_table(driver, ui_url, ui_store, tmp_path)
    # Model-training mode: its sidebar has the model registry, not GenAI's observability section.
    assert "/runs" in driver.current_url and "Model registry" in runs and "Observability" not in runs
    assert "model/test_accuracy" in runs or "model/test_accu" in runs  # the view's columns
    # Every trial's whole name (configuration, outcome, "· best") is readable in its cell.
    trial_rows = [row for row in rows if row[0].startswith("trial-")]
    assert len(trial_rows) == 8, rows  # 6 + 2 trials: both runs' trials, flat under the sort
    assert all(overflow <= 1 for _, _, overflow in rows), [row for row in rows if row[2] > 1]
    # Sorted as the study ranks: its complete trials in the order of their values, best first.
    study = optuna.load_study(study_name="ui-test", storage=stores.study_storage)
    numbers = {
        run.info.run_id: int(run.data.tags["optuna_trial"])
        for run in client.search_runs([ui_store.experiment_id], "tags.optuna_study = 'ui-test' and tags.stage = 'trial'")
    }
    shown = [study.trials[numbers[run_id]] for _, run_id, _ in trial_rows if run_id in numbers]
    assert len(shown) == len(study.trials)
    complete = [trial for trial in shown if trial.value is not None]
    assert complete[0].number == study.best_trial.number or complete[0].value == study.best_value
    assert [t.value for t in complete] == sorted((t.value for t in complete), reverse=True), [t.number for t in complete]

    # The trials table: every param filled, and the run of each trial by id and name.
    table = check_trials_table(driver, ui_url, ui_store, tmp_path)
    assert len(table) == len(study.trials)
    for row in table:
        assert all(row[key] for key in row if key.startswith("param_")), row
        assert numbers[row["run_id"]] == int(row["trial"]) and row["run_name"].startswith(f"trial-{int(row['trial']):03d} ")

    study_page = check_study_view(driver, ui_url, ui_store, tmp_path)
    assert "confident_errors.json" in study_page and "plots.html" in study_page

    # The versions table: two versions, one champion, each with its own test set.
    versions = check_versions(driver, ui_url, tmp_path)
    assert versions.count("@ champion") == 1, versions[-1500:]
    assert versions.count("test_set") == 2 and "200 reviews, digest" in versions and "260 reviews, digest" in versions

    # The parent's tags: how it went before where things live; no pid or heartbeat left behind.
    page = check_run_page(driver, ui_url, ui_store, tmp_path)
    tags = page[page.index("Tags") :]
    assert tags.index("registered_version") < tags.index("where.data.path"), tags[:1500]
    assert "owner_pid" not in tags and "heartbeat" not in tags

    champion = client.get_model_version_by_alias(MODEL, "champion").version
    version = check_model_version(driver, ui_url, replace(ui_store, version=champion), tmp_path)
    assert "@champion" in version or "champion" in version
    for shot in ("runs_table.png", "study_view.png", "model_version.png", "trials_table.png", "versions.png"):
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
