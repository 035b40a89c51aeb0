"""The only module that touches the MLflow model registry: register, compare, promote, describe.

A new version carries a handful of tags people filter on (``VERSION_TAGS``: model kind, test
accuracy, dataset digest; then the promotion decision) and a model card (its description: data,
metrics, validation numbers, hyperparameters, intended use and limitations, the decision) from
the moment it exists. It is then compared with the current champion *on the same test reviews*:
the champion's per-review correctness comes from the artifact its training run holds for this
very split (``registry/<name>/v<version>/correct-<split digest>.json``), else the champion is loaded, re-scored
and that artifact written. The comparison is McNemar's exact test on the discordant pairs, plus an optional
minimum accuracy gain (``TrackingConfig.promotion_alpha`` / ``min_gain``).

The ``champion`` alias moves last, once, under the stores' alias lock, and only if the
champion is still the one compared against; otherwise the comparison is redone against the new
champion, so two runs finishing together never leave the alias on the worse model. If anything
fails between creating the version and moving the alias, the version is deleted and the previous
champion stays.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import metadata
from typing import Any

import numpy as np
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from scipy.stats import binomtest

from pipeline.config import HParams, PipelineConfig, TrackingConfig
from pipeline.evaluate import THRESHOLD
from pipeline.predict import scorer_for
from pipeline.secrets import redact
from pipeline.stores import Stores, mlflow_global_uri
from pipeline.tracking import param_value

log = logging.getLogger(__name__)

CHAMPION = "champion"
METRIC = "test_accuracy"
PREVIOUS_TAG = "previous_champion"
# The version tags: what people filter the versions table on. Everything else is in the card.
VERSION_TAGS = ("model_kind", METRIC, "dataset_digest")
# Per-review correctness of a version, on its training run (one run may back several versions).
CORRECT_ARTIFACT = "registry/{name}/v{version}/correct-{digest}.json"
_ATTEMPTS = 5


class RegistryError(RuntimeError):
    """A registry operation that cannot proceed (unknown version, nothing to roll back to)."""


@dataclass(frozen=True)
class TestSplit:
    """The labelled test reviews every version is compared on."""

    __test__ = False  # not a pytest test class

    texts: Sequence[str]
    labels: np.ndarray  # (n,) 0/1

    @property
    def digest(self) -> str:
        digest = hashlib.sha256()
        for text, label in zip(self.texts, np.asarray(self.labels).astype(int), strict=True):
            digest.update(f"{label}\0{text}\0".encode())
        return digest.hexdigest()[:32]


@dataclass(frozen=True)
class PromotionDecision:
    version: str
    promoted: bool
    reason: str
    accuracy: float
    champion_version: str | None  # the champion before this decision
    champion_accuracy: float | None
    p_value: float | None = None  # McNemar exact, two-sided; None without a paired comparison

    def tags(self) -> dict[str, str]:
        """What was decided when the version was registered, as history: whether it is the
        champion *now* is the alias's to say (a tag "champion" would outlive the alias moving on)."""
        if self.champion_version is None:
            decided = "promoted: first champion" if self.promoted else "not promoted: no champion yet"
            versus = "no champion to compare with"
        else:
            decided = f"promoted over v{self.champion_version}" if self.promoted else (
                f"not promoted: v{self.champion_version} stayed champion"
            )
            versus = f"{self.accuracy:.4f} vs v{self.champion_version} {self.champion_accuracy:.4f}"
            if self.p_value is not None:
                versus += f" on the same test reviews (McNemar p={self.p_value:.3g})"
        return {"decision": decided, "vs_champion": versus}

    def card(self) -> str:
        """The decision's section of the version card."""
        return "\n".join(
            [
                "## Promotion decision",
                f"- decision: {'promoted to ' + CHAMPION if self.promoted else 'kept as challenger'}",
                f"- reason: {self.reason}",
                f"- this version's test accuracy: {self.accuracy:.4f}",
                f"- champion compared against: {_text(self.champion_version)}"
                f" (test accuracy {_text(self.champion_accuracy)})",
                f"- p-value: {_text(self.p_value)}",
            ]
        )


def _text(value: Any) -> str:
    if value is None:
        return "none"
    return f"{value:.6g}" if isinstance(value, float) else str(value)


# --- the statistics: pure functions -----------------------------------------------------------


def mcnemar_exact(challenger_correct: np.ndarray, champion_correct: np.ndarray) -> float:
    """Two-sided p-value of McNemar's exact test: a binomial test on the discordant pairs."""
    challenger = np.asarray(challenger_correct, dtype=bool)
    champion = np.asarray(champion_correct, dtype=bool)
    if challenger.shape != champion.shape:
        raise ValueError(f"paired test needs equal lengths, got {challenger.shape} and {champion.shape}")
    only_challenger = int(np.sum(challenger & ~champion))
    only_champion = int(np.sum(~challenger & champion))
    if only_challenger + only_champion == 0:
        return 1.0
    return float(binomtest(only_challenger, only_challenger + only_champion, 0.5).pvalue)


def compare(
    version: str,
    challenger_correct: np.ndarray,
    champion_version: str,
    champion_correct: np.ndarray,
    alpha: float,
    min_gain: float,
) -> PromotionDecision:
    """Promote when the challenger is more accurate by ≥ ``min_gain`` and McNemar's p < ``alpha``.

    ``alpha`` of 1 turns the significance test off (the gain alone decides).
    """
    accuracy = float(np.mean(challenger_correct))
    champion_accuracy = float(np.mean(champion_correct))
    p_value = mcnemar_exact(challenger_correct, champion_correct)
    gain = accuracy - champion_accuracy
    versus = f"{accuracy:.4f} vs champion v{champion_version} {champion_accuracy:.4f} on {len(challenger_correct)} test reviews"
    if gain <= 0:
        promoted, why = False, "not more accurate"
    elif gain < min_gain:
        promoted, why = False, f"gain {gain:.4f} below min_gain {min_gain}"
    elif alpha < 1 and p_value >= alpha:
        promoted, why = False, f"gain {gain:.4f} not significant (McNemar p={p_value:.4g} ≥ {alpha})"
    else:
        promoted, why = True, f"gain {gain:.4f}, McNemar p={p_value:.4g}"
    reason = f"{'promoted' if promoted else 'kept champion'}: {why}; {versus}"
    return PromotionDecision(
        version, promoted, reason, accuracy, champion_version, champion_accuracy, p_value
    )


def first_champion(version: str, correct: np.ndarray, labels: np.ndarray, alpha: float) -> PromotionDecision:
    """With no champion to compare against, the model must still beat always answering the test
    split's majority class: an exact one-sided binomial test of its correct answers against the
    majority share, at the same ``alpha`` as McNemar's (1: more accurate is enough)."""
    correct = np.asarray(correct, dtype=bool)
    positive_share = float(np.mean(np.asarray(labels).astype(int)))
    majority = max(positive_share, 1 - positive_share)
    accuracy = float(np.mean(correct))
    p_value = float(binomtest(int(correct.sum()), len(correct), majority, alternative="greater").pvalue)
    if accuracy <= majority:
        promoted, why = False, "not more accurate than always answering the majority class"
    elif alpha < 1 and p_value >= alpha:
        promoted, why = (
            False,
            f"not significantly above the majority class (binomial p={p_value:.4g} ≥ {alpha})",
        )
    else:
        promoted, why = True, f"no champion yet; above the majority class, binomial p={p_value:.4g}"
    versus = f"{accuracy:.4f} vs majority class {majority:.4f} on {len(correct)} test reviews"
    reason = f"{'promoted' if promoted else 'not promoted'}: {why}; {versus}"
    return PromotionDecision(version, promoted, reason, accuracy, None, None, p_value)


def pack_correct(correct: np.ndarray) -> str:
    """Per-review correctness as a compact tag value (zlib + base64 of the bits)."""
    bits = np.packbits(np.asarray(correct, dtype=bool))
    return f"{len(correct)}:" + base64.b64encode(zlib.compress(bits.tobytes(), 9)).decode()


def unpack_correct(value: str) -> np.ndarray:
    count, payload = value.split(":", 1)
    bits = np.frombuffer(zlib.decompress(base64.b64decode(payload)), dtype=np.uint8)
    return np.unpackbits(bits)[: int(count)].astype(bool)


# --- registering and promoting ----------------------------------------------------------------


def register_and_promote(
    stores: Stores,
    cfg: TrackingConfig,
    model_uri: str,
    run_id: str,
    evidence: dict[str, Any],
    *,
    test: TestSplit | None = None,
    correct: np.ndarray | None = None,
) -> PromotionDecision:
    """Register ``model_uri`` as a new version of ``cfg.model_name`` and promote it if earned.

    ``evidence`` must hold ``test_accuracy``; it feeds the model card, and its ``VERSION_TAGS``
    become the version's tags. ``test`` (the test reviews and labels) makes the comparison paired: the
    challenger's per-review ``correct`` on it (scored through the logged model when not given)
    against the champion's on the same reviews. Without ``test`` the stored test accuracies are
    compared, unpaired. Raises whatever failed, after deleting the new version.
    """
    client = stores.mlflow_client()
    _ensure_registered_model(client, cfg.model_name, stores.tracking_uri)
    # Floats to six significant digits, as params and metrics are (0.7192307692307692 → 0.719231).
    tags = {key: param_value(evidence[key]) for key in VERSION_TAGS if key in evidence}
    if test is not None:  # which reviews test_accuracy was measured on: versions may differ
        tags["test_set"] = f"{len(test.texts)} reviews, digest {test.digest[:12]}"
    version = _create_version(stores, client, cfg.model_name, model_uri, run_id, tags)
    try:
        describe_version(client, cfg.model_name, version, evidence, test, stores.tracking_uri)
        if test is not None:
            correct = _score(stores, model_uri, test) if correct is None else np.asarray(correct, dtype=bool)
            _record_evaluation(client, cfg.model_name, version, test, correct)
        decision = _promote_when_earned(stores, client, cfg, version, float(evidence[METRIC]), test, correct)
        describe_version(client, cfg.model_name, version, evidence, test, stores.tracking_uri, decision)
    except BaseException:
        log.error("registration of %s v%s failed; deleting the version", cfg.model_name, version)
        client.delete_model_version(cfg.model_name, version)
        raise
    log.info("%s v%s: %s", cfg.model_name, version, decision.reason)
    return decision


def _create_version(
    stores: Stores, client: MlflowClient, name: str, model_uri: str, run_id: str, tags: dict[str, str]
) -> str:
    """A new version of ``name`` for ``model_uri``. A logged model's URI (``models:/<model_id>``)
    becomes the version's source, and the logged model lists the version (the ``mlflow.modelVersions``
    tag ``mlflow.register_model`` writes): the UI links both ways."""
    import json

    from mlflow.utils.mlflow_tags import MLFLOW_MODEL_VERSIONS

    # The registry store resolves models:/<id> through MLflow's global tracking URI.
    # A tracking server checks that the source belongs to ``model_id``: pass it, as register_model does.
    model_id = model_uri.removeprefix("models:/") if model_uri.startswith("models:/m-") else None
    with mlflow_global_uri(stores.tracking_uri):
        created = client.create_model_version(name, model_uri, run_id=run_id, tags=tags, model_id=model_id)
    version = str(created.version)
    if model_id is not None:
        listed = json.loads(client.get_logged_model(model_id).tags.get(MLFLOW_MODEL_VERSIONS, "[]"))
        listed.append({"name": name, "version": version})
        client.set_logged_model_tags(model_id, {MLFLOW_MODEL_VERSIONS: json.dumps(listed)})
    return version


def _promote_when_earned(
    stores: Stores,
    client: MlflowClient,
    cfg: TrackingConfig,
    version: str,
    accuracy: float,
    test: TestSplit | None,
    correct: np.ndarray | None,
) -> PromotionDecision:
    """Decide against the current champion; move the alias only if it is still that champion."""
    for _ in range(_ATTEMPTS):
        current = champion(client, cfg.model_name)
        decision = _decide(stores, client, cfg, version, accuracy, current, test, correct)
        for key, value in decision.tags().items():
            client.set_model_version_tag(cfg.model_name, version, key, value)
        with stores.alias_lock(cfg.model_name):
            if champion(client, cfg.model_name) != current:
                log.info("champion of %s moved while deciding; deciding again", cfg.model_name)
                continue
            if decision.promoted:
                _move_alias(client, cfg.model_name, version, current[0] if current else None)
            return decision
    raise RegistryError(f"the champion of {cfg.model_name} kept moving; gave up after {_ATTEMPTS} tries")


def _decide(
    stores: Stores,
    client: MlflowClient,
    cfg: TrackingConfig,
    version: str,
    accuracy: float,
    current: tuple[str, float] | None,
    test: TestSplit | None,
    correct: np.ndarray | None,
) -> PromotionDecision:
    if accuracy < cfg.min_accuracy:
        champion_version, champion_accuracy = current or (None, None)
        reason = f"kept champion: {METRIC} {accuracy:.4f} below min_accuracy {cfg.min_accuracy}"
        return PromotionDecision(version, False, reason, accuracy, champion_version, champion_accuracy)
    if current is None:
        if test is None or correct is None:
            return PromotionDecision(
                version, True, "promoted: no champion yet (unpaired)", accuracy, None, None
            )
        return first_champion(version, correct, test.labels, cfg.promotion_alpha)
    champion_version, champion_accuracy = current
    if test is None or correct is None:
        return _compare_unpaired(version, accuracy, champion_version, champion_accuracy, cfg.min_gain)
    champion_correct = _evaluation(stores, client, cfg.model_name, champion_version, test)
    return compare(version, correct, champion_version, champion_correct, cfg.promotion_alpha, cfg.min_gain)


def _compare_unpaired(
    version: str, accuracy: float, champion_version: str, champion_accuracy: float, min_gain: float
) -> PromotionDecision:
    gain = accuracy - champion_accuracy
    promoted = gain > 0 and gain >= min_gain
    reason = (
        f"{'promoted' if promoted else 'kept champion'} (unpaired, no test split given): "
        f"{METRIC} {accuracy:.4f} vs champion v{champion_version} {champion_accuracy:.4f}"
    )
    return PromotionDecision(version, promoted, reason, accuracy, champion_version, champion_accuracy)


def _evaluation(stores: Stores, client: MlflowClient, name: str, version: str, test: TestSplit) -> np.ndarray:
    """A version's per-review correctness on ``test``: from its run's artifact, else re-scored
    and recorded."""
    recorded = recorded_correct(client, name, version, test)
    if recorded is not None:
        return recorded
    log.info("re-scoring %s v%s on the current test split (%d reviews)", name, version, len(test.texts))
    correct = _score(stores, f"models:/{name}/{version}", test)
    _record_evaluation(client, name, version, test, correct)
    return correct


def _score(stores: Stores, model_uri: str, test: TestSplit) -> np.ndarray:
    probability = scorer_for(stores, model_uri)(list(test.texts))["probability"].to_numpy()
    return (probability >= THRESHOLD).astype(int) == np.asarray(test.labels).astype(int)


def _record_evaluation(
    client: MlflowClient, name: str, version: str, test: TestSplit, correct: np.ndarray
) -> None:
    """The version's per-review correctness on ``test`` as an artifact of its training run (packed
    bits: 25,000 reviews take about 4 kB), named by the split's digest."""
    record = {
        "split_digest": test.digest,
        "reviews": len(correct),
        "accuracy": round(float(np.mean(correct)), 6),
        "correct": pack_correct(correct),
    }
    run_id = client.get_model_version(name, version).run_id
    client.log_dict(run_id, record, CORRECT_ARTIFACT.format(name=name, version=version, digest=test.digest))


def recorded_correct(client: MlflowClient, name: str, version: str, test: TestSplit) -> np.ndarray | None:
    """The per-review correctness on ``test`` recorded for ``name`` v``version``, or None."""
    import json
    import tempfile
    from pathlib import Path

    run_id = client.get_model_version(name, version).run_id
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = client.download_artifacts(run_id, CORRECT_ARTIFACT.format(name=name, version=version, digest=test.digest), tmp)
        except (MlflowException, OSError):
            return None
        record = json.loads(Path(path).read_text())
    return unpack_correct(record["correct"]) if record.get("split_digest") == test.digest else None


def _move_alias(client: MlflowClient, name: str, version: str, previous: str | None) -> None:
    """Point ``champion`` at ``version``, remembering the one it replaces (for rollback)."""
    if previous is not None and previous != version:
        client.set_model_version_tag(name, version, PREVIOUS_TAG, previous)
    client.set_registered_model_alias(name, CHAMPION, version)


def champion(client: MlflowClient, name: str) -> tuple[str, float] | None:
    """(version, test accuracy) of the current champion, or None."""
    try:
        version = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None
    return str(version.version), float(version.tags.get(METRIC, "nan"))


# --- moving the alias by hand ---------------------------------------------------------------


def promote(stores: Stores, cfg: TrackingConfig, version: str, reason: str) -> str | None:
    """Make ``version`` the champion by hand, recording ``reason`` on it; returns the old champion.

    Raises RegistryError when the version does not exist.
    """
    client = stores.mlflow_client()
    _require_version(client, cfg.model_name, version)
    with stores.alias_lock(cfg.model_name):
        current = champion(client, cfg.model_name)
        previous = current[0] if current else None
        client.set_model_version_tag(cfg.model_name, version, "manual_promotion_reason", reason)
        _move_alias(client, cfg.model_name, version, previous)
    log.info("%s: champion v%s → v%s by hand (%s)", cfg.model_name, previous, version, reason)
    return previous


def rollback(stores: Stores, cfg: TrackingConfig, reason: str, version: str | None = None) -> tuple[str, str]:
    """Move ``champion`` back to ``version`` (default: the one the current champion replaced).

    Records ``reason`` on both versions; returns (old champion, new champion). Raises
    RegistryError when there is no champion or nothing to roll back to.
    """
    client = stores.mlflow_client()
    with stores.alias_lock(cfg.model_name):
        current = champion(client, cfg.model_name)
        if current is None:
            raise RegistryError(f"{cfg.model_name} has no {CHAMPION} to roll back")
        tags = client.get_model_version(cfg.model_name, current[0]).tags
        target = version or tags.get(PREVIOUS_TAG)
        if not target:
            raise RegistryError(f"{cfg.model_name} v{current[0]} replaced no champion; name a --version")
        _require_version(client, cfg.model_name, target)
        client.set_model_version_tag(cfg.model_name, current[0], "rolled_back_reason", reason)
        client.set_model_version_tag(cfg.model_name, target, "manual_promotion_reason", f"rollback: {reason}")
        client.set_registered_model_alias(cfg.model_name, CHAMPION, target)
    log.info("%s: rolled champion back v%s → v%s (%s)", cfg.model_name, current[0], target, reason)
    return current[0], str(target)


def _require_version(client: MlflowClient, name: str, version: str) -> None:
    try:
        client.get_model_version(name, version)
    except MlflowException:
        raise RegistryError(f"{name} has no version {version}") from None


# --- the model card -------------------------------------------------------------------------


def _ensure_registered_model(client: MlflowClient, name: str, tracking_uri: str) -> None:
    """Create the registered model, or refresh its card; another process creating it at the same
    moment is fine."""
    try:
        client.create_registered_model(name, description=model_card(name, tracking_uri))
    except MlflowException as error:
        if error.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
        client.update_registered_model(name, description=model_card(name, tracking_uri))


def pipeline_version() -> str:
    try:
        return metadata.version("imdb-sentiment-pipeline")
    except metadata.PackageNotFoundError:
        return "unknown"


def model_card(name: str, tracking_uri: str) -> str:
    """Markdown for the registered model: what it is and how to call its champion."""
    return "\n".join(
        [
            f"# {name}: IMDB review sentiment",
            "",
            "A Keras recurrent network (SimpleRNN/LSTM/GRU, chosen by an Optuna search), averaged with a"
            " bag-of-bigrams model when that scores higher on validation, that reads the raw text of an"
            " English movie review and returns the probability that it is positive.",
            "Tokenization travels inside the model (MLflow pyfunc), so consumers need no project code.",
            "Each version's description holds its data, test metrics and hyperparameters; the"
            f" `{CHAMPION}` alias marks the version that won a paired test (McNemar) on the test split.",
            "",
            _usage(f"models:/{name}@{CHAMPION}", tracking_uri),
        ]
    )


# What the version is beyond the RNN's hyperparameters (stages.FinalModel.details).
_MODEL_DETAILS = ("model_kind", "bigram_buckets", "bigram_dim", "vocab_size_effective")


def version_card(
    name: str,
    version: str,
    evidence: dict[str, Any],
    test: TestSplit | None,
    tracking_uri: str,
    decision: PromotionDecision | None = None,
) -> str:
    """Markdown for one version: intended use and limitations, data, test and validation metrics,
    hyperparameters, the promotion decision (once made), provenance, usage."""
    metrics = {k: v for k, v in evidence.items() if k.startswith("test_") and not k.endswith("_share")}
    validation = {k: v for k, v in evidence.items() if k.startswith("val_") and _is_number(v)}
    hparams = {
        k: evidence[k]
        for k in (*HParams.model_fields, "vocab_size", "max_len", "batch_size", *_MODEL_DETAILS)
        if k in evidence
    }
    sizes = {k: evidence[k] for k in ("n_train", "n_val", "n_test") if k in evidence}
    if test is not None:
        sizes.setdefault("n_test", len(test.texts))
    rows = [
        f"# {name} v{version}",
        "",
        f"IMDB review sentiment: raw review text in, P(positive) and a label (threshold {THRESHOLD}) out.",
        "",
        "## Intended use",
        "Sorting or counting English movie and TV reviews by overall sentiment, in batches or behind an"
        " HTTP endpoint, where a wrong answer on one review costs little.",
        "",
        "## Limitations",
        f"- trained on {evidence.get('n_train', 'the')} IMDB reviews (aclImdb): English only, movie"
        " reviews only, polar ones (the dataset leaves out ratings 5 and 6); other domains, languages"
        " and neutral or mixed text will score unreliably.",
        f"- reads at most the last {evidence.get('max_len', 'max_len')} tokens of a review (longer ones"
        " are truncated from the front) and only the words of its vocabulary"
        f" ({evidence.get('vocab_size_effective', evidence.get('vocab_size', '?'))} ids); others are unknown.",
        "- probabilities are not calibrated guarantees: see the run's `plots/calibration.png`, and"
        " `evaluation/confident_errors.json` for the reviews it gets most confidently wrong.",
        "",
        "## Data",
        f"- dataset digest: `{evidence.get('dataset_digest', 'unknown')}` (aclImdb)",
        *(f"- {key}: {value}" for key, value in sizes.items()),
        *([f"- test split digest: `{test.digest}`"] if test is not None else []),
        "",
        "## Test metrics",
        *(f"- {key}: {float(value):.4f}" for key, value in metrics.items()),
        "",
        "## Validation (what chose the model)",
        *(f"- {key}: {float(value):.4f}" for key, value in validation.items()),
        "",
        "## Hyperparameters",
        *(f"- {key}: {value}" for key, value in hparams.items()),
        "",
        *([decision.card(), ""] if decision is not None else []),
        "## Provenance",
        f"- training run: `{evidence.get('run_id', 'unknown')}`",
        f"- pipeline: imdb-sentiment-pipeline {pipeline_version()}",
        "",
        _usage(f"models:/{name}/{version}", tracking_uri),
    ]
    return "\n".join(rows)


def describe_version(
    client: MlflowClient,
    name: str,
    version: str,
    evidence: dict[str, Any],
    test: TestSplit | None,
    tracking_uri: str,
    decision: PromotionDecision | None = None,
) -> None:
    description = version_card(name, version, evidence, test, tracking_uri, decision)
    client.update_model_version(name, version, description=description)


def _is_number(value: Any) -> bool:
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return True


def _usage(uri: str, tracking_uri: str) -> str:
    return f"""## How to call it
Python (any environment with mlflow, keras and tensorflow):
```python
import mlflow, pandas as pd
mlflow.set_tracking_uri("{redact(tracking_uri)}")  # the store holding the model
model = mlflow.pyfunc.load_model("{uri}")
model.predict(pd.DataFrame({{"text": ["A wonderful film.", "Dull and far too long."]}}))
# → DataFrame(probability, label)
```
Batch scoring of a CSV/JSONL/Parquet file with a `text` column, or lines on stdin:
```bash
sentiment predict --model "{uri}" --input reviews.csv --output scored.csv
```
HTTP:
```bash
sentiment serve "{uri}" --port 5001     # or: mlflow models serve -m "{uri}" --env-manager local
curl -s 127.0.0.1:5001/invocations -H 'Content-Type: application/json' \\
  -d '{{"inputs": ["A wonderful film.", "Dull and far too long."]}}'
```"""


# --- scheduled retraining: is the champion already trained on this data and config? -------

# Where things live, not what is trained: a moved cache or store does not call for retraining.
_PLACE_PARAMS = (
    "data.path",
    "data.cache_dir",
    "search.storage",
    "search.workers",
    "search.heartbeat_seconds",
)
_PLACE_PREFIXES = ("tracking.",)


@dataclass(frozen=True)
class ChampionCheck:
    """How the current champion's training run compares with this data and config."""

    unchanged: bool
    reason: str
    champion_version: str | None = None
    champion_run_id: str | None = None


def training_params(cfg: PipelineConfig) -> dict[str, str]:
    """The config as logged params, less where data and stores live: what defines the training."""
    return {
        key: param_value(value)
        for key, value in cfg.flat_params().items()
        if key not in _PLACE_PARAMS and not key.startswith(_PLACE_PREFIXES)
    }


def check_champion(stores: Stores, cfg: PipelineConfig, dataset_digest: str) -> ChampionCheck:
    """Compare the dataset digest and the training params with the champion's training run.

    Reads the ``champion`` alias of ``cfg.tracking.model_name`` (its ``dataset_digest`` tag) and
    the params of the run that trained it. Raises MlflowException when the store cannot be read.
    """
    client = stores.mlflow_client()
    try:
        version = client.get_model_version_by_alias(cfg.tracking.model_name, CHAMPION)
    except MlflowException as error:
        if error.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return ChampionCheck(False, f"no {CHAMPION} for model '{cfg.tracking.model_name}' yet")
        raise
    run_id = version.tags.get("run_id") or version.run_id
    logged = client.get_run(run_id).data.params
    wanted = training_params(cfg)
    changed = sorted(key for key, value in wanted.items() if logged.get(key) != value)
    who = {"champion_version": str(version.version), "champion_run_id": run_id}
    if version.tags.get("dataset_digest") != dataset_digest:
        return ChampionCheck(False, f"dataset changed since champion v{version.version}", **who)
    if changed:
        shown = ", ".join(f"{key} {logged.get(key)} → {wanted[key]}" for key in changed[:5])
        return ChampionCheck(False, f"config changed since champion v{version.version}: {shown}", **who)
    reason = f"dataset and config unchanged since champion v{version.version} (run {run_id})"
    return ChampionCheck(True, reason, **who)
