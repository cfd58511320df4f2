"""3D prediction path: GT → slice grid → reassembly is exact; the oracle scores ≥ 0.99 with the
source geometry; propagation runs for both families."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from samtune.config import ConvertConfig, EvalConfig, ModelConfig
from samtune.data.cases import Case
from samtune.data.io import load_volume, read_image
from samtune.data.io_formats import write_volume
from samtune.data.render import SliceGrid
from samtune.eval.volume_eval import evaluate_volumes
from samtune.inference.gt_prompts import gt_instances
from samtune.inference.model_source import load_model
from samtune.inference.outputs import prediction_path
from samtune.inference.predictor import SlicePredictor
from samtune.inference.propagate import (
    key_boxes,
    key_slice_of,
    propagate_boxes,
    propagate_video,
)
from samtune.inference.reassemble import label_slice, reassemble


def _rotation(theta: float) -> np.ndarray:
    c, s = np.cos(theta), np.sin(theta)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]])


AFFINES = {
    "anisotropic": np.diag([0.7, 0.5, 2.5, 1.0]),
    "oblique": np.block([[_rotation(0.4) @ _rotation(0.3).T[[2, 0, 1]] @ np.diag([0.8, 0.9, 1.5]),
                          np.array([[10.0], [-5.0], [3.0]])], [np.zeros((1, 3)), np.ones((1, 1))]]),
    "negative": np.diag([-0.6, 0.8, -1.2, 1.0]),
}


def _blobs(shape=(40, 36, 20), seed=0) -> tuple[np.ndarray, np.ndarray]:
    """A bright tube (class 1) and a ball (class 2) in noise: image int16, label uint8."""
    rng = np.random.default_rng(seed)
    i, j, k = np.indices(shape)
    label = np.zeros(shape, np.uint8)
    label[((i - 12 - k * 0.3) ** 2 + (j - 10) ** 2) < 9] = 1
    label[((i - 28) ** 2 + (j - 24) ** 2 + (k - 10) ** 2 * 4) < 36] = 2
    image = (rng.normal(0, 20, shape) + 300 * (label > 0)).astype(np.int16)
    return image, label


def _case(tmp: Path, name: str, affine: np.ndarray, ext: str) -> Case:
    image, label = _blobs(seed=len(name))
    write_volume(tmp / f"{name}{ext}", image, affine)
    write_volume(tmp / f"{name}_label{ext}", label, affine)
    return Case(case_id=name, patient_id=name, image_paths=(str(tmp / f"{name}{ext}"),),
                label_path=str(tmp / f"{name}_label{ext}"))


CONVERT = ConvertConfig(img_size=64, intensity="window", window_level=300, window_width=800,
                        channels=3, min_component_area=0)


@pytest.mark.parametrize("kind", sorted(AFFINES))
@pytest.mark.parametrize("ext", [".nii.gz", ".nrrd"])
@pytest.mark.parametrize("axis", ["axial", "coronal"])
def test_ground_truth_round_trip_is_exact(tmp_path: Path, kind: str, ext: str, axis: str) -> None:
    case = _case(tmp_path, f"c_{kind}", AFFINES[kind], ext)
    vol = load_volume(case)
    cfg = CONVERT.model_copy(update={"axis": axis})
    grid = SliceGrid.build(vol, cfg)
    instances = gt_instances(vol, cfg, [1, 2], grid)
    slices = {k: label_slice(inst.masks.astype(float), inst.labels, cfg.img_size)
              for k, inst in instances.items()}
    back = reassemble(grid, slices)
    assert np.array_equal(back, vol.label)
    out = write_volume(prediction_path(tmp_path / "out", case), back.astype(np.uint8),
                       vol.affine)
    assert out.name.endswith(ext)
    array, affine, _ = read_image(out)
    _, source_affine, _ = read_image(case.label_path)
    assert np.allclose(affine, source_affine, atol=1e-6) and np.array_equal(array, vol.label)


def test_oracle_scores_one_with_source_geometry(tmp_path: Path) -> None:
    cases = [_case(tmp_path, f"o{i}", AFFINES[k], e) for i, (k, e) in
             enumerate([("oblique", ".nrrd"), ("negative", ".nii.gz")])]
    loaded = load_model(ModelConfig(name="oracle", img_size=64), device="cpu")
    ev = EvalConfig(cldice_classes=["tube"], biomarkers={"volume_ml": True}, qc_cases=1)
    result = evaluate_volumes(loaded, cases, CONVERT, ev, tmp_path / "run", {1: "tube", 2: "ball"})
    assert (result.volume["dice"] >= 0.99).all() and len(result.volume) == 4
    assert result.global_summary["tube"]["cldice"]["mean"] >= 0.99
    for case in cases:
        _, affine, _ = read_image(prediction_path(tmp_path / "run", case))
        assert np.allclose(affine, read_image(case.image_paths[0])[1], atol=1e-6)
    for rel in ("metrics/volume.csv", "metrics/slice.csv", "metrics/global.json",
                "biomarkers.csv", "report.html"):
        assert (tmp_path / "run" / rel).is_file(), rel


def test_oracle_on_a_coarser_model_grid_loses_only_resampling(tmp_path: Path) -> None:
    case = _case(tmp_path, "coarse", AFFINES["anisotropic"], ".nii.gz")
    loaded = load_model(ModelConfig(name="oracle", img_size=32), device="cpu")
    result = evaluate_volumes(loaded, [case], CONVERT, EvalConfig(slice_metrics=False),
                              tmp_path / "run", {1: "tube", 2: "ball"})
    dice = result.volume["dice"]
    assert (dice < 1.0).any() and (dice > 0.7).all()  # resampling 64 → 32 → 64 costs something


def test_unlabelled_cases_are_refused(tmp_path: Path) -> None:
    case = _case(tmp_path, "u", AFFINES["anisotropic"], ".nii.gz")
    case = Case(case_id="u", patient_id="u", image_paths=case.image_paths)
    loaded = load_model(ModelConfig(name="oracle", img_size=64), device="cpu")
    with pytest.raises(ValueError, match="infer"):
        evaluate_volumes(loaded, [case], CONVERT, EvalConfig(), tmp_path / "run", {1: "tube"})


@pytest.mark.parametrize("name", ["sam_tiny", "sam2_tiny"])
def test_propagation_from_one_key_slice(tmp_path: Path, name: str) -> None:
    torch.manual_seed(0)
    case = _case(tmp_path, "p", AFFINES["anisotropic"], ".nii.gz")
    vol = load_volume(case)
    cfg = CONVERT.model_copy(update={"img_size": 64})
    grid = SliceGrid.build(vol, cfg)
    instances = gt_instances(vol, cfg, [1, 2], grid)
    key = key_slice_of(instances)
    loaded = load_model(ModelConfig(name=name, img_size=64), device="cpu")
    predictor = SlicePredictor(loaded.model.eval(), cfg.img_size)
    boxes, labels = key_boxes(instances[key]), instances[key].labels
    run = propagate_video if name == "sam2_tiny" else propagate_boxes
    out = run(predictor, grid, key, boxes, labels)
    assert key in out and all(v.shape == (64, 64) for v in out.values())
    if name == "sam2_tiny":  # the video predictor visits every frame in both directions
        assert sorted(out) == list(range(grid.n_slices))
