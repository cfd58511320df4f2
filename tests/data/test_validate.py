"""Validation: facts per case, Great Expectations checks with reasons, quarantine, report."""
from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from samtune.config import ValidateConfig
from samtune.data.cases import Case, CaseCollection, DataError, Volume
from samtune.data.validate import (
    apply_quarantine,
    case_facts,
    collect_facts,
    run_expectations,
)
from samtune.data.validation_report import write_report

SHAPE = (16, 16, 8)
AFFINE = np.diag([0.8, 0.8, 2.0, 1.0])


def _image(dtype=np.int16) -> np.ndarray:
    """CT-like values in [-1000, 500]."""
    rng = np.random.default_rng(0)
    return rng.integers(-1000, 500, SHAPE).astype(dtype)


def _label(value=1, dtype=np.uint8) -> np.ndarray:
    lab = np.zeros(SHAPE, dtype=dtype)
    lab[4:7, 4:7, 2:5] = value  # 27 voxels
    return lab


def _save(path: Path, arr: np.ndarray, affine: np.ndarray = AFFINE) -> str:
    nib.save(nib.Nifti1Image(arr, affine), path)
    return str(path)


def _case(root: Path, cid: str, image: np.ndarray, label: np.ndarray | None = None,
          modality: str = "CT", image_affine=AFFINE, label_affine=AFFINE) -> Case:
    img = _save(root / f"{cid}_img.nii.gz", image, image_affine)
    lab = None if label is None else _save(root / f"{cid}_lab.nii.gz", label, label_affine)
    return Case(cid, f"patient_{cid}", (img,), lab, group="g", modality=modality)


def _cases(root: Path) -> list[Case]:
    nan = _image(np.float32)
    nan[0, 0, :3] = np.nan
    inf = _image(np.float32)
    inf[1, 1, 1] = np.inf
    inf[2, 2, 2] = -np.inf
    half = _label().astype(np.float32)
    half[5, 5, 3] = 0.5
    seven = _label()
    seven[10, 10, 6] = 7
    hot = _image()
    hot[:, :, 0] += 6000  # 1/8 of the voxels: p99.5 out of range, p0.5 not
    shifted = AFFINE.copy()
    shifted[0, 3] = 1.5
    cases = [
        _case(root, "clean", _image(), _label()),
        _case(root, "unlabelled", _image()),
        _case(root, "mr_bright", _image() + 20000, _label(), modality="MR"),
        _case(root, "nan", nan, _label()),
        _case(root, "inf", inf, _label()),
        _case(root, "halflabel", _image(), half),
        _case(root, "seven", _image(), seven),
        _case(root, "empty", _image(), np.zeros(SHAPE, np.uint8)),
        _case(root, "shape", _image(), _label()[:, :, :7]),
        _case(root, "affine", _image(), _label(), label_affine=shifted),
        _case(root, "spacing", _image(), _label(), image_affine=np.diag([0.8, 0.8, 12.0, 1]),
              label_affine=np.diag([0.8, 0.8, 12.0, 1])),
        _case(root, "hu", hot, _label()),
    ]
    cut = root / "cut_img.nii.gz"
    _save(cut, _image())
    data = cut.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    cases.append(Case("cut", "patient_cut", (str(cut),), None, modality="CT"))
    return cases


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    root = tmp_path_factory.mktemp("validate")
    skipped = {str(root / "orphan_lab.nii.gz"): "label <without> image"}
    coll = CaseCollection("folder", str(root), _cases(root), {1: "vessel"}, skipped=skipped)
    cfg = ValidateConfig(min_valid_fraction=0.0)
    facts = collect_facts(coll, cfg)
    return coll, cfg, facts, run_expectations(facts, cfg)


EXPECTED = {  # case → the one reason it must fail with (substrings)
    "nan": ["image has 3 NaN voxels"],
    "inf": ["image has 2 infinite voxels"],
    "halflabel": ["label has non-integer values (e.g. 0.5)"],
    "seven": ["undeclared label values [7]"],
    "empty": ["label is empty (0 foreground voxels), below validate.min_label_voxels=1"],
    "shape": ["label shape 16x16x7 differs from image shape 16x16x8"],
    "affine": ["label affine differs from image affine by 1.5 mm (tolerance 0.001 mm)"],
    "spacing": ["spacing_k 12 mm outside [0.05, 10]"],
    "hu": ["CT intensity p99.5 6447.3 ", "outside HU range [-2048, 4096]"],
    "cut": ["unreadable:", "cut_img.nii.gz"],
}


def test_clean_cases_pass(synthetic):
    _, _, _, result = synthetic
    # MR is not held to the HU range; an unlabelled case is checked on its image only.
    assert sorted(result.passed) == ["clean", "mr_bright", "unlabelled"]
    assert set(result.failed) == set(EXPECTED)
    assert result.valid_fraction == pytest.approx(3 / 13)
    assert result.statistics["evaluated_expectations"] == 14  # 13 + data.maps agreement


@pytest.mark.parametrize("case_id", sorted(EXPECTED))
def test_each_failure_has_its_specific_reason(synthetic, case_id):
    reasons = synthetic[3].failed[case_id]
    assert len(reasons) == 1, reasons  # one problem → one reason (no null-fact noise)
    for part in EXPECTED[case_id]:
        assert part in reasons[0], reasons


def test_facts_of_synthetic_cases(synthetic):
    facts = synthetic[2].set_index("case_id")
    clean = facts.loc["clean"]
    assert (clean.spacing_i, clean.spacing_j, clean.spacing_k) == pytest.approx((0.8, 0.8, 2.0))
    assert clean["shape"] == "16x16x8" and clean.orientation == "RAS"
    assert clean.label_values == [0, 1] and clean.label_values_str == "0,1"
    assert clean.label_voxel_counts == {"0": 16 * 16 * 8 - 27, "1": 27}
    assert clean.foreground_voxels == 27 and clean.undeclared_label_values == []
    assert facts.loc["seven"].undeclared_label_values == [7]
    assert facts.loc["nan"].nan_count == 3 and np.isfinite(facts.loc["nan"].p50)
    assert bool(facts.loc["unlabelled"].has_label) is False
    assert "cut_img.nii.gz" in facts.loc["cut"].read_error


def test_case_facts_geometry_and_percentiles():
    image = np.arange(1000, dtype=np.float32).reshape(10, 10, 10)
    image[0, 0, 0] = np.nan
    label = np.zeros((10, 10, 10), np.int16)
    label[1, 1, 1] = 3
    label[2, 2, 2] = -1
    affine = np.diag([-0.5, -0.5, 3.0, 1.0])
    vol = Volume(Case("c", "p", ("x",)), image[None], affine, label, affine + 0.01)
    f = case_facts(vol)
    assert f["orientation"] == "LPS"
    assert (f["spacing_i"], f["spacing_j"], f["spacing_k"]) == (0.5, 0.5, 3.0)
    assert f["nan_count"] == 1 and f["inf_count"] == 0
    finite = np.arange(1, 1000)
    assert f["p50"] == pytest.approx(np.percentile(finite, 50))
    assert f["p99_5"] == pytest.approx(np.percentile(finite, 99.5))
    assert f["label_values"] == [-1, 0, 3] and f["foreground_voxels"] == 2
    assert f["label_voxel_counts"] == {"-1": 1, "0": 998, "3": 1}
    assert f["label_affine_max_diff_mm"] == pytest.approx(0.01)


def test_workers_give_the_same_facts(synthetic):
    coll, cfg, facts, _ = synthetic
    small = coll.subset({"clean", "seven", "cut"})
    parallel = collect_facts(small, cfg, workers=2)
    assert list(parallel.case_id) == ["clean", "seven", "cut"]
    serial = facts.set_index("case_id").loc[["clean", "seven", "cut"]].reset_index()
    assert parallel[["case_id", "p50", "foreground_voxels"]].equals(
        serial[["case_id", "p50", "foreground_voxels"]])
    assert parallel.undeclared_label_values.iloc[1] == [7]


def test_declared_label_values_from_config(synthetic):
    coll, _, _, _ = synthetic
    cfg = ValidateConfig(label_values=[0, 1, 7], min_valid_fraction=0.0)
    facts = collect_facts(coll.subset({"seven"}), cfg)
    assert facts.undeclared_label_values.iloc[0] == []
    assert run_expectations(facts, cfg).passed == ["seven"]


def test_quarantine_keeps_passing_cases(synthetic):
    coll, cfg, _, result = synthetic
    kept = apply_quarantine(coll, result, cfg)
    assert sorted(c.case_id for c in kept.cases) == ["clean", "mr_bright", "unlabelled"]
    assert kept.skipped == coll.skipped


def test_quarantine_below_min_valid_fraction_lists_every_failure(synthetic):
    coll, _, _, result = synthetic
    with pytest.raises(DataError) as err:
        apply_quarantine(coll, result, ValidateConfig(min_valid_fraction=0.5))
    msg = str(err.value)
    assert "3 of 13 cases passed validation (23%)" in msg
    assert "below validate.min_valid_fraction=0.5" in msg
    for case_id, parts in EXPECTED.items():
        line = next(ln for ln in msg.splitlines() if ln.strip().startswith(f"{case_id}:"))
        assert all(p in line for p in parts), line


def test_report_files(synthetic, tmp_path):
    coll, _, _, result = synthetic
    paths = write_report(result, coll, tmp_path / "report")
    assert sorted(p.name for p in (tmp_path / "report").iterdir()) == [
        "validation.html", "validation.json"]  # no temp files left behind
    data = json.loads(paths["json"].read_text())
    assert data["summary"]["passed"] == 3 and data["summary"]["quarantined"] == 10
    assert data["quarantined_cases"]["seven"] == result.failed["seven"]
    assert list(data["quarantined_files"].values()) == ["label <without> image"]
    assert {f["case_id"] for f in data["facts"]} == {c.case_id for c in coll.cases}
    page = paths["html"].read_text()
    for case in coll.cases:
        assert f"<td>{case.case_id}</td>" in page
    assert "label &lt;without&gt; image" in page and "<without>" not in page
    assert "undeclared label values [7]" in page


# Real data (../shared/data): skipped where absent.

def _real(shared: Path, cid: str, image: str, label: str, modality: str) -> Case:
    return Case(cid, cid, (str(shared / image),), str(shared / label), modality=modality)


def test_real_nrrd_brain_facts(shared_data):
    cases = [_real(shared_data, "brain1", "nrrd_mri/brain1_image.nrrd",
                   "nrrd_mri/brain1_label.nrrd", "MR"),
             _real(shared_data, "breast1", "nrrd_mri/breast1_image.nrrd",
                   "nrrd_mri/breast1_label.nrrd", "MR")]
    coll = CaseCollection("folder", str(shared_data), cases, {1: "lesion"})
    cfg = ValidateConfig()
    facts = collect_facts(coll, cfg).set_index("case_id")
    brain = facts.loc["brain1"]
    assert brain.orientation == "LAS"  # NRRD's negative y (LPS) is anterior in RAS+
    assert facts.loc["breast1"].orientation == "LPS"
    assert (brain.spacing_i, brain.spacing_j, brain.spacing_k) == pytest.approx(
        (0.78125, 0.78125, 6.5))
    assert brain["shape"] == "256x256x25" and brain.label_values == [0, 1]
    assert run_expectations(facts.reset_index(), cfg).passed == ["brain1", "breast1"]


def test_real_spinal_float_labels_pass(shared_data):
    case = _real(shared_data, "unf01", "spinal_mri/sub-unf01_T1w.nii.gz",
                 "spinal_mri/sub-unf01_T1w_seg-manual.nii.gz", "MR")
    stored = nib.load(case.label_path).get_data_dtype()
    assert stored.kind == "f"  # the file holds 0.0/1.0 floats
    cfg = ValidateConfig()
    facts = collect_facts(CaseCollection("folder", str(shared_data), [case], {1: "cord"}), cfg)
    assert bool(facts.label_is_integer.iloc[0]) and facts.label_values.iloc[0] == [0, 1]
    assert run_expectations(facts, cfg).passed == ["unf01"]


def test_real_totalsegmentator_ct(shared_data):
    case = _real(shared_data, "ct_sm", "ct_mr_multiorgan/example_ct_sm.nii.gz",
                 "ct_mr_multiorgan/example_seg.nii.gz", "CT")
    values = np.unique(np.asarray(nib.load(case.label_path).dataobj)).astype(int)
    labels = {int(v): f"organ_{v}" for v in values if v != 0}
    assert len(labels) == 41
    cfg = ValidateConfig()
    facts = collect_facts(CaseCollection("folder", str(shared_data), [case], labels), cfg)
    assert facts.label_values.iloc[0] == [0, *sorted(labels)]
    assert run_expectations(facts, cfg).passed == ["ct_sm"]
    missing = {k: v for k, v in labels.items() if k != 52}  # aorta left undeclared
    facts = collect_facts(CaseCollection("folder", str(shared_data), [case], missing), cfg)
    assert run_expectations(facts, cfg).failed["ct_sm"] == [
        "undeclared label values [52] (not in validate.label_values or the dataset's labels)"]
