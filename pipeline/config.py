"""One validated, frozen configuration tree for the whole pipeline, and where its values come from.

Every setting lives here once, with its type, bounds, default and help text: the CLI options, the
``SENTIMENT_*`` environment variables, config files (YAML or TOML) and the Prefect/Kubeflow
parameters are all generated from these models, never listed again by hand. Field names are the
names used everywhere else: MLflow params, Optuna parameters and CLI flags (``max_len`` ⇄
``--max-len``). Values are validated once, at the edge, so a bad value fails before any work with
a message naming the field and where it came from.

Precedence, highest first: command-line option > environment variable > config file > default.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo

from pipeline.secrets import redact

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def _state_root() -> Path:
    """Where the default stores (``mlruns/``), caches and logs live: ``SENTIMENT_HOME`` when set;
    else the checkout (``make run`` keeps everything in the repository); else, for an installed
    package (site-packages, often read-only: the image's), ``~/.imdb-sentiment`` of the user."""
    if os.environ.get("SENTIMENT_HOME"):
        return Path(os.environ["SENTIMENT_HOME"]).expanduser().resolve()
    if (PROJECT_ROOT / "pyproject.toml").is_file():
        return PROJECT_ROOT
    return Path.home() / ".imdb-sentiment"


STATE_ROOT = _state_root()
SAMPLE_ARCHIVE = Path(__file__).resolve().parent / "sample" / "aclImdb_sample.tar.gz"
ENV_PREFIX = "SENTIMENT_"

Cell = Literal["simple_rnn", "lstm", "gru"]
Optimizer = Literal["rmsprop", "adam"]
Monitor = Literal["val_accuracy", "val_loss"]
Pooling = Literal["last", "max_mean"]
# A store URI: serialised (MLflow params, Prefect parameters, ``config show``) without its password.
StoreUri = Annotated[str | None, PlainSerializer(lambda uri: uri and redact(uri), when_used="json")]
# data.path: a path, or a database URL serialised without its password as store URIs are.
DataPath = Annotated[
    Path | str, PlainSerializer(lambda value: redact(value) if isinstance(value, str) else str(value), when_used="json")
]
Selection = Literal["best", "cheapest_within_1se"]
CELLS: tuple[Cell, ...] = Cell.__args__
# XLA compiles each batch shape once (~2 s per shape, ~10 shapes a model); it pays back through
# ~1.5-3× faster steps only over this many reviews × epochs.
JIT_MIN_REVIEW_EPOCHS = 40_000


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class HParams(_Frozen):
    """The model's hyperparameters: what the search chooses and what a preset fixes."""

    cell: Cell = Field("gru", description="recurrent cell type")
    units: int = Field(32, ge=1, le=1024, description="units per recurrent layer")
    layers: int = Field(1, ge=1, le=4, description="stacked recurrent layers")
    bidirectional: bool = Field(False, description="read each review both ways")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="dropout after the embedding and each layer")
    learning_rate: float = Field(3e-3, gt=0.0, le=1.0, description="optimizer learning rate")
    embedding_dim: int = Field(32, ge=1, le=1024, description="embedding width")
    optimizer: Optimizer = Field("adam", description="optimizer")
    pooling: Pooling = Field(
        "max_mean",
        description="what the output layer reads: the RNN's last state, or the max and the mean of "
        "its states over the review's tokens",
    )


class DataConfig(_Frozen):
    path: DataPath = Field(
        SAMPLE_ARCHIVE,
        description="aclImdb .tar.gz as downloaded, or its extracted folder (default: the sample "
        "shipped in the package); or labelled reviews in a CSV, JSONL or Parquet file, a folder "
        "of them, a glob ('drops/*.parquet'), or a database's SQLAlchemy URL (with data.query)",
    )
    query: str | None = Field(
        None, description="with a database URL as data.path: the table, or a SELECT, holding the reviews"
    )
    text_column: str = Field("text", min_length=1, description="a table's column of review texts")
    label_column: str = Field(
        "label",
        min_length=1,
        description="a table's column of labels: 0/1, neg/pos, negative/positive, false/true "
        "(any case), or the values of data.positive_labels / data.negative_labels",
    )
    positive_labels: tuple[str, ...] = Field(
        (), description="a table's label values that mean positive (repeat the option), over the built-in names"
    )
    negative_labels: tuple[str, ...] = Field((), description="a table's label values that mean negative")
    split_column: str | None = Field(
        None,
        description="a table's column saying train or test; without one, data.test_fraction of "
        "the rows (stratified, seeded) is the test split",
    )
    test_fraction: float = Field(
        0.2, gt=0.0, lt=1.0, description="share of a table's rows held out for testing when it has no split column"
    )
    vocab_size: int = Field(
        10_000, ge=2, description="vocabulary cap: the most frequent words of the training split"
    )
    max_len: int = Field(500, ge=1, description="tokens kept per review, from its end")
    val_fraction: float = Field(
        0.2, gt=0.0, lt=1.0, description="share of the training reviews held out for validation"
    )
    seed: int = Field(42, description="seed of the validation split and of --limit's draw")
    limit: int | None = Field(None, ge=2, description="use at most this many reviews per split (stratified)")
    # Checks before training (pipeline/data_checks.py): a run whose reviews fail one stops FAILED.
    checks: bool = Field(True, description="check the reviews before training and refuse a batch that fails")
    check_min_positive_share: float = Field(
        0.1, ge=0.0, lt=0.5, description="each split's positive share must lie between this and 1 minus it"
    )
    check_min_per_class: int = Field(10, ge=1, description="fewest reviews of either class a split may have")
    check_max_duplicate_share: float = Field(0.02, ge=0.0, le=1.0, description="share of a split's reviews that may repeat another's text exactly")
    check_max_leaked_share: float = Field(0.01, ge=0.0, le=1.0, description="share of test reviews that may also be training reviews")
    check_max_nonletter_share: float = Field(
        0.01, ge=0.0, le=1.0, description="share of reviews that may be mostly not letters (binary dumps, a wrong column)"
    )
    check_max_empty_share: float = Field(0.01, ge=0.0, le=1.0, description="share of reviews that may be empty")
    cache_dir: Path | None = Field(
        STATE_ROOT / ".cache" / "prepared", description="where prepared arrays are cached; none: no cache"
    )

    @field_validator("cache_dir", mode="before")
    @classmethod
    def _no_cache(cls, value: Any) -> Any:
        """``none`` (from --cache-dir or SENTIMENT_DATA_CACHE_DIR) is no cache, not a folder of that name."""
        return None if isinstance(value, str | Path) and str(value).strip().lower() in ("none", "") else value

    @model_validator(mode="after")
    def _label_names(self) -> DataConfig:
        if overlap := set(self.positive_labels) & set(self.negative_labels):
            raise ValueError(f"label value(s) {sorted(overlap)} in both data.positive_labels and data.negative_labels")
        return self

    @field_validator("path", mode="before")
    @classmethod
    def _path_or_url(cls, value: Any) -> Any:
        """A database URL (``postgresql://…``) stays text; anything else is a path, absolute."""
        if isinstance(value, str) and "://" in value:
            return value
        if not isinstance(value, str | Path):
            raise ValueError(f"must be a path or a database URL, not {type(value).__name__} {value!r}")
        return Path(value).expanduser().resolve()

    @field_validator("cache_dir")
    @classmethod
    def _absolute(cls, path: Path | None) -> Path | None:
        """Absolute, so every process (workers, Prefect runs) reads the same place."""
        return None if path is None else path.expanduser().resolve()


class TrainConfig(_Frozen):
    batch_size: int = Field(64, ge=1, description="batch size")
    epochs: int = Field(8, ge=1, description="epoch cap for the final model")
    patience: int = Field(3, ge=0, description="early-stopping patience in epochs")
    monitor: Monitor = Field("val_accuracy", description="what early stopping and the search optimise")
    time_budget: float | None = Field(
        None,
        gt=0,
        description="seconds the final RNN may train: no epoch starts that would end past them "
        "(judged by the longest epoch so far; the best epoch's weights are kept)",
    )
    buckets: int = Field(
        4, ge=1, le=32, description="length buckets per epoch; 1 pads every batch to --max-len"
    )
    jit_compile: bool | None = Field(
        None,
        description=f"XLA-compile the model's steps (default: on from {JIT_MIN_REVIEW_EPOCHS:,} reviews × epochs)",
    )
    seed: int = Field(42, description="seed of weight initialisation and batch order")
    bigram_buckets: int = Field(
        2**20,
        ge=0,
        le=2**24,
        description="hashed bigram ids of the bag-of-bigrams companion, averaged with the RNN when "
        "that wins on validation (fewer when the training reviews hold fewer bigrams); 0: the RNN alone",
    )
    bigram_dim: int = Field(16, ge=1, le=1024, description="embedding width of the fastText companion")
    companion: Literal["nbsvm", "fasttext"] = Field(
        "nbsvm",
        description="the bag-of-n-grams companion: NBSVM (binary 1-2-grams scaled by their naive-Bayes "
        "ratio, logistic regression) or fastText (mean n-gram embeddings)",
    )

    refit: bool = Field(
        True,
        description="once the blend weight is chosen on validation, fit the NBSVM companion again on "
        "training + validation reviews (the RNN stays the fit early stopping chose)",
    )

    @field_validator("bigram_buckets")
    @classmethod
    def _no_single_bucket(cls, buckets: int) -> int:
        if buckets == 1:
            raise ValueError("bigram_buckets must be 0 (no companion) or at least 2")
        return buckets


class SearchConfig(_Frozen):
    trials: int = Field(6, ge=1, description="Optuna trials to run in this invocation")
    timeout: float | None = Field(None, gt=0, description="time budget for the whole search, in seconds")
    study_name: str | None = Field(
        None,
        min_length=1,
        description="Optuna study name; an existing study resumes (default: imdb-sentiment-<8 hex "
        "digits of the search space and trial settings>, so two profiles never share a study)",
    )
    storage: StoreUri = Field(
        None,
        description="Optuna storage URL (default: optuna.db beside the embedded MLflow store; "
        "required with any other tracking store)",
    )
    epochs: int = Field(3, ge=1, description="epoch cap per trial")
    cells: tuple[Cell, ...] = Field(CELLS, description="cell types to search (repeat the option)")
    bidirectional: bool = Field(
        True,
        description="search bidirectional cells too (each reads a review twice: about twice the "
        "training and scoring time)",
    )
    pruner: Literal["median", "hyperband", "none"] = Field("median", description="Optuna pruner")
    subset: float = Field(1.0, gt=0.0, le=1.0, description="share of training reviews each trial trains on")
    max_len: int | None = Field(
        None, ge=1, description="tokens per review (the end) in trials (default: --max-len)"
    )
    seed: int | None = Field(42, description="seed of the Optuna sampler and of --subset's draw")
    selection: Selection = Field(
        "best",
        description="the trial whose settings the final model takes: the best validation score, or "
        "the cheapest (recurrent multiply-adds per token) scoring within one standard error of the "
        "best (val_accuracy only)",
    )
    workers: int = Field(1, ge=1, le=8, description="trials run side by side, one process each")
    heartbeat_seconds: int = Field(
        60,
        ge=1,
        description="a running trial's heartbeat; one silent for 3 heartbeats (its process was "
        "killed) is failed, retried once and its MLflow run closed KILLED",
    )

    @field_validator("cells")
    @classmethod
    def _cells_not_empty(cls, cells: tuple[Cell, ...]) -> tuple[Cell, ...]:
        if not cells:
            raise ValueError("cells must name at least one of " + ", ".join(CELLS))
        return cells


class TrackingConfig(_Frozen):
    tracking_uri: StoreUri = Field(
        None,
        description="MLflow tracking URI, also the registry's (default: the embedded store "
        "mlruns/mlflow.db in the repository; MLFLOW_TRACKING_URI is read too)",
    )
    artifact_root: StoreUri = Field(
        None,
        description="where new experiments keep artifacts (default: artifacts/ beside the embedded "
        "store; the server's choice with a tracking server)",
    )
    experiment_name: str = Field("imdb-sentiment", min_length=1, description="MLflow experiment")
    model_name: str = Field("imdb-sentiment", min_length=1, description="registered model name")
    promotion_alpha: float = Field(
        0.05,
        gt=0.0,
        le=1.0,
        description="promote only if McNemar's exact test on the same test reviews gives p below this; "
        "1 turns the test off",
    )
    min_gain: float = Field(
        0.0, ge=0.0, le=1.0, description="test accuracy a challenger must gain over the champion to promote"
    )
    min_accuracy: float = Field(
        0.0, ge=0.0, le=1.0, description="test accuracy any model needs to become champion (a floor)"
    )


class ServeConfig(_Frozen):
    """The HTTP scoring server (``sentiment serve``): where it listens and what it accepts."""

    host: str = Field("127.0.0.1", min_length=1, description="address the scoring server listens on")
    port: int = Field(5001, ge=1, le=65535, description="port the scoring server listens on")
    workers: int = Field(1, ge=1, le=32, description="scoring server processes")
    max_body_bytes: int = Field(
        5 * 2**20, ge=1024, description="largest request body accepted; larger gets 413"
    )
    max_reviews: int = Field(2000, ge=1, description="most reviews in one request; more gets 413")
    max_review_chars: int = Field(
        20_000,
        ge=100,
        description="characters kept per review, from its end (the model reads only its last max_len tokens)",
    )
    max_concurrency: int = Field(
        32,
        ge=1,
        description="requests being read or scored at once per server process (scored together "
        "in one model call); more get 503",
    )
    request_timeout: float = Field(
        5.0,
        gt=0,
        le=3600,
        description="seconds a client has to send a whole request, headers and body, from its first "
        "byte; a slower one gets 408 and is disconnected, freeing its max_concurrency slot",
    )


# Settings that change what a trial's value means: trials made under other ones do not compare, so a
# study's record holds them (pipeline/search.py) and the default study name is derived from them.
# The data settings too: the same archive prepared otherwise is other data.
STUDY_SETTINGS: dict[str, set[str]] = {
    "data": {"vocab_size", "max_len", "val_fraction", "seed", "limit"},
    "search": {"epochs", "subset", "max_len", "pruner"},
    "train": {"batch_size", "patience", "monitor", "buckets"},
}
# What else draws the search space (``search.suggest_hparams``): in the default name's digest too.
_SPACE_SETTINGS = {"search": {"cells", "bidirectional"}}


class PipelineConfig(_Frozen):
    data: DataConfig = DataConfig()
    train: TrainConfig = TrainConfig()
    search: SearchConfig = SearchConfig()
    tracking: TrackingConfig = TrackingConfig()
    serve: ServeConfig = ServeConfig()

    @model_validator(mode="after")
    def _default_study_name(self) -> PipelineConfig:
        """The sample profile and the full-data one used to share the study ``imdb-sentiment``:
        the second `sentiment run` of the README was refused (another search space). The default
        name now follows what a study's record compares, so it can only resume a study it fits."""
        if self.search.study_name is None:
            include = {k: STUDY_SETTINGS.get(k, set()) | _SPACE_SETTINGS.get(k, set()) for k in STUDY_SETTINGS}
            settings = json.dumps(self.model_dump(mode="json", include=include), sort_keys=True)
            name = f"imdb-sentiment-{hashlib.sha256(settings.encode()).hexdigest()[:8]}"
            object.__setattr__(self, "search", self.search.model_copy(update={"study_name": name}))
        return self

    def flat_params(self) -> dict[str, Any]:
        """Dotted keys (``data.max_len``) for logging the config as MLflow params: what a run
        trained with and where it logged (the scoring server's settings are not part of it)."""
        return _flatten(self.model_dump(mode="json", exclude={"serve"}))


SECTIONS: dict[str, type[BaseModel]] = {
    name: field.annotation for name, field in PipelineConfig.model_fields.items()
}


class ConfigError(ValueError):
    """An invalid setting; the message names the field (``data.vocab_size``) and where it came from
    (a store URI in it without its password)."""

    def __init__(self, message: str) -> None:
        super().__init__(redact(message))


# --- names: one per setting, derived from the field ------------------------------------------

# A leaf name used by two sections keeps the plain flag in its home section (``--max-len`` is
# ``data.max_len``); elsewhere the flag carries the section (``--search-max-len``).
_HOME = {"max_len": "data", "epochs": "train", "workers": "search"}
# Not --bidirectional: that is the model's own (``sentiment train --bidirectional``).
_FLAG_NAMES = {"data.path": "--data", "search.cells": "--cell", "search.bidirectional": "--search-bidirectional"}


def fields() -> Iterator[tuple[str, FieldInfo]]:
    """Every setting as (dotted name, pydantic field), section by section."""
    for section, model in SECTIONS.items():
        for name, field in model.model_fields.items():
            yield f"{section}.{name}", field


def flag(dotted: str, sections: Iterable[str] | None = None) -> str:
    """The CLI flag of a setting: ``data.max_len`` → ``--max-len``, ``search.epochs`` →
    ``--search-epochs``. Among ``sections`` (a command's; default all) a leaf name no other
    section shares keeps its plain flag: ``sentiment serve --workers`` is ``serve.workers``."""
    if dotted in _FLAG_NAMES:
        return _FLAG_NAMES[dotted]
    section, leaf = dotted.split(".", 1)
    among = SECTIONS if sections is None else sections
    shared = sum(leaf in SECTIONS[name].model_fields for name in among) > 1
    name = f"{section}_{leaf}" if shared and _HOME.get(leaf) != section else leaf
    return "--" + name.replace("_", "-")


def env_var(dotted: str) -> str:
    """The environment variable of a setting: ``data.max_len`` → ``SENTIMENT_DATA_MAX_LEN``."""
    return ENV_PREFIX + dotted.replace(".", "_").upper()


# --- building the config -------------------------------------------------------------------


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _tree(overrides: Mapping[str, Any] | None) -> dict[str, Any]:
    """Dotted keys to a nested dict; None values are skipped (an option not given)."""
    tree: dict[str, Any] = {}
    for dotted, value in (overrides or {}).items():
        if value is None:
            continue
        *parents, leaf = dotted.split(".")
        node = tree
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return tree


def build_config(overrides: Mapping[str, Any] | None = None) -> PipelineConfig:
    """The config from dotted overrides alone (``{"data.max_len": 200}``), no environment or file.

    Raises ConfigError naming each invalid field.
    """
    try:
        return PipelineConfig.model_validate(_tree(overrides))
    except ValidationError as error:
        raise ConfigError(describe_validation_error(error, overrides)) from None


def _settings_class(config_file: Path | None) -> type:
    """The config's sources in precedence order, as pydantic-settings sees them.

    Imported here, not at the top: registry consumers load ``pipeline.data`` (and so this module)
    with MLflow alone, which does not bring pydantic-settings.
    """
    from pydantic_settings import (
        BaseSettings,
        PydanticBaseSettingsSource,
        SettingsConfigDict,
        TomlConfigSettingsSource,
        YamlConfigSettingsSource,
    )

    class MlflowEnv(PydanticBaseSettingsSource):
        """MLflow's own ``MLFLOW_TRACKING_URI``, below ``SENTIMENT_TRACKING_TRACKING_URI``."""

        def get_field_value(self, field, field_name):  # unused: __call__ returns the whole tree
            return None, field_name, False

        def __call__(self) -> dict[str, Any]:
            uri = os.environ.get("MLFLOW_TRACKING_URI")
            return {"tracking": {"tracking_uri": uri}} if uri else {}

    class Settings(BaseSettings):
        model_config = SettingsConfigDict(
            env_prefix=ENV_PREFIX, env_nested_delimiter="_", env_nested_max_split=1, extra="forbid"
        )
        data: DataConfig = DataConfig()
        train: TrainConfig = TrainConfig()
        search: SearchConfig = SearchConfig()
        tracking: TrackingConfig = TrackingConfig()
        serve: ServeConfig = ServeConfig()

        @classmethod
        def settings_customise_sources(
            cls, settings_cls, init_settings, env_settings, dotenv_settings, file_secret_settings
        ):
            files: list[PydanticBaseSettingsSource] = []
            if config_file is not None and config_file.suffix == ".toml":
                files.append(TomlConfigSettingsSource(settings_cls, toml_file=config_file))
            elif config_file is not None:
                files.append(YamlConfigSettingsSource(settings_cls, yaml_file=config_file))
            return (init_settings, env_settings, MlflowEnv(settings_cls), *files)

    return Settings


def load_config(
    options: Mapping[str, Any] | None = None,
    config_file: Path | None = None,
    sections: Iterable[str] | None = None,
) -> PipelineConfig:
    """The config from dotted ``options`` > ``SENTIMENT_*`` variables > ``config_file`` > defaults.

    ``config_file`` is YAML (``.yaml``/``.yml``) or TOML (``.toml``) shaped like the config tree
    (``data: {max_len: 200}``). Raises ConfigError naming each invalid field and its source, or
    the file when it cannot be read.
    """
    if config_file is not None:
        config_file = Path(config_file)
        if config_file.suffix not in (".yaml", ".yml", ".toml"):
            raise ConfigError(f"config file {config_file}: use a .yaml, .yml or .toml file")
        if not config_file.is_file():
            raise ConfigError(f"config file not found: {config_file}")
    try:
        loaded = _settings_class(config_file)(**_tree(options))
    except ValidationError as error:
        raise ConfigError(describe_validation_error(error, options, config_file, sections)) from None
    except Exception as error:  # a file that is not valid YAML/TOML
        if config_file is None:
            raise
        first_line = str(error).strip().splitlines()[0]
        raise ConfigError(
            f"config file {config_file}: not valid {config_file.suffix[1:]}: {first_line}"
        ) from None
    return PipelineConfig.model_validate(loaded.model_dump(exclude_unset=True))


def describe_validation_error(
    error: ValidationError,
    options: Mapping[str, Any] | None = None,
    config_file: Path | None = None,
    sections: Iterable[str] | None = None,
) -> str:
    """One line per problem: the field, its flag, the message, the value and where it came from."""
    lines = []
    for problem in error.errors():
        parts = [str(part) for part in problem["loc"] if not isinstance(part, int)]
        dotted = ".".join(parts)
        field = ".".join(parts[:2])
        line = f"invalid option {dotted} ({flag(field, sections)}): {problem['msg']} (got {problem.get('input')!r})"
        source = _source(field, options, config_file)
        lines.append(line + (f" from {source}" if source else ""))
    return "\n".join(lines)


def _source(field: str, options: Mapping[str, Any] | None, config_file: Path | None) -> str | None:
    if options is not None and options.get(field) is not None:
        return None  # the option the user typed: the flag already says it
    if env_var(field) in os.environ:
        return env_var(field)
    if field == "tracking.tracking_uri" and "MLFLOW_TRACKING_URI" in os.environ:
        return "MLFLOW_TRACKING_URI"
    return str(config_file) if config_file is not None else None


def run_params(
    hparams: HParams, cfg: PipelineConfig, effective_vocab_size: int | None = None
) -> dict[str, Any]:
    """The params every trial and final run logs, under the same names: compare runs side by side.

    ``vocab_size`` is the configured cap; ``vocab_size_effective`` the embedding's input size
    (the words found, plus padding and out-of-vocabulary ids), when known.
    """
    params = {
        **hparams.model_dump(),
        "vocab_size": cfg.data.vocab_size,
        "max_len": cfg.data.max_len,
        "batch_size": cfg.train.batch_size,
    }
    if effective_vocab_size is not None:
        params["vocab_size_effective"] = effective_vocab_size
    return params
