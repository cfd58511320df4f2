"""Promotion with evidence, end to end: score the champion on the challenger's test volumes,
decide (samtune.lifecycle.promotion), record and move aliases (samtune.lifecycle.registry).

    outcome = judge(registry, "samtune-demo", "7", challenger_scores, score_version, policy,
                    evidence_dir)

`score_version(model_uri)` returns case_id → Dice of that model on the same volumes (the
evaluate code path); it is called for the champion only, and not at all when the pair was
already decided (idempotent: nothing is evaluated or written again).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Mapping

from samtune.lifecycle.promotion import PromotionPolicy, decide
from samtune.lifecycle.registry import TAG, AliasRegistry, PromotionOutcome

__all__ = ["judge", "latest_version", "unchanged_since_champion", "FINGERPRINT_TAG"]
log = logging.getLogger(__name__)
FINGERPRINT_TAG = "dataset_fingerprint"
Scorer = Callable[[str], Mapping[str, float]]


def judge(registry: AliasRegistry, name: str, challenger: str,
          challenger_scores: Mapping[str, float], score_version: Scorer, policy: PromotionPolicy,
          evidence_dir: Path) -> PromotionOutcome:
    """Decide and apply the promotion of version `challenger` of `name` (see module docstring)."""
    champion = registry.champion_version(name)  # RegistryError if its files are gone
    if champion == str(challenger):
        log.info("%s v%s already is the champion: nothing to decide", name, challenger)
        return PromotionOutcome(False, registry.stored_decision(name, challenger), str(challenger),
                                None, champion, None, None)
    tags = registry.resolve_version(name, challenger).tags
    if champion is not None and tags.get(f"{TAG}compared_with") == champion:
        log.info("%s v%s vs champion v%s was already decided: nothing changes", name, challenger,
                 champion)
        return PromotionOutcome(False, registry.stored_decision(name, challenger),
                                str(challenger), champion, champion, None, None)
    champion_scores = None
    if champion is not None:
        log.info("scoring champion v%s of %s on the same %d volumes", champion, name,
                 len(challenger_scores))
        champion_scores = dict(score_version(f"models:/{name}/{champion}"))
    decision = decide(challenger_scores, champion_scores, policy)
    outcome = registry.apply_decision(name, challenger, decision, evidence_dir)
    log.info("promotion of %s v%s: %s", name, challenger, decision.reason)
    return outcome


def latest_version(registry: AliasRegistry, name: str) -> str:
    """The highest version number of registered model `name`."""
    client = registry._client()  # noqa: SLF001 — the one MLflow client of the registry
    versions = client.search_model_versions(f"name='{name}'")
    if not versions:
        raise ValueError(f"registered model '{name}' has no versions to promote")
    return str(max(int(v.version) for v in versions))


def unchanged_since_champion(registry: AliasRegistry, name: str, fingerprint: str
                             ) -> str | None:
    """The champion version when its training dataset fingerprint (version tag) equals
    `fingerprint`, i.e. retraining would learn from the same data; else None."""
    champion = registry.champion_version(name, check_files=False)
    if champion is None:
        return None
    mv = registry.resolve_version(name, champion)
    return champion if mv.tags.get(FINGERPRINT_TAG) == fingerprint else None


def open_registry(registry_cfg: object, tracking_uri: str | None = None) -> AliasRegistry:
    """The alias registry at `tracking_uri` (default: MLflow's current one, which ZenML's
    experiment tracker sets inside a step); fails fast when the server is unreachable."""
    import mlflow

    return AliasRegistry.from_config(tracking_uri or mlflow.get_tracking_uri(), registry_cfg)


def volume_scorer(cases: list, convert_cfg: object, eval_cfg: object, classes: dict[int, str],
                  out_dir: Path) -> Scorer:
    """score_version for `judge`: evaluate a model URI on `cases` the evaluate way (metrics
    only: no predictions, biomarkers or slice tables) → case_id → mean Dice over classes."""
    from samtune.config import ModelConfig
    from samtune.eval.volume_eval import evaluate_volumes
    from samtune.inference.model_source import load_model

    light = eval_cfg.model_copy(  # type: ignore[attr-defined]
        update={"save_predictions": False, "biomarkers": {}, "slice_metrics": False,
                "qc_cases": 0})

    def score(model_uri: str) -> Mapping[str, float]:
        loaded = load_model(ModelConfig(), model_uri)
        folder = Path(out_dir) / model_uri.replace(":/", "_").replace("/", "_").replace("@", "_")
        result = evaluate_volumes(  # type: ignore[arg-type]
            loaded, cases, convert_cfg, light, folder, classes,
            title=f"promotion scoring — {model_uri}")
        return result.per_volume_dice()

    return score
