"""`prepare`: volumes on disk → validated, patient-split COCO slices."""
from __future__ import annotations

from typing import Any

from zenml import pipeline

from samtune.models.registry import is_volumetric
from steps.convert_to_coco import convert_to_coco
from steps.export_volumes_3d import export_volumes_3d
from steps.ingest_volumes import ingest_volumes
from steps.split_dataset import split_dataset
from steps.validate_volumes import validate_volumes


def prepare_dataset(config: dict[str, Any]) -> tuple[Any, Any]:
    """The prepare steps, wired; other pipelines call this too so all share one cache.
    Returns (split dataset, validated cases); for a 3D model (SAM-Med3D) the dataset is the 3D
    export made from the same split."""
    cases = ingest_volumes(data=config["data"])
    valid, _, _ = validate_volumes(cases, rules=config["validate"],
                                   output_dir=config["output_dir"],
                                   workers=config["convert"]["workers"])
    coco = convert_to_coco(valid, convert=config["convert"])
    dataset = split_dataset(coco, valid, split=config["split"], output_dir=config["output_dir"])
    if is_volumetric(config["model"]["name"]):
        dataset = export_volumes_3d(dataset, valid, convert=config["convert"],
                                    output_dir=config["output_dir"])
    return dataset, valid


@pipeline
def prepare(config: dict[str, Any]) -> None:
    prepare_dataset(config)
