"""Retrain gate: is there new data since the champion was trained?"""
from __future__ import annotations

import logging
from typing import Annotated, Any

from zenml import log_metadata, step

from samtune.config import RegistryConfig
from samtune.data.datasets import SplitDataset
from samtune.lifecycle.champion import open_registry, unchanged_since_champion

log = logging.getLogger(__name__)


@step(enable_cache=False)
def check_retrain(dataset: SplitDataset, registry: dict[str, Any]
                  ) -> Annotated[dict[str, Any], "retrain_decision"]:
    """{"retrain": False, ...} when the dataset fingerprint equals the champion's training
    fingerprint (registry.skip_unchanged); the reason is logged either way."""
    cfg = RegistryConfig.model_validate(registry)
    champion = unchanged_since_champion(open_registry(cfg), cfg.model_name, dataset.fingerprint) \
        if cfg.skip_unchanged else None
    if champion is not None:
        reason = (f"dataset fingerprint {dataset.fingerprint[:12]} equals the training data of "
                  f"champion v{champion} of {cfg.model_name}: training skipped")
    else:
        reason = f"dataset {dataset.fingerprint[:12]} is new to the champion: retraining"
    log.warning(reason) if champion else log.info(reason)
    decision = {"retrain": champion is None, "reason": reason, "champion": champion}
    log_metadata(metadata={k: v for k, v in decision.items() if v is not None})
    return decision
