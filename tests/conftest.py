"""Shared fixtures: tiny aclImdb datasets written into tmp_path, and a small prepared sample."""

from __future__ import annotations

import os
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

# Session-scoped real services (PostgreSQL cluster, MLflow server), started only by tests that ask.
from services import mlflow_server, postgres  # noqa: F401

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
# A native crash in any process a test starts (a flow run's, a worker's) prints its Python stack:
# CI once saw a served flow run exit with SIGSEGV and nothing else to go on.
os.environ.setdefault("PYTHONFAULTHANDLER", "1")

# typer's CliRunner swaps sys.stderr for a buffer it closes after each invocation. MLflow, Prefect
# and TensorFlow set up logging handlers on first import; imported inside an invocation they would
# keep that closed buffer and crash the test session later ("lost sys.stderr"). Import them here.
import flows.tasks  # noqa: E402, F401

# (split, label) → review texts; file names are "<index>_<rating>.txt".
Reviews = dict[tuple[str, str], list[str]]

_RATING = {"pos": 9, "neg": 2}
_POSITIVE = ("a great film", "wonderful acting and a great story", "i loved this movie")
_NEGATIVE = ("an awful film", "boring acting and an awful story", "i hated this movie")


def tiny_reviews(train_per_class: int = 10, test_per_class: int = 5) -> Reviews:
    """Short reviews with shared sentiment words and one marker word each (``trainpos3``).

    A marker appears in one review only, so it is in the vocabulary exactly when that review is
    part of the training data the vocabulary was built from.
    """
    reviews: Reviews = {}
    for split, count in (("train", train_per_class), ("test", test_per_class)):
        for label, phrases in (("pos", _POSITIVE), ("neg", _NEGATIVE)):
            reviews[split, label] = [
                f"{phrases[i % 3].capitalize()}.<br /><br />{phrases[(i + 1) % 3]} {split}{label}{i}"
                for i in range(count)
            ]
    return reviews


def write_folder(root: Path, reviews: Reviews) -> Path:
    """Write ``root/aclImdb/{split}/{label}/<i>_<rating>.txt`` and return ``root``."""
    for (split, label), texts in reviews.items():
        folder = root / "aclImdb" / split / label
        folder.mkdir(parents=True, exist_ok=True)
        for index, text in enumerate(texts):
            (folder / f"{index}_{_RATING[label]}.txt").write_text(text, encoding="utf-8")
    return root


def pack(folder: Path, archive: Path) -> Path:
    """``folder/aclImdb`` as a ``.tar.gz`` whose members are named ``aclImdb/...``, as downloaded."""
    archive.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder / "aclImdb", arcname="aclImdb")
    return archive


@pytest.fixture
def make_reviews() -> Callable[..., Reviews]:
    """``make_reviews(train_per_class=10, test_per_class=5)``: a fresh dict of tiny reviews to edit."""
    return tiny_reviews


@pytest.fixture
def pack_archive() -> Callable[[Path, Path], Path]:
    """``pack_archive(folder, archive)``: pack a folder written by ``make_folder`` as a .tar.gz."""
    return pack


@pytest.fixture
def make_folder(tmp_path: Path) -> Callable[..., Path]:
    """``make_folder(name="dataset", reviews=None)``: a tiny aclImdb folder under tmp_path."""

    def make(name: str = "dataset", reviews: Reviews | None = None) -> Path:
        return write_folder(tmp_path / name, tiny_reviews() if reviews is None else reviews)

    return make


@pytest.fixture
def make_archive(tmp_path: Path, make_folder) -> Callable[..., Path]:
    """``make_archive(name="dataset.tar.gz", reviews=None)``: the same layout as a .tar.gz."""

    def make(name: str = "dataset.tar.gz", reviews: Reviews | None = None) -> Path:
        return pack(make_folder(f"{name}.src", reviews), tmp_path / name)

    return make


@pytest.fixture
def data_config(tmp_path: Path):
    """``data_config(path, **options)``: a small DataConfig whose cache lives under tmp_path."""
    from pipeline.config import DataConfig

    def make(path: Path, **options) -> DataConfig:
        defaults = {"vocab_size": 200, "max_len": 20, "cache_dir": tmp_path / "cache"}
        return DataConfig(path=path, **{**defaults, **options})

    return make


@pytest.fixture(scope="session")
def sample_data(tmp_path_factory):
    """200 real reviews per split from the shipped sample (160 train / 40 validation / 200 test)."""
    from pipeline.config import SAMPLE_ARCHIVE, DataConfig
    from pipeline.data import prepare

    cache = tmp_path_factory.mktemp("sample-cache")
    return prepare(DataConfig(path=SAMPLE_ARCHIVE, limit=200, max_len=400, vocab_size=500, cache_dir=cache))
