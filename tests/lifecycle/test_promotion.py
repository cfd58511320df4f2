"""Promotion with evidence: the paired-bootstrap rule (pure), and champion/previous aliases, tags,
evidence, idempotency, rollback and errors against a real `mlflow server` process."""
from __future__ import annotations

import itertools
import json
import math
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mlflow import MlflowClient
from pydantic import ValidationError

from samtune.config import RegistryConfig
from samtune.lifecycle.promotion import (
    Decision,
    PromotionPolicy,
    decide,
    paired_bootstrap_ci,
)
from samtune.lifecycle.registry import AliasRegistry, RegistryError, check_reachable
from tests.mlflow_server import free_port, mlflow_server  # noqa: F401  (fixture)

CASES = [f"case_{i:02d}" for i in range(10)]
FAST = PromotionPolicy(bootstrap_samples=2000, seed=7)


def scores(values, cases=CASES) -> dict[str, float]:
    return {c: float(v) for c, v in zip(cases, values)}


BASE = scores(np.linspace(0.62, 0.80, 10))
BETTER = {c: v + 0.05 + 0.01 * (i % 3) for i, (c, v) in enumerate(BASE.items())}
NOISY = {c: v + (0.08 if i % 2 else -0.07) for i, (c, v) in enumerate(BASE.items())}


# ------------------------------------------------------------------ pure decision
def test_identical_scores_never_promote() -> None:
    d = decide(BASE, dict(BASE), PromotionPolicy(min_improvement=0.0, seed=1))
    assert not d.promote
    assert d.mean_diff == 0.0 and d.ci_low == 0.0 and d.ci_high == 0.0
    assert "not promoted" in d.reason


def test_clear_improvement_on_ten_cases_promotes_with_evidence() -> None:
    d = decide(BETTER, BASE, FAST)
    assert d.promote, d.reason
    assert d.n == 10 and 0.05 < d.mean_diff < 0.07
    assert 0.0 < d.ci_low <= d.mean_diff <= d.ci_high < 0.07
    assert [p["case_id"] for p in d.pairs] == sorted(CASES)
    assert d.pairs[1]["diff"] == pytest.approx(BETTER["case_01"] - BASE["case_01"])
    assert d.config == {"min_improvement": 0.005, "floor": 0.5, "bootstrap_samples": 2000,
                        "confidence": 0.95, "seed": 7}
    text = json.dumps(d.to_dict())
    assert Decision.from_dict(json.loads(text)) == d
    assert decide(BETTER, BASE, FAST) == d  # deterministic with the seed


def test_ci_crossing_zero_or_too_small_gain_is_not_promoted() -> None:
    noisy = decide(NOISY, BASE, FAST)
    assert noisy.mean_diff > 0.005 and noisy.ci_low < 0 < noisy.ci_high
    assert not noisy.promote and "does not exclude 0" in noisy.reason
    tiny = decide({c: v + 0.002 for c, v in BASE.items()}, BASE, FAST)
    assert tiny.ci_low > 0 and not tiny.promote and "min_improvement" in tiny.reason
    worse = decide(BASE, BETTER, FAST)
    assert worse.mean_diff < 0 and not worse.promote


def test_mismatched_case_sets_are_an_error_naming_the_cases() -> None:
    challenger = {k: v for k, v in BETTER.items() if k != "case_03"}
    challenger["case_99"] = 0.9
    with pytest.raises(ValueError, match=r"case_03.*case_99"):
        decide(challenger, BASE, FAST)
    with pytest.raises(ValueError, match="within"):
        decide({**BASE, "case_00": math.nan}, BASE, FAST)


def test_no_champion_promotes_iff_mean_reaches_the_floor() -> None:
    assert decide(BASE, None, FAST).promote  # mean 0.71 ≥ 0.5
    low = decide({c: 0.4 for c in CASES}, None, FAST)
    assert not low.promote and low.champion_mean is None and low.ci_low is None
    assert "floor" in low.reason


def test_single_volume_is_never_evidence() -> None:
    d = decide({"a": 0.9}, {"a": 0.5}, FAST)
    assert not d.promote and d.ci_low is None and "at least 2" in d.reason


def test_bootstrap_ci_matches_the_normal_approximation() -> None:
    diffs = np.random.default_rng(0).normal(0.02, 0.05, size=400)
    low, high = paired_bootstrap_ci(diffs, 4000, 0.95, seed=3)
    half = 1.96 * diffs.std() / math.sqrt(len(diffs))
    assert low == pytest.approx(diffs.mean() - half, abs=0.15 * half)
    assert high == pytest.approx(diffs.mean() + half, abs=0.15 * half)
    assert paired_bootstrap_ci(np.full(5, 0.03), 100, 0.9, seed=0) == pytest.approx((0.03, 0.03))


def test_registry_config_fields_and_ranges() -> None:
    cfg = RegistryConfig(min_improvement=0.01, seed=3)
    assert PromotionPolicy.from_config(cfg) == PromotionPolicy(min_improvement=0.01, seed=3)
    assert (cfg.champion_alias, cfg.previous_alias, cfg.rollback) == ("champion", "previous", False)
    for bad in ({"confidence": 1.0}, {"bootstrap_samples": 10}, {"floor": 1.5},
                {"champion_alias": "v2"}, {"previous_alias": "champion"}, {"nonsense": 1}):
        with pytest.raises(ValidationError):
            RegistryConfig(**bad)


CHALLENGERS = st.lists(  # per challenger: a shift of the whole test set plus per-volume noise
    st.tuples(st.floats(-0.15, 0.15), st.lists(st.floats(-0.05, 0.05), min_size=6, max_size=6)),
    min_size=1, max_size=8)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.floats(0.3, 0.9), min_size=6, max_size=6), CHALLENGERS,
       st.sampled_from([0.0, 0.005, 0.02]), st.integers(0, 3))
def test_champion_mean_never_decreases(base, challengers, min_improvement, seed) -> None:
    """Random challengers on a fixed 6-volume test set, the champion alias simulated."""
    policy = PromotionPolicy(min_improvement=min_improvement, floor=0.3,
                             bootstrap_samples=500, seed=seed)
    champion, means = None, []  # type: ignore[var-annotated]
    for shift, noise in challengers:
        candidate = scores(np.clip(np.add(base, shift) + noise, 0.0, 1.0), CASES[:6])
        decision = decide(candidate, champion, policy)
        if decision.promote:
            if champion is not None:
                assert decision.mean_diff >= min_improvement and decision.ci_low > 0
                assert decision.champion_mean == means[-1]
            champion = candidate  # what apply_decision does with the champion alias
            means.append(decision.challenger_mean)
    assert means == sorted(means)  # the champion's mean Dice never went down


# ------------------------------------------------------------------ against a real server
_names = itertools.count()


@pytest.fixture()
def registry(mlflow_server) -> AliasRegistry:  # noqa: F811
    return AliasRegistry(mlflow_server.uri, timeout_s=5.0)


@pytest.fixture()
def client(mlflow_server) -> MlflowClient:  # noqa: F811
    return MlflowClient(tracking_uri=mlflow_server.uri)


def model_name() -> str:
    return f"seg-{next(_names)}"  # one registered model per test, on the shared server


def register(client, name: str, tmp_path) -> str:
    """A real run with a model file, registered as a new version of `name`."""
    exp = client.get_experiment_by_name("promotion-tests")
    exp_id = exp.experiment_id if exp else client.create_experiment("promotion-tests")
    run = client.create_run(exp_id)
    weights = tmp_path / "weights.txt"
    weights.write_text(f"weights of {name}")
    client.log_artifact(run.info.run_id, str(weights), "model")
    client.set_terminated(run.info.run_id)
    if not client.search_registered_models(f"name = '{name}'"):
        client.create_registered_model(name)
    return client.create_model_version(name, f"{run.info.artifact_uri}/model",
                                       run_id=run.info.run_id).version


def aliases(client, name: str) -> dict[str, str]:
    return {k: str(v) for k, v in client.get_registered_model(name).aliases.items()}


def test_first_champion_then_better_challenger_moves_aliases(registry, client, tmp_path):
    name = model_name()
    v1, v2 = register(client, name, tmp_path), register(client, name, tmp_path)
    assert registry.champion_version(name) is None
    first = registry.apply_decision(name, v1, decide(BASE, None, FAST), tmp_path)
    assert first.applied and first.champion == v1 and aliases(client, name) == {"champion": v1}
    tags = client.get_model_version(name, v1).tags
    assert tags["promotion.decision"] == "promoted" and tags["promotion.compared_with"] == "none"

    out = registry.apply_decision(name, f"models:/{name}/{v2}", decide(BETTER, BASE, FAST),
                                  tmp_path)
    assert out.applied and out.compared_with == v1
    assert aliases(client, name) == {"champion": v2, "previous": v1}
    mv = client.get_model_version(name, v2)
    assert mv.tags["promotion.compared_with"] == v1 and mv.tags["promotion.decision"] == "promoted"
    assert float(mv.tags["promotion.ci_low"]) > 0
    assert float(mv.tags["promotion.mean_diff"]) == pytest.approx(out.decision.mean_diff)
    listed = [f.path for f in client.list_artifacts(mv.run_id, "promotion")]
    assert listed == [f"promotion/decision_v{v2}_vs_v{v1}.json"]
    local = client.download_artifacts(mv.run_id, listed[0], str(tmp_path))
    evidence = json.loads(Path(local).read_text())
    assert len(evidence["pairs"]) == 10 and evidence["compared_with"] == v1
    assert evidence["config"]["bootstrap_samples"] == 2000
    assert registry.stored_decision(name, v2) == out.decision


def test_worse_or_uncertain_challenger_is_not_promoted_but_recorded(registry, client, tmp_path):
    name = model_name()
    v1, v2, v3 = (register(client, name, tmp_path) for _ in range(3))
    registry.apply_decision(name, v1, decide(BETTER, None, FAST), tmp_path)
    with pytest.raises(RegistryError, match=f"made without a champion, but {name} has champion"):
        registry.apply_decision(name, v2, decide(BASE, None, FAST), tmp_path)
    worse = registry.apply_decision(name, v2, decide(BASE, BETTER, FAST), tmp_path)
    noisy = registry.apply_decision(name, v3, decide(NOISY, BASE, FAST), tmp_path)
    assert worse.applied and noisy.applied and not worse.decision.promote
    assert aliases(client, name) == {"champion": v1}
    for version, decision in ((v2, worse.decision), (v3, noisy.decision)):
        tags = client.get_model_version(name, version).tags
        assert tags["promotion.decision"] == "rejected"
        assert tags["promotion.compared_with"] == v1
        assert float(tags["promotion.ci_high"]) == decision.ci_high
    assert float(client.get_model_version(name, v3).tags["promotion.ci_low"]) < 0


def test_rerun_on_the_same_pair_writes_nothing(registry, client, tmp_path, monkeypatch):
    name = model_name()
    v1, v2 = register(client, name, tmp_path), register(client, name, tmp_path)
    registry.apply_decision(name, v1, decide(BASE, None, FAST), tmp_path)
    first = registry.apply_decision(name, v2, decide(NOISY, BASE, FAST), tmp_path)
    before = client.get_model_version(name, v2)

    def no_write(*args, **kwargs):
        raise AssertionError("a re-run must not write to the registry")

    for method in ("set_model_version_tag", "set_registered_model_alias", "log_artifact",
                   "delete_registered_model_alias"):
        monkeypatch.setattr(MlflowClient, method, no_write)
    again = registry.apply_decision(name, v2, decide(NOISY, BASE, FAST), tmp_path)
    champ = registry.apply_decision(name, v1, decide(BASE, None, FAST), tmp_path)
    assert not again.applied and again.decision == first.decision
    assert not champ.applied and champ.decision.promote and champ.champion == v1
    after = client.get_model_version(name, v2)
    assert after.tags == before.tags
    assert after.last_updated_timestamp == before.last_updated_timestamp


def test_rollback_restores_the_previous_champion(registry, client, tmp_path):
    name = model_name()
    v1, v2 = register(client, name, tmp_path), register(client, name, tmp_path)
    registry.apply_decision(name, v1, decide(BASE, None, FAST), tmp_path)
    registry.apply_decision(name, v2, decide(BETTER, BASE, FAST), tmp_path)
    assert registry.rollback(name) == (v1, v2)
    assert aliases(client, name) == {"champion": v1}  # previous is removed
    tags = client.get_model_version(name, v2).tags
    assert tags["promotion.rolled_back"] == "true" and tags["promotion.rolled_back_to"] == v1
    assert registry.champion_version(name) == v1
    with pytest.raises(RegistryError, match="no 'previous' alias"):
        registry.rollback(name)
    v3 = register(client, name, tmp_path)
    registry.apply_decision(name, v3, decide(BETTER, BASE, FAST), tmp_path)
    assert aliases(client, name) == {"champion": v3, "previous": v1}
    with pytest.raises(RegistryError, match="rolled back"):
        registry.apply_decision(name, v2, decide(BETTER, BASE, FAST), tmp_path)


def test_versions_of_other_models_or_unknown_versions_are_refused(registry, client, tmp_path):
    name, other = model_name(), model_name()
    register(client, name, tmp_path)
    register(client, other, tmp_path)
    with pytest.raises(RegistryError, match=f"belongs to registered model '{other}'"):
        registry.apply_decision(name, f"models:/{other}/1", decide(BASE, None, FAST), tmp_path)
    with pytest.raises(RegistryError, match=r"has no version 7 \(its versions: \[1\]\)"):
        registry.apply_decision(name, 7, decide(BASE, None, FAST), tmp_path)
    with pytest.raises(RegistryError, match="no registered model 'nope'"):
        registry.champion_version("nope")
    orphan = client.create_model_version(name, "s3://elsewhere/model").version  # no run
    with pytest.raises(RegistryError, match=f"version {orphan} of {name} has no source run"):
        registry.apply_decision(name, orphan, decide(BASE, None, FAST), tmp_path)
    assert aliases(client, name) == {} and aliases(client, other) == {}


def test_champion_without_model_files_is_a_clear_error(registry, client, tmp_path,
                                                       mlflow_server):  # noqa: F811
    name = model_name()
    v1, v2 = register(client, name, tmp_path), register(client, name, tmp_path)
    registry.apply_decision(name, v1, decide(BASE, None, FAST), tmp_path)
    run = client.get_run(client.get_model_version(name, v1).run_id)
    shutil.rmtree(mlflow_server.artifacts / run.info.experiment_id / run.info.run_id)
    message = (f"champion version {v1} of {name} has no model files at "
               rf"mlflow-artifacts:/\S+/model; re-register or roll back")
    with pytest.raises(RegistryError, match=message):
        registry.champion_version(name)
    with pytest.raises(RegistryError, match=message):
        registry.apply_decision(name, v2, decide(BETTER, BASE, FAST), tmp_path)
    assert aliases(client, name) == {"champion": v1}
    assert "promotion.decision" not in client.get_model_version(name, v2).tags


def test_unreachable_server_fails_fast_with_the_uri(tmp_path) -> None:
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    start = time.monotonic()
    with pytest.raises(RegistryError, match=f"{uri} is unreachable"):
        AliasRegistry(uri, timeout_s=1.0).champion_version("seg")
    assert time.monotonic() - start < 3.0
    missing = f"sqlite:///{tmp_path}/absent/mlflow.db"
    with pytest.raises(RegistryError, match="does not exist"):
        check_reachable(missing)
    check_reachable(f"sqlite:///{tmp_path}/mlflow.db")
