"""A tiny model trained on the shared sample and registered in a temporary store (test helper).

Shared by test_registry, test_serve and test_predict; not a test module itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.config import HParams, PipelineConfig, TrainConfig, build_config
from pipeline.data import PreparedData
from pipeline.stores import Stores, resolve


@dataclass(frozen=True)
class Registered:
    cfg: PipelineConfig
    data: PreparedData
    model_uri: str  # runs:/… of the logged pyfunc
    run_id: str
    correct: np.ndarray
    version: str

    @property
    def stores(self) -> Stores:
        return resolve(self.cfg)

    @property
    def champion_uri(self) -> str:
        return f"models:/{self.cfg.tracking.model_name}@champion"

    def score_in_process(self, texts: list[str]) -> pd.DataFrame:
        """The champion's answers through the in-process pyfunc: what CLI and HTTP must match."""
        from pipeline.predict import scorer_for

        return scorer_for(self.stores, self.champion_uri)(texts)


def store_config(root: Path, name: str = "test-model", **settings: str) -> PipelineConfig:
    """The embedded store under ``root``, or the stores ``settings`` name (dotted keys)."""
    return build_config(
        {
            "tracking.tracking_uri": f"sqlite:///{root / 'mlruns' / 'mlflow.db'}",
            "tracking.experiment_name": name,
            "tracking.model_name": name,
            **settings,
        }
    )


def register_tiny_model(root: Path, data: PreparedData, name: str = "test-model", **settings: str) -> Registered:
    """Train one epoch of a small GRU and of its bag-of-bigrams companion, log their average as the
    pyfunc (the blend the pipeline serves on the full dataset), register it and make it champion
    (by hand when, near chance as it is, the promotion gate refuses it)."""
    from pipeline import registry, stages
    from pipeline.batching import predict_proba
    from pipeline.evaluate import evaluate
    from pipeline.model import average_models
    from pipeline.train import train_bigram_model, train_model

    cfg = store_config(root, name, **settings)
    hparams = HParams(cell="gru", units=8, embedding_dim=8)
    train_cfg = TrainConfig(epochs=1, batch_size=32, bigram_buckets=4096, bigram_dim=8)
    rnn, result = train_model(hparams, data, train_cfg)
    companion, _ = train_bigram_model(data, train_cfg, widths=result.widths)
    model = average_models([rnn, companion])
    evaluation = evaluate(data.test.y, predict_proba(model, data.test.x, data.test.lengths, result.widths))
    final = stages.FinalModel(model, hparams, result, "rnn+bigrams", data.vocab_size_effective, 4096, 8)
    with stages.pipeline_run(resolve(cfg), cfg, data, run_name="tiny") as run:
        model_uri = stages.log_model(final, data, run)
    evidence = {
        **evaluation.metrics,
        **hparams.model_dump(),
        **data.summary(),
        "model_kind": "rnn+bigrams",
        "run_id": run.run_id,
        "max_len": data.max_len,
    }
    test = registry.TestSplit(data.test_texts, data.test.y)
    decision = registry.register_and_promote(
        resolve(cfg), cfg.tracking, model_uri, run.run_id, evidence, test=test, correct=evaluation.correct
    )
    if not decision.promoted:  # one epoch on 160 reviews is near chance: the gate rightly refuses it
        registry.promote(
            resolve(cfg), cfg.tracking, decision.version, "test fixture: serving needs a champion"
        )
    return Registered(cfg, data, model_uri, run.run_id, evaluation.correct, decision.version)
