"""Real volumes from ../shared/data through ingest → validate → convert, geometry checked.

Every COCO mask is mapped back to the original voxel grid and must rebuild the label volume
exactly (no downscaling: img_size ≥ the slice's longer side), and every image record must carry
the source affine. Covers NRRD with a negative direction, TotalSegmentator's multi-organ CT and
the spinal MRI whose labels are stored as float.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from samtune.config import ConvertConfig, DataConfig, ValidateConfig
from samtune.data.convert import convert_collection
from samtune.data.io import read_image
from samtune.data.layouts import ingest
from samtune.data.slicing import mask_to_original
from samtune.data.validate import collect_facts, run_expectations

CASES = {  # case id: (image, label, modality, axis)
    "brain1": ("nrrd_mri/brain1_image.nrrd", "nrrd_mri/brain1_label.nrrd", "MR", "axial"),
    "breast1": ("nrrd_mri/breast1_image.nrrd", "nrrd_mri/breast1_label.nrrd", "MR", "sagittal"),
    "ct_multiorgan": ("ct_mr_multiorgan/example_ct_sm.nii.gz",
                      "ct_mr_multiorgan/example_seg.nii.gz", "CT", "axial"),
    "spinal_t2": ("spinal_mri/sub-unf01_T2w.nii.gz",
                  "spinal_mri/sub-unf01_T2w_seg-manual.nii.gz", "MR", "coronal"),
}


def _suffix(path: str) -> str:
    return ".nii.gz" if path.endswith(".nii.gz") else Path(path).suffix


def _folder_of_links(root: Path, shared: Path, case: str) -> tuple[Path, Path]:
    image, label, _, _ = CASES[case]
    for sub, rel in (("images", image), ("labels", label)):
        (root / sub).mkdir(parents=True)
        (root / sub / f"{case}{_suffix(rel)}").symlink_to(shared / rel)
    return shared / image, shared / label


@pytest.mark.parametrize("case", sorted(CASES))
def test_real_volume_round_trips_through_coco(case: str, shared_data: Path, tmp_path: Path) -> None:
    image_path, label_path = _folder_of_links(tmp_path / "ds", shared_data, case)
    label, label_affine, _ = read_image(label_path)
    label = np.rint(label).astype(np.int64)  # spinal labels are stored as float 0.0 / 1.0
    _, image_affine, _ = read_image(image_path)
    values = sorted(int(v) for v in np.unique(label) if v != 0)
    modality, axis = CASES[case][2], CASES[case][3]

    collection = ingest(DataConfig(layout="folder", root=tmp_path / "ds", modality=modality,
                                   labels={v: f"class_{v}" for v in values}))
    assert [c.case_id for c in collection.cases] == [case]
    facts = collect_facts(collection, ValidateConfig())
    result = run_expectations(facts, ValidateConfig())
    assert result.failed == {} and result.passed == [case]

    longest = max(s for i, s in enumerate(label.shape) if i != {"sagittal": 0, "coronal": 1,
                                                                  "axial": 2}[axis])
    cfg = ConvertConfig(axis=axis, img_size=int(longest) + 3, channels=1, empty_slices="all",
                        min_component_area=0, workers=1)
    convert_collection(collection, cfg, tmp_path / "coco")
    coco = json.loads((tmp_path / "coco" / "annotations.json").read_text())
    assert {c["id"] for c in coco["categories"]} == set(values)

    rebuilt = np.zeros_like(label)
    by_image: dict[int, list[dict]] = {}
    for ann in coco["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    for record in coco["images"]:
        assert np.allclose(record["affine"], image_affine, atol=1e-4)
        canvas = np.zeros((record["height"], record["width"]), np.int64)
        for ann in by_image.get(record["id"], []):
            canvas[mask_utils.decode(ann["segmentation"]).astype(bool)] = ann["category_id"]
        back, index = mask_to_original(canvas, record["transform"])
        rebuilt[index] = back
    assert np.array_equal(rebuilt, label)
    assert np.allclose(label_affine, image_affine, atol=1e-3)
