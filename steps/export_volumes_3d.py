"""3D models (SAM-Med3D): resample the split cases to the model's grid, beside the 2D export."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

from zenml import log_metadata, step

from materializers.split_dataset import SplitDatasetMaterializer
from samtune.atomic import atomic_write_text
from samtune.config import ConvertConfig
from samtune.data.cases import CaseCollection
from samtune.data.datasets import SplitDataset, fingerprint_of
from samtune.data.export3d import export_3d
from steps.caching import DATA_CACHE


@step(cache_policy=DATA_CACHE, output_materializers=SplitDatasetMaterializer)
def export_volumes_3d(
    dataset: SplitDataset, cases: CaseCollection, convert: dict[str, Any], output_dir: str
) -> Annotated[SplitDataset, "dataset_3d"]:
    """`<output_dir>/dataset_3d`: volumes3d/ (images and labels at convert.spacing_3d, index
    with the transform back to each source grid) plus the 2D export's splits.json and
    dataset.json, so both exports share one patient split and one class table."""
    cfg = ConvertConfig.model_validate(convert)
    table = json.loads((dataset.root / "splits.json").read_text())["cases"]
    root = Path(output_dir) / "dataset_3d"
    export_3d(cases.cases, {c.case_id: table[c.case_id] for c in cases.cases}, root,
              cfg.spacing_3d, classes=dataset.categories())
    for name in ("splits.json", "dataset.json"):
        atomic_write_text(root / name, (dataset.root / name).read_text())
    fingerprint = fingerprint_of(dataset.fingerprint, "volumes3d", list(cfg.spacing_3d))
    log_metadata(metadata={"fingerprint": fingerprint, "export": str(root),
                           "spacing_mm": list(cfg.spacing_3d)})
    return SplitDataset(root=root, fingerprint=fingerprint,
                        summary={**dataset.summary, "spacing_3d": list(cfg.spacing_3d)})
