"""Slice the validated volumes into a COCO dataset (PNG + RLE masks, geometry per image)."""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Annotated, Any

from zenml import log_metadata, step

from materializers.coco_dataset import CocoDatasetMaterializer
from samtune.config import ConvertConfig
from samtune.data.cases import CaseCollection
from samtune.data.convert import convert_collection
from samtune.data.datasets import CocoDataset, fingerprint_of
from steps.caching import DATA_CACHE


@step(cache_policy=DATA_CACHE, output_materializers=CocoDatasetMaterializer)
def convert_to_coco(
    cases: CaseCollection, convert: dict[str, Any]
) -> Annotated[CocoDataset, "coco_slices"]:
    """Convert in a scratch folder; the materializer stores it (hard links) and removes it."""
    cfg = ConvertConfig.model_validate(convert)
    root = Path(tempfile.mkdtemp(prefix="samtune-convert-")) / "coco"
    try:  # a failed conversion (a StorageFullError too) leaves no scratch folder behind
        summary = convert_collection(cases, cfg, root)
    except BaseException:
        shutil.rmtree(root.parent, ignore_errors=True)
        raise
    settings = cfg.model_dump(mode="json", exclude={"workers", "spacing_3d"})
    log_metadata(metadata={k: v for k, v in summary.items() if isinstance(v, (int, float, str))})
    return CocoDataset(root=root, fingerprint=fingerprint_of(cases.content_hash(), settings),
                       summary=summary, temporary=True)
