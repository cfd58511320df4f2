"""Promote the challenger only if it beats the champion on the same test volumes (evidence)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

from zenml import log_metadata, step
from zenml.client import Client

from samtune.config import ConvertConfig, EvalConfig, RegistryConfig
from samtune.data.cases import CaseCollection
from samtune.data.datasets import SplitDataset
from samtune.eval.volume_eval import split_cases
from samtune.lifecycle.champion import (
    judge,
    latest_version,
    open_registry,
    volume_scorer,
)
from samtune.lifecycle.promotion import PromotionPolicy


def _follow_in_zenml(name: str, version: str) -> None:
    """The ZenML Model version linked to MLflow `version` (register_model's metadata) becomes
    the production stage (force: the former production one is archived)."""
    for mv in Client().list_model_versions(model=name, size=100):
        if str(mv.run_metadata.get("version")) == version:
            mv.set_stage("production", force=True)
            return


@step(enable_cache=False)
def promote_model(
    dataset: SplitDataset, cases: CaseCollection, registry: dict[str, Any],
    evaluation: dict[str, Any], convert: dict[str, Any], output_dir: str,
    registered: dict[str, Any] | None = None, volume_metrics: dict[str, Any] | None = None,
) -> Annotated[dict[str, Any], "promotion"]:
    """After finetune: judge the version just registered with its per-volume Dice; alone
    (`promote` pipeline): judge registry.challenger; registry.rollback: roll back instead."""
    cfg = RegistryConfig.model_validate(registry)
    reg, out = open_registry(cfg), Path(output_dir)
    if cfg.rollback:
        champion, rolled_back = reg.rollback(cfg.model_name)
        _follow_in_zenml(cfg.model_name, champion)
        result = {"rollback": True, "champion": champion, "rolled_back": rolled_back}
    elif not (cfg.enabled and cfg.promote) or (registered is not None and not registered):
        return {"skipped": "registry.enabled / registry.promote is false"}
    else:
        ev = EvalConfig.model_validate(evaluation)
        chosen = split_cases(cases.cases, dataset.root, ev.split)
        scorer = volume_scorer(chosen, ConvertConfig.model_validate(convert), ev,
                               dataset.categories(), out / "promotion")
        challenger = str(registered["version"]) if registered else (
            latest_version(reg, cfg.model_name) if cfg.challenger == "latest" else cfg.challenger)
        scores = (volume_metrics or {}).get("per_volume_dice") or \
            scorer(f"models:/{cfg.model_name}/{challenger}")
        outcome = judge(reg, cfg.model_name, challenger, scores, scorer,
                        PromotionPolicy.from_config(cfg), out / "promotion")
        if outcome.applied and outcome.decision is not None and outcome.decision.promote:
            _follow_in_zenml(cfg.model_name, challenger)
        result = {"challenger": challenger, "applied": outcome.applied,
                  "champion": outcome.champion, "previous": outcome.previous,
                  "decision": outcome.decision.to_dict() if outcome.decision else None}
    (out / "promotion.json").write_text(json.dumps(result, indent=1, default=str))
    log_metadata(metadata={"promotion": json.loads(json.dumps(result, default=str))})
    return result
