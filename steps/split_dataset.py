"""Assign patients to train/val/test and export the per-split layout under output_dir."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from zenml import log_metadata, step

from materializers.split_dataset import SplitDatasetMaterializer
from samtune.config import SplitConfig
from samtune.data.cases import CaseCollection
from samtune.data.datasets import CocoDataset, SplitDataset, fingerprint_of
from samtune.data.export import export_splits
from samtune.data.split import assign_splits
from steps.caching import DATA_CACHE


@step(cache_policy=DATA_CACHE, output_materializers=SplitDatasetMaterializer)
def split_dataset(
    coco: CocoDataset, cases: CaseCollection, split: dict[str, Any], output_dir: str
) -> Annotated[SplitDataset, "dataset"]:
    """Patient-level split (never one patient in two splits); export `<output_dir>/dataset`."""
    cfg = SplitConfig.model_validate(split)
    assignment = assign_splits(cases.cases, cfg, root=Path(cases.root))  # table: rel. to root
    fingerprint = fingerprint_of(coco.fingerprint, cfg.model_dump(mode="json"))
    summary = export_splits(coco.root, assignment, Path(output_dir) / "dataset",
                            fingerprint=fingerprint, method=cfg.method)
    log_metadata(metadata={"fingerprint": fingerprint, "export": str(Path(output_dir) / "dataset")})
    return SplitDataset(root=Path(output_dir) / "dataset", fingerprint=fingerprint,
                        summary=summary)
