"""Quantitative maps (data.maps): every layout attaches them, a missing one skips its case with
the file named, they are fingerprinted, and validation quarantines a map that does not agree
with its image (shape, affine), naming the map file."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from samtune.config import DataConfig, ValidateConfig
from samtune.data.cases import Case, LayoutError
from samtune.data.io import load_volume, write_volume
from samtune.data.layouts import ingest
from samtune.data.maps import map_problems, read_maps
from samtune.data.validate import apply_quarantine, collect_facts, run_expectations

AFFINE = np.diag([0.5, 0.5, 1.25, 1.0])
SHAPE = (8, 8, 4)


def _vol(path: Path, value: float = 0, dtype=np.int16, shape=SHAPE, affine=AFFINE) -> Path:
    arr = np.full(shape, value, dtype)
    arr[2:4, 2:4, 1:3] = 1
    return write_volume(path, arr, affine)


def _folder(root: Path, names=("a", "b")) -> Path:
    for n in names:
        _vol(root / "images" / f"{n}.nii.gz", 100)
        _vol(root / "labels" / f"{n}.nii.gz", 0, np.uint8)
    return root


@pytest.mark.parametrize("maps, problem", [
    ({"t2": "maps/t2.nii.gz"}, "containing <case>"),
    ({"t2": "../maps/<case>.nii.gz"}, "relative to data.root"),
    ({"t2": "/maps/<case>.nii.gz"}, "relative to data.root"),
    ({"t-2": "maps/<case>.nii.gz"}, "map name 't-2'"),
])
def test_bad_map_patterns_are_refused(maps: dict, problem: str) -> None:
    with pytest.raises(ValidationError, match=problem):
        DataConfig(layout="folder", maps=maps)


def test_folder_maps_attach_skip_and_fingerprint(tmp_path: Path) -> None:
    root = _folder(tmp_path / "ds", ("a", "b", "c"))
    for n in ("a", "c"):
        _vol(root / "maps" / f"{n}_t2.nii.gz", 40.0, np.float32)
    _vol(root / "maps" / "a_t1rho.nii.gz", 30.0, np.float32)
    cfg = DataConfig(layout="folder", root=root, maps={"t2": "maps/<case>_t2.nii.gz"})
    coll = ingest(cfg)
    assert [c.case_id for c in coll.cases] == ["a", "c"]
    a = coll.cases[0]
    assert a.maps == {"t2": str(root / "maps/a_t2.nii.gz")}
    assert a.files[-1] == str(root / "maps/a_t2.nii.gz") and a.files[-1] in coll.fingerprints
    reason = coll.skipped[str(root / "images/b.nii.gz")]
    assert "map 't2' missing" in reason and str(root / "maps/b_t2.nii.gz") in reason
    before = coll.content_hash()
    _vol(root / "maps" / "a_t2.nii.gz", 41.0, np.float32)  # content, not paths, moves the hash
    assert ingest(cfg).content_hash() != before
    two = ingest(cfg.model_copy(update={"maps": {"t2": "maps/<case>_t2.nii.gz",
                                                 "t1rho": "maps/<case>_t1rho.nii.gz"}}))
    assert [c.case_id for c in two.cases] == ["a"] and sorted(two.cases[0].maps) == ["t1rho", "t2"]
    restored = Case.from_dict(json.loads(json.dumps(two.cases[0].to_dict())))
    assert restored.maps == two.cases[0].maps  # survives the cases.json artifact
    assert read_maps(load_volume(restored))["t1rho"].max() == 30.0


def test_every_case_missing_its_map_names_data_maps(tmp_path: Path) -> None:
    root = _folder(tmp_path / "ds")
    with pytest.raises(LayoutError, match="every case lacks a data.maps file"):
        ingest(DataConfig(layout="folder", root=root, maps={"t2": "maps/<case>.nii.gz"}))


def test_csv_map_columns_and_pattern_fallback(tmp_path: Path) -> None:
    root = _folder(tmp_path / "ds", ("a", "b", "c"))
    _vol(root / "t2" / "a.nii.gz", 7.0, np.float32)
    _vol(root / "maps" / "b_t2.nii.gz", 8.0, np.float32)
    (root / "manifest.csv").write_text(
        "image,label,patient_id,map_t2\n"
        "images/a.nii.gz,labels/a.nii.gz,p1,t2/a.nii.gz\n"
        "images/b.nii.gz,labels/b.nii.gz,p2,\n"
        "images/c.nii.gz,labels/c.nii.gz,p3,t2/missing.nii.gz\n")
    coll = ingest(DataConfig(layout="csv", root=root))
    assert [c.case_id for c in coll.cases] == ["a", "b"]
    assert coll.cases[0].maps == {"t2": str(root / "t2/a.nii.gz")} and coll.cases[1].maps == {}
    assert "t2/missing.nii.gz" in coll.skipped[str(root / "images/c.nii.gz")]
    both = ingest(DataConfig(layout="csv", root=root, maps={"t2": "maps/<case>_t2.nii.gz"}))
    assert [c.maps["t2"] for c in both.cases] == [str(root / "t2/a.nii.gz"),
                                                  str(root / "maps/b_t2.nii.gz")]
    (root / "manifest.csv").write_text("image,label,patient_id,map_t-2\n"
                                       "images/a.nii.gz,labels/a.nii.gz,p1,t2/a.nii.gz\n")
    with pytest.raises(LayoutError, match="column 'map_t-2'"):
        ingest(DataConfig(layout="csv", root=root))


def test_nnunet_takes_the_pattern(tmp_path: Path) -> None:
    root = tmp_path / "Dataset001_Knee"
    (root / "imagesTr").mkdir(parents=True)
    (root / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "MR"}, "labels": {"background": 0, "cartilage": 1},
        "numTraining": 1, "file_ending": ".nii.gz"}))
    _vol(root / "imagesTr" / "knee_001_0000.nii.gz", 100)
    _vol(root / "labelsTr" / "knee_001.nii.gz", 0, np.uint8)
    _vol(root / "mapsTr" / "knee_001_t2.nii.gz", 35.0, np.float32)
    coll = ingest(DataConfig(layout="nnunet", root=root, maps={"t2": "mapsTr/<case>_t2.nii.gz"}))
    assert coll.cases[0].maps == {"t2": str(root / "mapsTr/knee_001_t2.nii.gz")}


def test_validation_quarantines_disagreeing_maps(tmp_path: Path) -> None:
    root = _folder(tmp_path / "ds", ("good", "shape", "shift", "broken", "none"))
    _vol(root / "maps" / "good_t2.nii.gz", 40.0, np.float32)
    _vol(root / "maps" / "shape_t2.nii.gz", 40.0, np.float32, shape=(8, 8, 5))
    shifted = AFFINE.copy()
    shifted[0, 3] = 0.75
    _vol(root / "maps" / "shift_t2.nii.gz", 40.0, np.float32, affine=shifted)
    (root / "maps" / "broken_t2.nii.gz").write_bytes(b"not a volume")
    (root / "maps" / "none_t2.nii.gz").unlink(missing_ok=True)
    coll = ingest(DataConfig(layout="folder", root=root, maps={"t2": "maps/<case>_t2.nii.gz"}))
    assert [c.case_id for c in coll.cases] == ["broken", "good", "shape", "shift"]
    vcfg = ValidateConfig(min_valid_fraction=0.25)
    result = run_expectations(collect_facts(coll, vcfg), vcfg)
    assert result.passed == ["good"]
    failed = {k: "; ".join(v) for k, v in result.failed.items()}
    assert str(root / "maps/shape_t2.nii.gz") in failed["shape"]
    assert "shape 8x8x5 differs from image shape 8x8x4" in failed["shape"]
    assert str(root / "maps/shift_t2.nii.gz") in failed["shift"]
    assert "affine differs from image affine by 0.75 mm" in failed["shift"]
    assert "map 't2' unreadable" in failed["broken"] and "broken_t2.nii.gz" in failed["broken"]
    assert [c.case_id for c in apply_quarantine(coll, result, vcfg).cases] == ["good"]


def test_map_problems_within_tolerance_and_legacy_qmap(tmp_path: Path) -> None:
    _vol(tmp_path / "img.nii.gz", 100)
    nudged = AFFINE.copy()
    nudged[1, 3] = 5e-4
    _vol(tmp_path / "q.nii.gz", 3.0, np.float32, affine=nudged)
    qmap = str(tmp_path / "q.nii.gz")
    case = Case("x", "x", (str(tmp_path / "img.nii.gz"),), meta={"qmap": qmap})
    vol = load_volume(case)
    assert case.maps == {"qmap": qmap} and case.files[-1] == qmap
    assert map_problems(vol, 1e-3) == []
    assert "affine differs" in map_problems(vol, 1e-4)[0]
