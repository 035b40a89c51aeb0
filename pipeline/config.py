"""One validated, frozen configuration tree for the whole pipeline.

Every option a user can set lives here, validated once at the edge (CLI, flow parameters), so a
bad value fails before any work with a message naming the field. Field names are the names used
everywhere else: MLflow params, Optuna parameters and CLI flags (``max_len`` ⇄ ``--max-len``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SAMPLE_ARCHIVE = Path(__file__).resolve().parent / "sample" / "aclImdb_sample.tar.gz"
DEFAULT_STORE = PROJECT_ROOT / "mlruns"

Cell = Literal["simple_rnn", "lstm", "gru"]
Optimizer = Literal["rmsprop", "adam"]
Monitor = Literal["val_accuracy", "val_loss"]
CELLS: tuple[Cell, ...] = ("simple_rnn", "lstm", "gru")
# XLA compiles each batch shape once (~2 s per shape, ~10 shapes a model); it pays back through
# ~1.5-3× faster steps only over this many reviews × epochs.
JIT_MIN_REVIEW_EPOCHS = 40_000


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class HParams(_Frozen):
    """The model's hyperparameters: what the search chooses and what a preset fixes."""

    cell: Cell = "gru"
    units: int = Field(32, ge=1, le=1024)
    layers: int = Field(1, ge=1, le=4)
    bidirectional: bool = False
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    learning_rate: float = Field(3e-3, gt=0.0, le=1.0)
    embedding_dim: int = Field(32, ge=1, le=1024)
    optimizer: Optimizer = "adam"


class DataConfig(_Frozen):
    path: Path = SAMPLE_ARCHIVE
    vocab_size: int = Field(10_000, ge=2)
    max_len: int = Field(500, ge=1)
    val_fraction: float = Field(0.2, gt=0.0, lt=1.0)
    seed: int = 42
    limit: int | None = Field(None, ge=2, description="use at most this many reviews per split")
    cache_dir: Path | None = PROJECT_ROOT / ".cache" / "prepared"


class TrainConfig(_Frozen):
    batch_size: int = Field(64, ge=1)
    epochs: int = Field(8, ge=1)
    patience: int = Field(3, ge=0)
    monitor: Monitor = "val_accuracy"
    buckets: int = Field(4, ge=1, le=32, description="length buckets; 1 pads every batch to max_len")
    jit_compile: bool | None = Field(None, description="XLA; None: on from JIT_MIN_REVIEW_EPOCHS")
    seed: int = 42
    bigram_buckets: int = Field(
        2**20,
        ge=0,
        le=2**24,
        description="hashed bigram ids of the bag-of-bigrams companion (at most; fewer when the "
        "training reviews hold fewer bigrams); 0: no companion, the RNN alone",
    )
    bigram_dim: int = Field(16, ge=1, le=1024, description="embedding width of the companion")

    @field_validator("bigram_buckets")
    @classmethod
    def _no_single_bucket(cls, buckets: int) -> int:
        if buckets == 1:
            raise ValueError("bigram_buckets must be 0 (no companion) or at least 2")
        return buckets


class SearchConfig(_Frozen):
    trials: int = Field(6, ge=1, description="trials per invocation")
    timeout: float | None = Field(None, gt=0, description="seconds for the whole search")
    study_name: str = Field("imdb-sentiment", min_length=1)
    storage: str | None = None
    epochs: int = Field(3, ge=1, description="epoch cap per trial")
    cells: tuple[Cell, ...] = CELLS
    pruner: Literal["median", "hyperband", "none"] = "median"
    subset: float = Field(1.0, gt=0.0, le=1.0, description="share of training reviews per trial")
    max_len: int | None = Field(
        None, ge=1, description="tokens per review in trials (the end); None: data.max_len"
    )
    seed: int | None = 42
    workers: int = Field(1, ge=1, le=8, description="trials run side by side, one process each")

    @field_validator("cells")
    @classmethod
    def _cells_not_empty(cls, cells: tuple[Cell, ...]) -> tuple[Cell, ...]:
        if not cells:
            raise ValueError("cells must name at least one of " + ", ".join(CELLS))
        return cells


class TrackingConfig(_Frozen):
    tracking_uri: str = f"sqlite:///{DEFAULT_STORE / 'mlflow.db'}"
    artifact_root: str | None = Field(None, description="default: artifacts/ beside a SQLite store")
    experiment_name: str = Field("imdb-sentiment", min_length=1)
    model_name: str = Field("imdb-sentiment", min_length=1)
    promotion_alpha: float = Field(
        0.05, gt=0.0, le=1.0, description="McNemar exact test level to promote; 1 turns the test off"
    )
    min_gain: float = Field(
        0.0, ge=0.0, le=1.0, description="test accuracy a challenger must gain to promote"
    )

    def artifact_location(self) -> str:
        """Where new experiments keep artifacts: absolute, so every process finds them."""
        if self.artifact_root:
            return self.artifact_root
        if self.tracking_uri.startswith("sqlite:///"):
            return (Path(self.tracking_uri.removeprefix("sqlite:///")).parent / "artifacts").as_uri()
        return (DEFAULT_STORE / "artifacts").as_uri()


class PipelineConfig(_Frozen):
    data: DataConfig = DataConfig()
    train: TrainConfig = TrainConfig()
    search: SearchConfig = SearchConfig()
    tracking: TrackingConfig = TrackingConfig()

    def study_storage(self) -> str:
        """Optuna storage URL: the configured one, else a SQLite file beside the MLflow store."""
        if self.search.storage:
            return self.search.storage
        uri = self.tracking.tracking_uri
        if uri.startswith("sqlite:///"):
            return f"sqlite:///{Path(uri.removeprefix('sqlite:///')).parent / 'optuna.db'}"
        return f"sqlite:///{DEFAULT_STORE / 'optuna.db'}"

    def flat_params(self) -> dict[str, Any]:
        """Dotted keys (``data.max_len``) for logging the whole config as MLflow params."""
        return _flatten(self.model_dump(mode="json"))


class ConfigError(ValueError):
    """An invalid option; the message names the field (``data.vocab_size``)."""


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def build_config(overrides: dict[str, Any] | None = None) -> PipelineConfig:
    """Build the config from dotted overrides (``{"data.max_len": 200}``); None values are skipped.

    Raises ConfigError naming each invalid field.
    """
    tree: dict[str, Any] = {}
    for dotted, value in (overrides or {}).items():
        if value is None:
            continue
        *parents, leaf = dotted.split(".")
        node = tree
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    try:
        return PipelineConfig.model_validate(tree)
    except ValidationError as error:
        raise ConfigError(describe_validation_error(error)) from None


# Fields whose CLI flag is not ``--<leaf name>``: the search's own knobs share a leaf name with
# the final model's (``search.epochs`` vs ``train.epochs``).
_FLAGS = {
    "data.path": "--data",
    "search.epochs": "--search-epochs",
    "search.max_len": "--search-max-len",
    "search.cells": "--cell",
}


def describe_validation_error(error: ValidationError) -> str:
    lines = []
    for problem in error.errors():
        parts = [str(part) for part in problem["loc"] if not isinstance(part, int)]
        field = ".".join(parts[:2])
        flag = _FLAGS.get(field, "--" + parts[-1].replace("_", "-"))
        lines.append(
            f"invalid option {'.'.join(parts)} ({flag}): {problem['msg']} (got {problem.get('input')!r})"
        )
    return "\n".join(lines)


def run_params(hparams: HParams, cfg: PipelineConfig) -> dict[str, Any]:
    """The params every trial and final run logs, under the same names: compare runs side by side."""
    return {
        **hparams.model_dump(),
        "vocab_size": cfg.data.vocab_size,
        "max_len": cfg.data.max_len,
        "batch_size": cfg.train.batch_size,
    }
