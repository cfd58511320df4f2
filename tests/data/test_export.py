"""Per-split export: layout, pycocotools loading, counts, hard links, atomic replacement."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

import samtune.data.export as export_mod
from samtune.data.cases import DataError
from samtune.data.export import export_splits

# patient -> (group, cases); every case has 3 axial slices; slice 0 has no annotation,
# slice 1 one "vessel", slice 2 one "vessel" and one "plaque"
PATIENTS = {"P0": ("A", 2), "P1": ("A", 1), "P2": ("B", 2), "P3": ("B", 1), "P4": ("A", 1)}
CATEGORIES = [{"id": 1, "name": "vessel"}, {"id": 2, "name": "plaque"}]
ASSIGN = {"P0": "train", "P1": "train", "P2": "val", "P3": "test", "P4": "infer"}


def rle(mask: np.ndarray) -> dict:
    enc = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": enc["size"], "counts": enc["counts"].decode()}


@pytest.fixture
def coco_dir(tmp_path: Path) -> Path:
    root = tmp_path / "coco"
    (root / "images").mkdir(parents=True)
    images, anns, image_id, ann_id = [], [], 100, 500
    for pid, (group, n_cases) in PATIENTS.items():
        for c in range(n_cases):
            case_id = f"{pid}c{c}"
            for k in range(3):
                name = f"{case_id}_axial_{k:04d}.png"
                pixels = np.full((8, 8, 3), image_id % 256, np.uint8)
                Image.fromarray(pixels).save(root / "images" / name)
                images.append({"id": image_id, "file_name": name, "width": 8, "height": 8,
                               "case_id": case_id, "patient_id": pid, "group": group,
                               "split": None, "slice_index": k})
                for cat in ([1] if k == 1 else [1, 2] if k == 2 else []):
                    m = np.zeros((8, 8), np.uint8)
                    m[cat:cat + 3, 2:6] = 1
                    anns.append({"id": ann_id, "image_id": image_id, "category_id": cat,
                                 "segmentation": rle(m), "area": int(m.sum()),
                                 "bbox": [2.0, float(cat), 4.0, 3.0], "iscrowd": 0})
                    ann_id += 1
                image_id += 1
    coco = {"info": {"description": "test slices", "version": "1"}, "images": images,
            "annotations": anns, "categories": CATEGORIES}
    (root / "annotations.json").write_text(json.dumps(coco))
    return root


class StubStats:
    def __init__(self):
        self.calls = []

    def __call__(self, coco_dir, image_ids=None, max_images=2000):
        self.calls.append((Path(coco_dir), sorted(image_ids)))
        return {"mean": [0.5] * 3, "std": [0.25] * 3, "n_images": len(image_ids)}


def load(path: Path):
    return json.loads(path.read_text())


def siblings(out: Path) -> list[str]:
    return sorted(p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}."))


def test_export_layout_counts_and_coco(coco_dir, tmp_path):
    out = tmp_path / "export"
    stats = StubStats()
    result = export_splits(coco_dir, ASSIGN, out, fingerprint="abc123", method="random",
                           stats_fn=stats)
    source = load(coco_dir / "annotations.json")
    per_split = {}
    for split in ("train", "val", "test", "infer"):
        ann_file = out / split / "annotations.json"
        coco = COCO(str(ann_file))  # loads with pycocotools
        data = load(ann_file)
        assert data["categories"] == CATEGORIES and data["info"] == source["info"]
        assert all(r["split"] == split for r in data["images"])
        assert {ASSIGN[r["patient_id"]] for r in data["images"]} == {split}
        files = sorted(p.name for p in (out / split / "images").iterdir())
        assert files == sorted(r["file_name"] for r in data["images"])
        per_split[split] = {r["id"] for r in data["images"]}
        assert set(coco.getImgIds()) == per_split[split]
        want_anns = {a["id"] for a in source["annotations"] if a["image_id"] in per_split[split]}
        assert set(coco.getAnnIds()) == want_anns  # ids unchanged, all of the split's annotations
    # P0: 2 cases, P1: 1 case -> 9 train slices; P2 6 val; P3 3 test; P4 3 infer
    sizes = {s: len(v) for s, v in per_split.items()}
    assert sizes == {"train": 9, "val": 6, "test": 3, "infer": 3}
    all_ids = [i for v in per_split.values() for i in v]
    assert sorted(all_ids) == sorted(r["id"] for r in source["images"])  # each exactly once
    assert result["splits"]["train"] == {"path": str(out / "train"),
                                         "annotations_json": str(out / "train/annotations.json"),
                                         "images": 9, "annotations": 9, "patients": 2, "cases": 3}
    assert result["linked"] == 21 and result["copied"] == 0

    splits = load(out / "splits.json")
    assert splits["method"] == "random" and splits["patients"] == ASSIGN
    assert splits["cases"] == {"P0c0": "train", "P0c1": "train", "P1c0": "train", "P2c0": "val",
                               "P2c1": "val", "P3c0": "test", "P4c0": "infer"}
    assert splits["summary"]["patients"] == {"train": 2, "val": 1, "test": 1, "infer": 1}
    group_b = splits["summary"]["groups"]["B"]
    assert group_b["cases"] == {"train": 0, "val": 2, "test": 1, "infer": 0}

    dataset = load(out / "dataset.json")
    assert dataset["fingerprint"] == "abc123" and dataset["categories"] == CATEGORIES
    assert dataset["splits"]["train"]["classes"] == {"vessel": {"instances": 6, "slices": 6},
                                                     "plaque": {"instances": 3, "slices": 3}}
    assert dataset["splits"]["test"] == {"images": 3, "annotations": 3, "patients": 1, "cases": 1,
                                         "classes": {"vessel": {"instances": 2, "slices": 2},
                                                     "plaque": {"instances": 1, "slices": 1}}}
    assert stats.calls == [(coco_dir, sorted(per_split["train"]))]  # stats of TRAIN only
    assert dataset["stats"]["n_images"] == 9
    assert siblings(out) == []


def test_images_are_hard_links(coco_dir, tmp_path):
    out = tmp_path / "export"
    export_splits(coco_dir, ASSIGN, out, fingerprint="f", method="random", stats_fn=StubStats())
    for png in (out / "val" / "images").iterdir():
        assert png.stat().st_ino == (coco_dir / "images" / png.name).stat().st_ino


def test_copy_fallback_when_linking_fails(coco_dir, tmp_path, monkeypatch):
    def no_link(src, dst):
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(export_mod.os, "link", no_link)
    out = tmp_path / "export"
    result = export_splits(coco_dir, ASSIGN, out, fingerprint="f", method="random",
                           stats_fn=StubStats())
    assert result["linked"] == 0 and result["copied"] == 21
    png = next((out / "train" / "images").iterdir())
    src = coco_dir / "images" / png.name
    assert png.stat().st_ino != src.stat().st_ino and png.read_bytes() == src.read_bytes()


def test_empty_split_is_a_valid_empty_coco(coco_dir, tmp_path):
    out = tmp_path / "export"
    assign = {p: "train" for p in PATIENTS}
    result = export_splits(coco_dir, assign, out, fingerprint="f", method="random",
                           stats_fn=StubStats())
    for split in ("val", "test"):
        coco = COCO(str(out / split / "annotations.json"))
        assert coco.getImgIds() == [] and coco.getAnnIds() == []
        assert load(out / split / "annotations.json")["categories"] == CATEGORIES
        assert list((out / split / "images").iterdir()) == []
    assert not (out / "infer").exists() and "infer" not in result["splits"]
    assert result["splits"]["train"]["images"] == 21


def test_unassigned_patient_is_an_error_and_writes_nothing(coco_dir, tmp_path):
    out = tmp_path / "export"
    assign = {p: s for p, s in ASSIGN.items() if p != "P3"}
    with pytest.raises(DataError, match=r"1 patient\(s\) have images but no split: \['P3'\]"):
        export_splits(coco_dir, assign, out, fingerprint="f", method="random", stats_fn=StubStats())
    assert not out.exists() and siblings(out) == []


def test_failure_keeps_previous_export_and_leaves_no_temp(coco_dir, tmp_path, monkeypatch):
    out = tmp_path / "export"
    export_splits(coco_dir, ASSIGN, out, fingerprint="old", method="random", stats_fn=StubStats())
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}

    def broken_stats(coco_dir, image_ids=None):
        raise RuntimeError("stats blew up")

    new_assign = {**ASSIGN, "P2": "train"}
    with pytest.raises(RuntimeError, match="stats blew up"):
        export_splits(coco_dir, new_assign, out, fingerprint="new", method="random",
                      stats_fn=broken_stats)
    calls = []
    real_place = export_mod._place

    def place_then_fail(src, dst):
        calls.append(dst)
        if len(calls) == 5:
            raise OSError("disk full")
        return real_place(src, dst)

    monkeypatch.setattr(export_mod, "_place", place_then_fail)
    with pytest.raises(OSError, match="disk full"):
        export_splits(coco_dir, new_assign, out, fingerprint="new", method="random",
                      stats_fn=StubStats())
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before and load(out / "dataset.json")["fingerprint"] == "old"
    assert siblings(out) == []

    monkeypatch.setattr(export_mod, "_place", real_place)  # a successful run replaces it
    export_splits(coco_dir, new_assign, out, fingerprint="new", method="kfold",
                  stats_fn=StubStats())
    assert load(out / "dataset.json")["fingerprint"] == "new"
    assert load(out / "splits.json")["patients"]["P2"] == "train"
    assert len(list((out / "val" / "images").iterdir())) == 0 and siblings(out) == []


def test_bad_inputs_name_the_file(coco_dir, tmp_path):
    out = tmp_path / "export"
    (coco_dir / "images" / "P3c0_axial_0001.png").unlink()
    missing = r"1 image file\(s\) missing: \['P3c0_axial_0001.png'\]"
    with pytest.raises(DataError, match=missing) as e:
        export_splits(coco_dir, ASSIGN, out, fingerprint="f", method="m", stats_fn=StubStats())
    assert str(coco_dir / "images") in str(e.value)
    data = load(coco_dir / "annotations.json")
    data["images"] = [r for r in data["images"] if r["file_name"] != "P3c0_axial_0001.png"]
    (coco_dir / "annotations.json").write_text(json.dumps(data))
    with pytest.raises(DataError, match=r"1 annotation\(s\) of unknown images") as e:
        export_splits(coco_dir, ASSIGN, out, fingerprint="f", method="m", stats_fn=StubStats())
    assert str(coco_dir / "annotations.json") in str(e.value)
    (coco_dir / "annotations.json").write_text("{broken")
    with pytest.raises(DataError, match="malformed annotations.json"):
        export_splits(coco_dir, ASSIGN, out, fingerprint="f", method="m", stats_fn=StubStats())
    assert not out.exists() and siblings(out) == []


def test_refuses_to_replace_a_foreign_folder_or_the_source(coco_dir, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(DataError, match="not a samtune export"):
        export_splits(coco_dir, ASSIGN, out, fingerprint="f", method="m", stats_fn=StubStats())
    assert (out / "notes.txt").read_text() == "keep me"
    with pytest.raises(DataError, match="would replace the COCO folder"):
        export_splits(coco_dir, ASSIGN, coco_dir.parent, fingerprint="f", method="m",
                      stats_fn=StubStats())
    assert (coco_dir / "annotations.json").is_file()
