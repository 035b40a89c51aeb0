"""stores: where runs, models, studies and artifacts live, resolved once from the config."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from pipeline.config import build_config
from pipeline.stores import DEFAULT_STORE, StoreError, resolve


def test_the_default_is_the_embedded_store_under_mlruns():
    stores = resolve(build_config())

    assert stores.tracking_uri == f"sqlite:///{DEFAULT_STORE / 'mlflow.db'}"
    assert stores.registry_uri == stores.tracking_uri
    assert stores.study_storage == f"sqlite:///{DEFAULT_STORE / 'optuna.db'}"
    assert stores.artifact_root == (DEFAULT_STORE / "artifacts").as_uri()
    assert stores.ui_command() == f"mlflow ui --backend-store-uri {stores.tracking_uri}"


def test_study_and_artifacts_sit_beside_a_local_store_whose_folder_is_created(tmp_path):
    stores = resolve(build_config({"tracking.tracking_uri": f"sqlite:///{tmp_path / 'new' / 'mlflow.db'}"}))

    assert (tmp_path / "new").is_dir()
    assert stores.study_storage == f"sqlite:///{tmp_path / 'new' / 'optuna.db'}"
    assert stores.experiment_artifact_location("exp") == f"{(tmp_path / 'new' / 'artifacts').as_uri()}/exp"


def test_a_relative_local_path_is_pinned_to_an_absolute_one(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    stores = resolve(build_config({"tracking.tracking_uri": "sqlite:///here/mlflow.db"}))

    assert stores.tracking_uri == f"sqlite:///{tmp_path / 'here' / 'mlflow.db'}"


def test_a_tracking_server_needs_a_study_storage_and_chooses_the_artifacts(tmp_path):
    stores = resolve(build_config({"tracking.tracking_uri": "http://mlflow.example:5000"}))

    assert stores.artifact_root is None and stores.experiment_artifact_location("exp") is None
    assert stores.ui_url() == "http://mlflow.example:5000"
    with pytest.raises(StoreError, match=r"--storage.*SENTIMENT_SEARCH_STORAGE.*postgresql://"):
        _ = stores.study_storage


def test_configured_storage_and_artifact_root_win():
    stores = resolve(
        build_config(
            {
                "tracking.tracking_uri": "http://mlflow.example:5000",
                "tracking.artifact_root": "s3://bucket/artifacts",
                "search.storage": "postgresql://optuna@db/optuna",
            }
        )
    )

    assert stores.study_storage == "postgresql://optuna@db/optuna"
    assert stores.experiment_artifact_location("exp") == "s3://bucket/artifacts/exp"


def test_the_alias_lock_is_exclusive_between_holders(tmp_path):
    stores = resolve(build_config({"tracking.tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}"}))
    inside: list[int] = []
    overlaps: list[bool] = []

    def hold(index: int) -> None:
        with stores.alias_lock("model"):
            inside.append(index)
            overlaps.append(len(inside) > 1)
            time.sleep(0.05)
            inside.remove(index)

    threads = [threading.Thread(target=hold, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert overlaps == [False] * 4


def test_a_local_model_folder_is_used_as_it_is(tmp_path):
    stores = resolve(build_config({"tracking.tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}"}))

    assert stores.download_model(str(tmp_path)) == str(tmp_path)
    assert Path(stores.tracking_uri.removeprefix("sqlite:///")).parent == tmp_path
