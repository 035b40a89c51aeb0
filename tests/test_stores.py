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


def _raised(error: BaseException, wrapper: BaseException | None = None) -> BaseException:
    """``wrapper`` raised from ``error``, as MLflow and Optuna raise them (``raise … from e``)."""
    try:
        try:
            raise error
        except BaseException as inner:
            if wrapper is None:
                raise
            raise wrapper from inner
    except BaseException as outer:
        return outer


def _operational(text: str):
    from sqlalchemy.exc import OperationalError

    return OperationalError("INSERT INTO tags VALUES (?)", ("x",), Exception(text))


def test_a_read_only_store_is_named_in_one_line_and_stops_the_search():
    from mlflow.exceptions import MlflowException
    from optuna.exceptions import StorageInternalError

    from pipeline.stores import failed_store, refuses_writes

    tracking, storage = "sqlite:////s/mlflow.db", "postgresql://u:secret@db/optuna"
    through_mlflow = _raised(_operational("unable to open database file"), MlflowException("(sqlite3) …"))
    failure = failed_store(through_mlflow, tracking, storage, when=" during the search")
    assert str(failure) == f"MLflow tracking store {tracking}: cannot write during the search (unable to open database file)"
    assert refuses_writes(through_mlflow)

    through_optuna = _raised(_operational("attempt to write a readonly database"), StorageInternalError("commit"))
    failure = failed_store(through_optuna, tracking, storage)
    assert str(failure) == "Optuna study storage postgresql://u:***@db/optuna: cannot write (attempt to write a readonly database)"
    assert "\n" not in str(failure) and "INSERT" not in str(failure)


def test_a_database_restart_or_a_bad_value_does_not_stop_the_search():
    """A restart is ridden out by the next trial or a rejoin; a value Optuna's database refused
    (wrapped like a store failure) is that trial's own error."""
    from optuna.exceptions import StorageInternalError
    from sqlalchemy.exc import DataError

    from pipeline.stores import failed_store, refuses_writes

    restart = _raised(_operational("server closed the connection unexpectedly"), StorageInternalError("commit"))
    assert not refuses_writes(restart)
    too_long = _raised(DataError("UPDATE", (), Exception("value too long")), StorageInternalError("commit"))
    assert failed_store(too_long, "sqlite:////s/mlflow.db", "sqlite:////s/optuna.db") is None
    assert failed_store(ValueError("a bug"), "sqlite:////s/mlflow.db", None) is None
