"""coco2d reads finestSAM's COCO forms back, samtune's own export included.

A tiny export is made by samtune's own path (volumes → convert_collection → export_splits) and
read back through ingest(layout="coco2d"): the same pictures, the same masks pixel for pixel
(pycocotools' decode of the export's RLE), the same splits (split.method "layout"); corrupted
annotations are LayoutErrors naming the file and the annotation id.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from samtune.config import ConvertConfig, DataConfig, SplitConfig
from samtune.data.cases import LayoutError
from samtune.data.convert import convert_collection
from samtune.data.export import export_splits
from samtune.data.io import load_volume
from samtune.data.layouts import ingest
from samtune.data.layouts.coco_rle import check_segmentation, rle_runs
from samtune.data.split import assign_splits
from tests.data.test_convert import LABELS, make_collection

ASSIGN = {"patient_case0": "train", "patient_case1": "val", "patient_case2": "test",
          "patient_case3": "infer"}


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("export")
    (tmp / "vols").mkdir()
    collection = make_collection(tmp / "vols", n=4, shape=(32, 24, 8))
    convert_collection(collection, ConvertConfig(img_size=32, channels=3, empty_slices="all",
                                                 min_component_area=0, workers=1), tmp / "coco")
    export_splits(tmp / "coco", ASSIGN, tmp / "out", fingerprint="f", method="random")
    return tmp / "out"


def _copy(export_dir: Path, tmp: Path) -> Path:
    return Path(shutil.copytree(export_dir, tmp / "copy"))


def _decoded(anns: list[dict], height: int, width: int) -> np.ndarray:
    """H×W category ids from the annotations (later ones overwrite, as the rasteriser does)."""
    out = np.zeros((height, width), np.int64)
    for a in anns:
        out[mask_utils.decode(a["segmentation"]).astype(bool)] = a["category_id"]
    return out


def test_samtune_export_reads_back_pictures_masks_and_splits(export_dir: Path) -> None:
    coll = ingest(DataConfig(layout="coco2d", root=export_dir, include_unlabelled=True))
    by = {c.case_id: c for c in coll.cases}
    exported = {}
    for split in ("train", "val", "test", "infer"):
        coco = json.loads((export_dir / split / "annotations.json").read_text())
        for rec in coco["images"]:
            exported[Path(rec["file_name"]).stem] = (split, rec, [
                a for a in coco["annotations"] if a["image_id"] == rec["id"]])
    assert sorted(by) == sorted(exported) and len(by) == 4 * 8  # every slice picture, once
    assert coll.labels == {k: v for k, v in LABELS.items()
                           if any(a["category_id"] == k for _, _, anns in exported.values()
                                  for a in anns)}
    n_labelled = 0
    for stem, (split, rec, anns) in exported.items():
        case = by[stem]
        assert case.split == split and case.patient_id == rec["patient_id"]
        assert case.group == "normal"
        vol = load_volume(case)
        picture = np.asarray(Image.open(export_dir / split / "images" / rec["file_name"]))
        assert np.array_equal(vol.image.transpose(3, 2, 1, 0)[0], picture)  # C×I×J×1 → H×W×C
        if split == "infer":
            assert case.label_path is None and vol.label is None
            continue
        n_labelled += bool(anns)
        mask = vol.label[:, :, 0].T  # I×J×1 → H×W
        assert np.array_equal(mask, _decoded(anns, rec["height"], rec["width"]))
    assert n_labelled >= 6  # the blobs give most labelled slices at least one instance

    splits = json.loads((export_dir / "splits.json").read_text())
    assert assign_splits(coll.cases, SplitConfig(method="layout")) == splits["patients"] == ASSIGN
    labelled = ingest(DataConfig(layout="coco2d", root=export_dir))  # infer/ left out
    assert {c.split for c in labelled.cases} == {"train", "val", "test"}


def test_finestsam_auto_split_folder(export_dir: Path, tmp_path: Path) -> None:
    """images/ + annotations.json at the root (samtune's COCO folder, finestSAM auto-split)."""
    root = Path(shutil.copytree(export_dir / "val", tmp_path / "auto"))
    coll = ingest(DataConfig(layout="coco2d", root=root))
    assert len(coll.cases) == 8 and {c.split for c in coll.cases} == {None}
    assert all(c.label_path == str(root / "annotations.json") for c in coll.cases)
    (root / "_annotations.coco.json").write_text("{}")
    with pytest.raises(LayoutError, match="holds both _annotations.coco.json and annotations"):
        ingest(DataConfig(layout="coco2d", root=root))


def _corrupt(path: Path, change) -> int:
    coco = json.loads(path.read_text())
    ann = next(a for a in coco["annotations"] if a["segmentation"]["counts"])
    change(ann)
    path.write_text(json.dumps(coco))
    return ann["id"]


@pytest.mark.parametrize("change, problem", [
    (lambda a: a["segmentation"].update(counts=a["segmentation"]["counts"][:-1]),
     "truncated or corrupted|not a valid compressed RLE"),
    (lambda a: a["segmentation"].update(counts="garbage!"), "not a valid compressed RLE"),
    (lambda a: a["segmentation"].update(size=[7, 7]), r"RLE size \[7, 7\] differs"),
    (lambda a: a["segmentation"].update(counts=[3, -1]), "neither a compressed string"),
    (lambda a: a.update(segmentation=[[1, 2, "x", 4, 5, 6]]), "polygon 0 is not a list"),
    (lambda a: a.update(segmentation="mask.png"), "segmentation is a str"),
])
def test_corrupted_annotation_names_file_and_id(export_dir: Path, tmp_path: Path, change,
                                                problem: str) -> None:
    root = _copy(export_dir, tmp_path)
    bad = root / "val" / "annotations.json"
    ann_id = _corrupt(bad, change)
    with pytest.raises(LayoutError, match=problem) as err:
        ingest(DataConfig(layout="coco2d", root=root))
    assert err.value.path == str(bad) and f"annotation {ann_id} " in str(err.value)


def test_duplicate_annotation_id(export_dir: Path, tmp_path: Path) -> None:
    root = _copy(export_dir, tmp_path)
    bad = root / "train" / "annotations.json"
    coco = json.loads(bad.read_text())
    coco["annotations"].append(dict(coco["annotations"][0]))
    bad.write_text(json.dumps(coco))
    with pytest.raises(LayoutError, match=f"duplicate id {coco['annotations'][0]['id']}") as err:
        ingest(DataConfig(layout="coco2d", root=root))
    assert err.value.path == str(bad)


def test_rle_parser_agrees_with_pycocotools() -> None:
    rng = np.random.default_rng(3)
    for t in range(50):
        h, w = (int(v) for v in rng.integers(1, 40, 2))
        m = (rng.random((h, w)) < (0.0 if t == 0 else 1.0 if t == 1 else rng.random()))
        enc = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
        runs = rle_runs(enc["counts"].decode())
        assert sum(runs) == h * w and sum(runs[1::2]) == int(m.sum())
        assert check_segmentation({"size": [h, w], "counts": enc["counts"]}, (h, w)) is None
    assert check_segmentation({"size": [2, 2], "counts": [1, 2, 1]}, (None, None)) is None
    assert "cover 3 pixels" in check_segmentation({"size": [2, 2], "counts": [1, 2]}, (2, 2))
