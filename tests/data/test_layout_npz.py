"""Layout `npz`: MedSAM .npz files through ingest → validate → convert → oracle evaluation.

A synthetic set always runs; MedSAM2's six DeepLesion samples (../shared/data/ct_lesion_npz)
run where that folder exists. The oracle answers with the ground truth through the real
conversion, prompting and reassembly path, so volume Dice ≥ 0.99 proves image and label align.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from samtune.config import ConvertConfig, DataConfig, EvalConfig, ModelConfig, ValidateConfig
from samtune.data.convert import convert_collection
from samtune.data.layouts import ingest
from samtune.data.layouts.npz import patient_of
from samtune.data.validate import collect_facts, run_expectations
from samtune.eval.volume_eval import evaluate_volumes
from samtune.inference.model_source import load_model
from tests.data.test_io_npz import make_npz

IDENTITY = {"intensity": "window", "window_level": 127.5, "window_width": 255.0}


def _pipeline(collection, tmp: Path, img_size: int) -> tuple[dict, object]:
    """validate → convert → oracle evaluation; returns (COCO json, volume-eval result)."""
    facts = collect_facts(collection, ValidateConfig(min_label_voxels=0))
    result = run_expectations(facts, ValidateConfig(min_label_voxels=0))
    assert result.failed == {}, result.failed
    assert sorted(result.passed) == sorted(c.case_id for c in collection.cases)
    convert = ConvertConfig(img_size=img_size, channels=1, workers=1, min_component_area=0,
                            **IDENTITY)
    convert_collection(collection, convert, tmp / "coco")
    coco = json.loads((tmp / "coco" / "annotations.json").read_text())
    loaded = load_model(ModelConfig(name="oracle"), device="cpu")
    ev = EvalConfig(slice_metrics=False, qc_cases=0, save_predictions=False, clicks=[])
    evaluated = evaluate_volumes(loaded, collection.cases, convert, ev, tmp / "run",
                                 collection.labels)
    return coco, evaluated


def test_npz_layout_cases_splits_patients_and_skips(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    (root / "train").mkdir(parents=True)
    (root / "valid").mkdir()
    make_npz(root / "train" / "CT_Lesion_000015_01_01_081-093.npz")
    make_npz(root / "valid" / "CT_Lesion_000015_01_01_103-115.npz", seed=1)
    make_npz(root / "MR_Brain_case7.npz", gts=None)
    np.savez(root / "only_gts.npz", gts=np.zeros((2, 3, 4), np.uint8))
    (root / "broken.npz").write_bytes(b"not a zip")
    (root / "notes.txt").write_text("ignored")

    coll = ingest(DataConfig(layout="npz", root=root, include_unlabelled=True))
    by = {c.case_id: c for c in coll.cases}
    assert sorted(by) == ["CT_Lesion_000015_01_01_081-093", "CT_Lesion_000015_01_01_103-115",
                          "MR_Brain_case7"]
    first = by["CT_Lesion_000015_01_01_081-093"]
    assert first.patient_id == by["CT_Lesion_000015_01_01_103-115"].patient_id \
        == "CT_Lesion_000015"  # one DeepLesion patient: never split apart
    assert (first.split, by["CT_Lesion_000015_01_01_103-115"].split) == ("train", "val")
    assert first.image_paths == (first.label_path,) and first.modality == "CT"
    mr = by["MR_Brain_case7"]
    assert mr.label_path is None and mr.modality == "MR" and mr.split is None
    assert "no 'imgs' array" in coll.skipped[str(root / "only_gts.npz")]
    assert "cannot read npz file" in coll.skipped[str(root / "broken.npz")]
    assert set(coll.fingerprints) == {str(root / "train" / "CT_Lesion_000015_01_01_081-093.npz"),
                                      str(root / "valid" / "CT_Lesion_000015_01_01_103-115.npz"),
                                      str(root / "MR_Brain_case7.npz")}
    labelled = ingest(DataConfig(layout="npz", root=root))
    assert len(labelled.cases) == 2  # the MR file has no gts: inference-only, left out


def test_patient_of() -> None:
    assert patient_of("CT_Lesion_000001_02_01_008-023") == "CT_Lesion_000001"
    assert patient_of("000001_02_01_008-023") == "000001"
    assert patient_of("CT_Abd_FLARE22_Tr_0001") == "CT_Abd_FLARE22_Tr_0001"


def test_synthetic_npz_through_convert_and_oracle(tmp_path: Path) -> None:
    (tmp_path / "ds").mkdir()
    for n in range(2):
        make_npz(tmp_path / "ds" / f"CT_case{n}.npz", seed=n)
    coll = ingest(DataConfig(layout="npz", root=tmp_path / "ds", labels={1: "a", 2: "b"}))
    coco, evaluated = _pipeline(coll, tmp_path, img_size=24)  # = the slice: no resize
    # each of the 6 axial slices (z) of each case is a picture; the label box covers z = 2, 3
    # and the single class-2 voxel z = 4
    per_case = {c: sum(r["case_id"] == c for r in coco["images"]) for c in ("CT_case0", "CT_case1")}
    assert per_case == {"CT_case0": 3, "CT_case1": 3}  # empty slices dropped (empty_slices none)
    assert {a["category_id"] for a in coco["annotations"]} == {1, 2}
    assert sum(a["area"] for a in coco["annotations"] if a["category_id"] == 1) == 2 * 2 * 4 * 9
    dice = evaluated.volume.set_index(["case_id", "class"])["dice"]
    assert len(dice) == 4 and (dice == 1.0).all(), dice.to_dict()


def test_deeplesion_npz_oracle_dice(shared_data: Path, tmp_path: Path) -> None:
    """MedSAM2's six DeepLesion sub-volumes (13–16 × 512 × 512): every case validates, converts
    and comes back from the oracle with volume Dice ≥ 0.99 on a 512 slice grid."""
    folder = shared_data / "ct_lesion_npz"
    if not folder.is_dir():
        pytest.skip(f"{folder} is absent")
    coll = ingest(DataConfig(layout="npz", root=folder, labels={1: "lesion"}))
    assert len(coll.cases) == 6 and len({c.patient_id for c in coll.cases}) == 5
    coco, evaluated = _pipeline(coll, tmp_path, img_size=512)
    assert {r["case_id"] for r in coco["images"]} == {c.case_id for c in coll.cases}
    dice = evaluated.volume.set_index("case_id")["dice"]
    assert len(dice) == 6 and (dice >= 0.99).all(), dice.to_dict()
