"""Evaluation never loses a small structure: the oracle keeps every 1-voxel lesion.

Many small lesions per slice (1–30 voxels, MS-lesion-like) go through the real evaluation path
(NIfTI on disk → SliceGrid → gt_instances → oracle → reassembly → metrics + lesion_count):
volume Dice ≥ 0.99 and the lesion count of the prediction equals the ground truth's, both with a
training-style convert.min_component_area and with a slice grid finer than the oracle's zoo
default of 256 (the two ways lesions used to vanish). Plus one real volume from ../shared/data.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from samtune.config import ConvertConfig, EvalConfig, ModelConfig
from samtune.data.cases import Case
from samtune.data.io import load_volume, read_image
from samtune.data.io_formats import write_volume
from samtune.data.render import SliceGrid
from samtune.eval.volume_eval import evaluate_volumes
from samtune.inference.gt_prompts import gt_instances
from samtune.inference.model_source import load_model
from samtune.inference.outputs import prediction_path
from samtune.models.oracle import answer

SPACING = (0.9, 1.1, 3.0)  # mm, non-isotropic
_FULL = np.ones((3, 3, 3), bool)  # 26-connected, as the lesion_count biomarker counts


def _lesions(shape: tuple[int, int, int], seed: int = 0, cell: int = 9) -> np.ndarray:
    """One random 4-connected blob of 1–30 voxels per cell×cell tile of every slice (the first
    tile's a single voxel), each inside its tile's (cell-1)² interior, so blobs of a slice never
    touch: 49 a slice for 64² slices and cell 9."""
    rng = np.random.default_rng(seed)
    label = np.zeros(shape, np.uint8)
    steps = ((0, 1), (1, 0), (0, -1), (-1, 0))
    for k in range(shape[2]):
        for t, (i0, j0) in enumerate((i, j) for i in range(0, shape[0] - cell + 2, cell)
                                     for j in range(0, shape[1] - cell + 2, cell)):
            size = 1 if t == 0 else int(rng.integers(1, 31))
            blob = [(int(rng.integers(0, cell - 1)), int(rng.integers(0, cell - 1)))]
            while len(blob) < size:
                y, x = blob[rng.integers(len(blob))]
                dy, dx = steps[rng.integers(4)]
                if 0 <= y + dy < cell - 1 and 0 <= x + dx < cell - 1 and \
                        (y + dy, x + dx) not in blob:
                    blob.append((y + dy, x + dx))
            for y, x in blob:
                label[i0 + y, j0 + x, k] = 1
    return label


def _case(tmp: Path, name: str, shape: tuple[int, int, int], cell: int = 9) -> Case:
    label = _lesions(shape, cell=cell)
    noise = np.random.default_rng(1).normal(100, 10, shape)
    affine = np.diag([*SPACING, 1.0])
    write_volume(tmp / f"{name}.nii.gz", (noise + 200 * label).astype(np.float32), affine)
    write_volume(tmp / f"{name}_label.nii.gz", label, affine)
    return Case(case_id=name, patient_id=name, image_paths=(str(tmp / f"{name}.nii.gz"),),
                label_path=str(tmp / f"{name}_label.nii.gz"), modality="MR")


def _evaluate_oracle(tmp: Path, case: Case, convert: ConvertConfig, img_size: int | None = None
                     ) -> tuple[float, dict[str, float], np.ndarray]:
    """Oracle volume Dice, lesion_count rows {pred, gt}, and the written prediction."""
    loaded = load_model(ModelConfig(name="oracle", img_size=img_size), device="cpu")
    ev = EvalConfig(slice_metrics=False, qc_cases=0,
                    biomarkers={"lesion_count": {"min_size_mm3": 0}})
    result = evaluate_volumes(loaded, [case], convert, ev, tmp / "run", {1: "lesion"})
    bio = result.biomarkers
    count = bio[(bio["biomarker"] == "lesion_count") & (bio["value_name"] == "count")].iloc[0]
    pred, _, _ = read_image(prediction_path(tmp / "run", case))
    return float(result.volume["dice"].iloc[0]), {"pred": count["pred"], "gt": count["gt"]}, pred


def test_synthetic_volume_has_many_small_lesions_per_slice() -> None:
    label = _lesions((64, 64, 8))
    for k in range(8):
        comp, n = ndimage.label(label[..., k], structure=np.ones((3, 3)))
        sizes = np.bincount(comp.ravel())[1:]
        assert n >= 40 and sizes.min() == 1 and sizes.max() <= 30


def test_gt_instances_keep_components_under_min_component_area(tmp_path: Path) -> None:
    case = _case(tmp_path, "inst", (64, 64, 8))
    vol = load_volume(case)
    cfg = ConvertConfig(img_size=64, intensity="percentile", min_component_area=5)
    instances = gt_instances(vol, cfg, [1], SliceGrid.build(vol, cfg))
    for k in range(8):  # axial RAS with a positive diagonal affine: canonical slice k is k
        n = ndimage.label(vol.label[..., k], structure=np.ones((3, 3)))[1]
        assert len(instances[k].labels) == n
        assert min(int(m.sum()) for m in instances[k].masks) == 1


@pytest.mark.parametrize("convert_size, why", [
    (64, "slice grid = source grid, training filter min_component_area=5 must not apply"),
    (512, "slice grid 8× finer than source, oracle not resampled to the zoo's 256"),
])
def test_oracle_keeps_every_small_lesion(tmp_path: Path, convert_size: int, why: str) -> None:
    case = _case(tmp_path, "ms", (64, 64, 8))
    convert = ConvertConfig(img_size=convert_size, intensity="percentile", min_component_area=5)
    dice, count, pred = _evaluate_oracle(tmp_path, case, convert)
    gt = read_image(case.label_path)[0]
    assert dice >= 0.99, why
    assert count["pred"] == count["gt"] == ndimage.label(gt, _FULL)[1], why
    assert ndimage.label(pred, _FULL)[1] == ndimage.label(gt, _FULL)[1]


def test_oracle_on_an_mni_like_grid_is_exact(tmp_path: Path) -> None:
    """182×218 slices (the 1 mm MNI grid) on a 512 slice grid: the zoo's 256 oracle grid holds
    barely more than one pixel per voxel, and its round trip used to delete lesions."""
    case = _case(tmp_path, "mni", (182, 218, 3), cell=26)  # 7×8 lesions a slice
    convert = ConvertConfig(img_size=512, intensity="percentile", min_component_area=5)
    dice, count, _ = _evaluate_oracle(tmp_path, case, convert)
    n_gt = ndimage.label(read_image(case.label_path)[0], _FULL)[1]
    assert dice == 1.0 and count["pred"] == count["gt"] == n_gt
    coarse, coarse_count, _ = _evaluate_oracle(tmp_path / "coarse", case, convert, img_size=128)
    assert coarse < 0.99 and coarse_count["pred"] < count["gt"]  # an explicit coarse grid costs


def test_oracle_answer_is_exact_unless_its_grid_is_coarser() -> None:
    gt = np.zeros((2, 40, 40), bool)
    gt[0, 7, 13] = True  # one pixel
    gt[1, 20:30, 5:9] = True
    assert np.array_equal(answer(gt, 40), gt) and answer(gt, 40).dtype == np.float32
    assert np.array_equal(answer(gt, 97), gt)  # a finer grid: lossless round trip
    coarse = answer(gt, 10)  # 4 slice pixels a model pixel, sampled at their centres
    assert coarse[0].sum() == 0 and coarse[1].sum() > 0  # the one-pixel lesion is gone


# TotalSegmentator's example CT (122×101×30, 3 mm): classes whose small components (a voxel is
# ~4.4 px on a 256 slice grid) fell under min_component_area=5 (class 13 is a single voxel).
REAL_CT_CLASSES = {9: "c9", 13: "c13", 103: "c103", 115: "c115"}


def test_oracle_on_a_real_volume(shared_data: Path, tmp_path: Path) -> None:
    """Real CT on a 256 slice grid with the training filter min_component_area=5: every label
    voxel of the classes above is prompted and comes back (they scored 0.0–0.998 before)."""
    ct = shared_data / "ct_mr_multiorgan"
    case = Case(case_id="ct", patient_id="ct", modality="CT",
                image_paths=(str(ct / "example_ct_sm.nii.gz"),),
                label_path=str(ct / "example_seg.nii.gz"))
    loaded = load_model(ModelConfig(name="oracle"), device="cpu")
    ev = EvalConfig(slice_metrics=False, qc_cases=0, save_predictions=False)
    result = evaluate_volumes(loaded, [case], ConvertConfig(img_size=256, min_component_area=5),
                              ev, tmp_path / "run", REAL_CT_CLASSES)
    dice = result.volume.set_index("class")["dice"]
    assert sorted(dice.index) == sorted(REAL_CT_CLASSES.values())
    assert (dice >= 0.99).all(), dice.to_dict()
