"""samtune.lifecycle.champion against a real MLflow server: the champion is scored on the same
volumes, a pair is decided once, retraining is skipped on the champion's own data."""
from __future__ import annotations

import itertools

import pytest
from mlflow import MlflowClient

from samtune.lifecycle.champion import judge, latest_version, unchanged_since_champion
from samtune.lifecycle.promotion import PromotionPolicy
from samtune.lifecycle.registry import AliasRegistry
from tests.mlflow_server import mlflow_server  # noqa: F401  (fixture)
from tests.lifecycle.test_promotion import register

CASES = [f"case_{i}" for i in range(8)]
POLICY = PromotionPolicy(min_improvement=0.01, floor=0.5, bootstrap_samples=500,
                         confidence=0.95, seed=0)
_names = itertools.count()


@pytest.fixture()
def setup(mlflow_server, tmp_path):  # noqa: F811
    client = MlflowClient(tracking_uri=mlflow_server.uri)
    return AliasRegistry(mlflow_server.uri), client, f"champ-{next(_names)}", tmp_path


def scores(base: float) -> dict[str, float]:
    return {c: min(1.0, base + 0.01 * i) for i, c in enumerate(CASES)}


def test_champion_scored_on_same_volumes_only_when_needed(setup) -> None:
    registry, client, name, tmp = setup
    v1, v2, v3 = (register(client, name, tmp) for _ in range(3))
    calls: list[str] = []

    def scorer(uri: str) -> dict[str, float]:
        calls.append(uri)
        return {v1: scores(0.70), v2: scores(0.80)}[uri.rsplit("/", 1)[1]]

    first = judge(registry, name, v1, scores(0.70), scorer, POLICY, tmp / "e1")
    assert first.applied and first.champion == v1 and calls == []  # no champion to score
    second = judge(registry, name, v2, scores(0.80), scorer, POLICY, tmp / "e2")
    assert second.decision.promote and second.champion == v2 and calls == [f"models:/{name}/{v1}"]
    worse = judge(registry, name, v3, scores(0.60), scorer, POLICY, tmp / "e3")
    assert not worse.decision.promote and registry.champion_version(name) == v2
    again = judge(registry, name, v3, scores(0.60), scorer, POLICY, tmp / "e4")
    assert again.applied is False and len(calls) == 2  # decided before: no new scoring
    assert latest_version(registry, name) == v3


def test_unchanged_dataset_is_detected_from_the_champion_tag(setup) -> None:
    registry, client, name, tmp = setup
    v1 = register(client, name, tmp)
    assert unchanged_since_champion(registry, name, "abc") is None  # no champion yet
    client.set_model_version_tag(name, v1, "dataset_fingerprint", "abc")
    judge(registry, name, v1, scores(0.7), lambda uri: {}, POLICY, tmp / "e")
    assert unchanged_since_champion(registry, name, "abc") == v1
    assert unchanged_since_champion(registry, name, "def") is None
