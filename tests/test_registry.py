"""Promotion: a paired test on the same reviews, the alias moved last and once, by hand too."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pipeline import registry
from pipeline.registry import TestSplit, compare, first_champion, mcnemar_exact, pack_correct, unpack_correct

# --- the statistics -----------------------------------------------------------------------


def test_mcnemar_counts_only_discordant_pairs():
    champion = np.array([True] * 50 + [False] * 50)
    challenger = champion.copy()
    assert mcnemar_exact(challenger, champion) == 1.0
    challenger[50:60] = True  # 10 reviews only the challenger gets right, none the other way
    assert mcnemar_exact(challenger, champion) == pytest.approx(2 * 0.5**10)


def test_a_small_gain_is_not_promoted_but_a_significant_one_is():
    champion = np.zeros(200, dtype=bool)
    champion[:140] = True
    small = champion.copy()
    small[140:143] = True  # +1.5 points: p = 0.25
    kept = compare("2", small, "1", champion, alpha=0.05, min_gain=0.0)
    assert not kept.promoted and "not significant" in kept.reason and kept.p_value == pytest.approx(0.25)
    large = champion.copy()
    large[140:160] = True
    promoted = compare("2", large, "1", champion, alpha=0.05, min_gain=0.0)
    assert promoted.promoted and promoted.p_value < 0.05
    assert promoted.accuracy == pytest.approx(0.8) and promoted.champion_accuracy == pytest.approx(0.7)


def test_min_gain_alone_decides_when_the_test_is_off():
    champion = np.zeros(100, dtype=bool)
    champion[:70] = True
    better = champion.copy()
    better[70:72] = True
    assert compare("2", better, "1", champion, alpha=1.0, min_gain=0.0).promoted
    assert not compare("2", better, "1", champion, alpha=1.0, min_gain=0.05).promoted
    assert not compare("2", champion, "1", champion, alpha=1.0, min_gain=0.0).promoted


def test_a_first_champion_must_beat_the_majority_class_significantly():
    labels = np.array([1] * 60 + [0] * 40)  # majority: positive, 0.6
    coin = _with_accuracy(100, 62)
    refused = first_champion("1", coin, labels, alpha=0.05)
    assert not refused.promoted and "not significantly above the majority class" in refused.reason
    assert refused.p_value == pytest.approx(0.382, abs=1e-3)  # P(X ≥ 62), X ~ Binomial(100, 0.6)
    worse = first_champion("1", _with_accuracy(100, 55), labels, alpha=1.0)
    assert not worse.promoted and "majority class" in worse.reason
    good = first_champion("1", _with_accuracy(100, 80), labels, alpha=0.05)
    assert good.promoted and good.p_value < 1e-4 and "0.6000" in good.reason


def test_correctness_packs_into_a_tag_and_back():
    correct = np.random.default_rng(0).random(25_000) > 0.2
    packed = pack_correct(correct)
    assert len(packed) < 8_000
    np.testing.assert_array_equal(unpack_correct(packed), correct)


# --- against a real store -----------------------------------------------------------------


@pytest.fixture(scope="module")
def registered(tmp_path_factory, sample_data):
    from registered_model import register_tiny_model

    return register_tiny_model(tmp_path_factory.mktemp("registry"), sample_data)


def _client(reg):
    return reg.stores.mlflow_client()


def _named(reg, name):
    return reg.cfg.tracking.model_copy(update={"model_name": name})


def _register(reg, cfg, correct, test=None):
    test = test or TestSplit(reg.data.test_texts, reg.data.test.y)
    evidence = {"test_accuracy": float(np.mean(correct)), "run_id": reg.run_id, "dataset_digest": "d"}
    return registry.register_and_promote(
        reg.stores, cfg, reg.model_uri, reg.run_id, evidence, test=test, correct=correct
    )


def _with_accuracy(n, right, seed=0):
    correct = np.zeros(n, dtype=bool)
    correct[np.random.default_rng(seed).permutation(n)[:right]] = True
    return correct


@pytest.mark.integration
def test_versions_and_the_model_carry_a_model_card(registered):
    client = _client(registered)
    version = client.get_model_version("test-model", registered.version)
    for expected in (
        "dataset digest",
        "n_train: 160",
        "test_accuracy",
        "cell: gru",
        "model_kind: rnn+bigrams",
        "imdb-sentiment-pipeline",
        "## Intended use",
        "English only",
        "last 400 tokens",
        "## Promotion decision",
    ):
        assert expected in version.description
    assert 'load_model("models:/test-model/1")' in version.description
    assert "models:/test-model@champion" in client.get_registered_model("test-model").description
    # A handful of tags to filter the versions table on; the rest lives in the card.
    assert set(version.tags) - {"manual_promotion_reason", "previous_champion"} == {
        "model_kind",
        "test_accuracy",
        "dataset_digest",
        "test_set",
        "decision",
        "vs_champion",
    }
    assert version.source.startswith("models:/m-")  # the run's logged model (MLflow 3)
    listed = client.get_logged_model(version.source.removeprefix("models:/")).tags["mlflow.modelVersions"]
    assert {"name": "test-model", "version": registered.version} in json.loads(listed)


@pytest.mark.integration
def test_decision_tags_record_both_accuracies_and_the_p_value(registered):
    cfg = _named(registered, "tags")
    n = len(registered.data.test_texts)
    first = _register(registered, cfg, _with_accuracy(n, int(n * 0.6)))
    assert first.promoted and first.champion_version is None
    better = _with_accuracy(n, n)  # all right: far better
    second = _register(registered, cfg, better)
    assert second.promoted and second.p_value < 0.05 and second.champion_version == first.version
    version = _client(registered).get_model_version("tags", second.version)
    assert version.tags["decision"] == f"promoted over v{first.version}"
    assert version.tags["previous_champion"] == first.version
    assert version.tags["vs_champion"].startswith(f"1.0000 vs v{first.version} 0.6")
    # The first version's tags say what was decided then, not that it is the champion now.
    assert _client(registered).get_model_version("tags", first.version).tags["decision"] == "promoted: first champion"
    card = version.description
    assert "decision: promoted to champion" in card and "this version's test accuracy: 1.0000" in card
    assert f"champion compared against: {first.version} (test accuracy 0.6" in card
    assert f"p-value: {second.p_value:.6g}" in card


@pytest.mark.integration
def test_a_failure_before_the_alias_moves_keeps_the_champion(registered, monkeypatch):
    cfg = _named(registered, "failing")
    n = len(registered.data.test_texts)
    first = _register(registered, cfg, _with_accuracy(n, int(n * 0.7)))

    def broken(*args, **kwargs):
        raise RuntimeError("store went away")

    monkeypatch.setattr(registry, "_move_alias", broken)
    with pytest.raises(RuntimeError, match="store went away"):
        _register(registered, cfg, _with_accuracy(n, n))
    client = _client(registered)
    assert str(client.get_model_version_by_alias("failing", "champion").version) == first.version
    assert [str(v.version) for v in client.search_model_versions("name='failing'")] == [first.version]


@pytest.mark.integration
def test_the_champion_is_rescored_when_the_test_split_changed(registered):
    cfg = registered.cfg.tracking
    half = len(registered.data.test_texts) // 2
    test = TestSplit(registered.data.test_texts[:half], registered.data.test.y[:half])
    decision = _register(registered, cfg, np.ones(half, dtype=bool), test=test)
    rescored = registry.recorded_correct(_client(registered), "test-model", registered.version, test)
    assert rescored is not None  # re-scored on the new split, recorded as an artifact of its run
    np.testing.assert_array_equal(rescored, registered.correct[:half])  # same as in training
    assert decision.champion_accuracy == pytest.approx(float(np.mean(registered.correct[:half])))


@pytest.mark.integration
def test_promote_and_rollback_by_hand_record_the_reason(registered):
    from typer.testing import CliRunner

    from flows.cli import app

    cfg = _named(registered, "manual")
    n = len(registered.data.test_texts)
    first = _register(registered, cfg, _with_accuracy(n, n))
    second = _register(registered, cfg, _with_accuracy(n, n // 2))
    assert not second.promoted
    common = ["--tracking-uri", registered.stores.tracking_uri, "--model-name", "manual"]
    runner = CliRunner()
    result = runner.invoke(app, ["promote", second.version, "--reason", "A/B test won", *common])
    assert result.exit_code == 0, result.output
    client = _client(registered)
    assert str(client.get_model_version_by_alias("manual", "champion").version) == second.version
    assert (
        client.get_model_version("manual", second.version).tags["manual_promotion_reason"] == "A/B test won"
    )
    result = runner.invoke(app, ["rollback", "--reason", "complaints", *common])
    assert result.exit_code == 0, result.output
    assert str(client.get_model_version_by_alias("manual", "champion").version) == first.version
    assert client.get_model_version("manual", second.version).tags["rolled_back_reason"] == "complaints"
    result = runner.invoke(app, ["promote", "99", "--reason", "typo", *common])
    assert result.exit_code == 1 and "no version 99" in result.output


@pytest.mark.integration
def test_an_untrained_model_is_refused_as_the_first_champion_with_the_reason(registered, sample_data):
    """A real, deliberately untrained model scored on the sample: no better than chance."""
    from pipeline.batching import predict_proba
    from pipeline.config import HParams
    from pipeline.evaluate import evaluate
    from pipeline.model import build_model

    untrained = build_model(HParams(cell="gru", units=4, embedding_dim=4), sample_data.vocab_size_effective)
    probability = predict_proba(
        untrained, sample_data.test.x, sample_data.test.lengths, (sample_data.max_len,)
    )
    correct = evaluate(sample_data.test.y, probability).correct
    cfg = _named(registered, "untrained")

    decision = _register(registered, cfg, correct)

    assert not decision.promoted and "majority class" in decision.reason
    client = _client(registered)
    version = client.get_model_version("untrained", decision.version)
    assert version.tags["decision"] == "not promoted: no champion yet" and decision.p_value >= 0.05
    assert "decision: kept as challenger" in version.description and "majority class" in version.description
    with pytest.raises(Exception, match="alias"):
        client.get_model_version_by_alias("untrained", "champion")


@pytest.mark.integration
def test_min_accuracy_is_a_floor_for_every_promotion(registered):
    cfg = _named(registered, "floor").model_copy(update={"min_accuracy": 0.9})
    n = len(registered.data.test_texts)
    decision = _register(registered, cfg, _with_accuracy(n, int(n * 0.85)))
    assert not decision.promoted and "below min_accuracy 0.9" in decision.reason
