"""Metrics against hand-computed and analytic cases, every empty rule, and MONAI's DiceMetric."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import ndimage

from samtune.eval.metrics import (
    MetricTable,
    case_metrics,
    cldice,
    dice,
    hd95_mm,
    image_diagonal_mm,
    iou,
    nsd,
    slice_metrics,
)
from samtune.eval.metrics.topology import skeleton

ANISO = (0.5, 0.5, 2.0)


def ball(shape: tuple[int, ...], spacing: tuple[float, ...], centre_mm: tuple[float, ...],
         radius_mm: float) -> np.ndarray:
    """Voxels whose centre lies within radius_mm of centre_mm (origin at voxel 0, mm)."""
    grids = np.meshgrid(*[np.arange(n) * s for n, s in zip(shape, spacing)], indexing="ij")
    return sum((g - c) ** 2 for g, c in zip(grids, centre_mm)) <= radius_mm ** 2


def tube(shape: tuple[int, int, int] = (16, 16, 40), radius: float = 3.0) -> np.ndarray:
    """A straight cylinder along axis 2, voxel units."""
    x, y = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    disc = (x - shape[0] // 2) ** 2 + (y - shape[1] // 2) ** 2 <= radius ** 2
    out = np.zeros(shape, bool)
    out[:, :, 4:-4] = disc[:, :, None]
    return out


# ------------------------------------------------------------------ hand-computed overlap
def test_two_cubes_give_exact_dice_and_iou() -> None:
    a, b = np.zeros((24, 24, 24), bool), np.zeros((24, 24, 24), bool)
    a[4:12, 4:12, 4:12] = True          # 512 voxels
    b[8:16, 4:12, 4:12] = True          # 512 voxels, overlap 4·8·8 = 256
    assert dice(a, b) == pytest.approx(2 * 256 / 1024)
    assert iou(a, b) == pytest.approx(256 / 768)


def test_two_squares_2d() -> None:
    a, b = np.zeros((10, 10), bool), np.zeros((10, 10), bool)
    a[0:4, 0:4] = True                  # 16 pixels
    b[2:4, 0:4] = True                  # 8 pixels, all inside a
    assert dice(a, b) == pytest.approx(16 / 24)
    assert iou(a, b) == pytest.approx(0.5)


def test_identical_masks_are_perfect() -> None:
    a = ball((32, 32, 12), ANISO, (8, 8, 12), 5.0)
    assert hd95_mm(a, a, ANISO) == 0.0
    assert nsd(a, a, ANISO, tolerance_mm=0.0) == pytest.approx(1.0)
    assert dice(a, a) == pytest.approx(1.0)
    assert cldice(a, a) == pytest.approx(1.0)


# ------------------------------------------------------------------ surface distances in mm
@pytest.mark.parametrize("axis", [0, 2])
def test_offset_spheres_hd95_close_to_offset(axis: int) -> None:
    shape, d = (40, 40, 16), 4.0
    centre = (10.0, 10.0, 16.0)
    shifted = tuple(c + (d if i == axis else 0.0) for i, c in enumerate(centre))
    a, b = ball(shape, ANISO, centre, 6.0), ball(shape, ANISO, shifted, 6.0)
    hd = hd95_mm(a, b, ANISO)
    # analytic: surface distances of a shifted sphere spread uniformly over [0, d] → p95 = 0.95·d
    assert abs(hd - 0.95 * d) <= ANISO[axis]
    assert abs(hd - d) <= max(ANISO)
    assert hd <= d + 1e-6


def test_anisotropic_spacing_changes_hd95() -> None:
    a = np.zeros((16, 16, 16), bool)
    a[4:12, 4:12, 4:8] = True
    b = np.roll(a, 2, axis=2)           # 2 voxels along axis 2
    assert hd95_mm(a, b, (1.0, 1.0, 1.0)) == pytest.approx(2.0)
    assert hd95_mm(a, b, (1.0, 1.0, 3.0)) == pytest.approx(6.0)
    assert hd95_mm(a, b, (3.0, 3.0, 1.0)) == pytest.approx(2.0)  # in-plane spacing irrelevant


def test_nsd_tolerance_is_in_mm() -> None:
    a = np.zeros((16, 16, 16), bool)
    a[4:12, 4:12, 4:10] = True
    b = np.roll(a, 1, axis=2)           # one voxel of 2 mm along axis 2
    spacing = (0.5, 0.5, 2.0)
    assert nsd(a, b, spacing, tolerance_mm=2.0) == pytest.approx(1.0)
    assert nsd(a, b, spacing, tolerance_mm=1.0) < 0.9
    assert nsd(a, b, (0.5, 0.5, 0.5), tolerance_mm=1.0) == pytest.approx(1.0)


# ------------------------------------------------------------------ empty-case rules
SHAPE, SPACING = (10, 20, 30), (0.5, 1.0, 2.0)
DIAG = math.sqrt(5.0 ** 2 + 20.0 ** 2 + 60.0 ** 2)


def _pair(kind: str) -> tuple[np.ndarray, np.ndarray]:
    """(pred, gt) for an empty case; the non-empty mask is a 3×5×5 box."""
    full, empty = np.zeros(SHAPE, bool), np.zeros(SHAPE, bool)
    full[3:6, 5:10, 10:15] = True
    pairs = {"both_empty": (empty, empty), "missed": (empty, full), "false_positive": (full, empty)}
    return pairs[kind]


@pytest.mark.parametrize("kind, expected", [
    ("both_empty", {"dice": 1.0, "iou": 1.0, "hd95_mm": 0.0, "nsd": 1.0, "cldice": 1.0}),
    ("missed", {"dice": 0.0, "iou": 0.0, "hd95_mm": DIAG, "nsd": 0.0, "cldice": 0.0}),
    ("false_positive", {"dice": 0.0, "iou": 0.0, "hd95_mm": DIAG, "nsd": 0.0, "cldice": 0.0}),
])
def test_empty_case_rules(kind: str, expected: dict[str, float]) -> None:
    pred, gt = _pair(kind)
    got = {"dice": dice(pred, gt), "iou": iou(pred, gt), "hd95_mm": hd95_mm(pred, gt, SPACING),
           "nsd": nsd(pred, gt, SPACING, 1.0), "cldice": cldice(pred, gt)}
    assert got == pytest.approx(expected)
    assert all(math.isfinite(v) for v in got.values())


def test_image_diagonal_2d_and_outcomes() -> None:
    assert image_diagonal_mm((30, 40), (1.0, 1.0)) == pytest.approx(50.0)
    gt = np.zeros((6, 6, 6), np.uint8)
    pred = np.zeros_like(gt)
    gt[1:3, 1:3, 1:3] = 1               # class 1 missed
    pred[3:5, 3:5, 3:5] = 2             # class 2 false positive
    gt[0, 0, 0] = pred[0, 0, 0] = 4     # class 4 detected; class 3 true negative
    rows = case_metrics(pred, gt, (1.0, 1.0, 1.0), {1: "a", 2: "b", 3: "c", 4: "d"})
    assert [r["outcome"] for r in rows] == ["missed", "false_positive", "true_negative",
                                            "detected"]
    assert [r["hd95_mm"] for r in rows] == pytest.approx([math.sqrt(108), math.sqrt(108), 0, 0])
    assert rows[0]["gt_empty"] is False and rows[0]["pred_empty"] is True
    assert rows[0]["gt_voxels"] == 8 and rows[1]["pred_voxels"] == 8


@pytest.mark.filterwarnings("ignore:.*always_return_as_numpy:FutureWarning")
def test_monai_alone_gives_nan_or_inf_where_we_give_worst_value() -> None:
    from monai.metrics import compute_hausdorff_distance

    pred, gt = _pair("missed")
    with pytest.warns(UserWarning):
        raw = compute_hausdorff_distance(torch.from_numpy(pred)[None, None].float(),
                                         torch.from_numpy(gt)[None, None].float(),
                                         include_background=True, percentile=95, spacing=SPACING)
    assert not math.isfinite(raw.item())
    assert hd95_mm(pred, gt, SPACING) == pytest.approx(DIAG)


def test_spacing_must_match_dimensions() -> None:
    a = np.ones((4, 4, 4), bool)
    with pytest.raises(ValueError):
        hd95_mm(a, a, (1.0, 1.0))
    with pytest.raises(ValueError):
        nsd(a, a, (1.0, 0.0, 1.0))
    with pytest.raises(ValueError):
        dice(a, a[:, :, :2])


# ------------------------------------------------------------------ clDice
def test_cldice_tube_vs_itself_and_vs_gapped_tube() -> None:
    gt = tube()
    gapped = gt.copy()
    gapped[:, :, 18:22] = False
    assert cldice(gt, gt) == pytest.approx(1.0)
    score = cldice(gapped, gt)
    # tprec = 1 (gapped ⊂ gt); tsens ≈ (L - 4)/L, L ≈ 28 the gt centreline length
    assert 0.8 < score < 0.97
    assert cldice(gt, gapped) == pytest.approx(score)   # symmetric


def test_cldice_tiny_blob_uses_mask_as_skeleton() -> None:
    blob = np.zeros((8, 8, 8), bool)
    blob[2:4, 2:4, 2:4] = True          # skeletonize removes a 2×2×2 cube entirely
    assert np.array_equal(skeleton(blob), blob)
    assert cldice(blob, blob) == pytest.approx(1.0)
    far = np.roll(blob, 4, axis=0)
    assert cldice(far, blob) == 0.0


# ------------------------------------------------------------------ against MONAI DiceMetric
def _blobs(seed: int, shape: tuple[int, int, int] = (24, 24, 24)) -> np.ndarray:
    """Smooth random 3-class label map (0 background, 1 and 2)."""
    noise = ndimage.gaussian_filter(np.random.default_rng(seed).normal(size=shape), 2.0)
    labels = np.zeros(shape, np.uint8)
    labels[noise > 0.05] = 1
    labels[noise < -0.08] = 2
    return labels


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_dice_matches_monai_dice_metric(seed: int) -> None:
    from monai.metrics import DiceMetric

    gt, pred = _blobs(seed), _blobs(seed + 100)
    if seed == 2:
        gt[gt == 2] = 0                 # class 2 absent from GT: a false positive
    rows = case_metrics(pred, gt, ANISO, {1: "one", 2: "two"})
    metric = DiceMetric(include_background=False, reduction="none", ignore_empty=False)

    def one_hot(x: np.ndarray) -> torch.Tensor:
        hot = torch.nn.functional.one_hot(torch.from_numpy(x).long(), 3)
        return hot.permute(3, 0, 1, 2)[None].float()

    metric(one_hot(pred), one_hot(gt))
    expected = metric.aggregate().flatten().tolist()
    assert [r["dice"] for r in rows] == pytest.approx(expected, abs=1e-6)
    for r in rows:
        denom = r["gt_voxels"] + r["pred_voxels"]
        assert r["dice"] == pytest.approx(2 * r["intersection_voxels"] / denom, abs=1e-6)
    assert 0.0 < rows[0]["dice"] < 1.0


# ------------------------------------------------------------------ per-class rows, slices
def test_case_metrics_per_class_tolerance_and_cldice_selection() -> None:
    gt = np.zeros((16, 16, 16), np.uint8)
    gt[4:12, 4:12, 2:6] = 1
    gt[4:12, 4:12, 9:13] = 2
    pred = np.roll(gt, 1, axis=2)
    rows = case_metrics(pred, gt, (0.5, 0.5, 2.0), {1: "a", 2: "b"},
                        nsd_tolerance_mm={1: 2.0, 2: 1.0}, cldice_classes={2})
    assert rows[0]["nsd"] == pytest.approx(1.0) and rows[1]["nsd"] < 0.9
    assert rows[0]["cldice"] is None and 0.0 < rows[1]["cldice"] <= 1.0
    assert rows[0]["dice"] == pytest.approx(0.75)   # 3 of 4 slabs overlap


def test_slice_metrics_rows_only_where_present_with_in_plane_spacing() -> None:
    gt = np.zeros((12, 16, 10), np.uint8)
    pred = np.zeros_like(gt)
    gt[2:6, 2:6, 3:6] = 1               # slices 3, 4, 5
    pred[2:6, 2:6, 4:7] = 1             # slices 4, 5, 6
    spacing = (0.5, 1.0, 3.0)
    rows = slice_metrics(pred, gt, spacing, {1: "a"}, axis=2)
    assert [r["slice"] for r in rows] == [3, 4, 5, 6]
    assert [r["outcome"] for r in rows] == ["missed", "detected", "detected", "false_positive"]
    assert rows[0]["hd95_mm"] == pytest.approx(math.hypot(12 * 0.5, 16 * 1.0))
    assert rows[1]["dice"] == 1.0 and rows[1]["hd95_mm"] == 0.0
    rows0 = slice_metrics(pred, gt, spacing, {1: "a"}, axis=0)
    assert [r["slice"] for r in rows0] == [2, 3, 4, 5]
    assert rows0[0]["hd95_mm"] == pytest.approx(3.0)  # slabs 1 voxel of 3 mm apart in-plane
    assert rows0[0]["dice"] == pytest.approx(2 * 8 / 24)     # 4×3 vs 4×3, overlap 4×2


# ------------------------------------------------------------------ accumulator
def _cube_case(gt_on: bool, pred_on: bool, side: int = 4) -> tuple[np.ndarray, np.ndarray]:
    gt = np.zeros((16, 16, 16), np.uint8)
    pred = np.zeros_like(gt)
    gt[2:2 + side, 2:2 + side, 2:2 + side] = 1 if gt_on else 0
    pred[2:2 + side, 2:2 + side, 2:2 + side] = 1 if pred_on else 0
    return pred, gt


def test_metric_table_mean_includes_misses_and_pools_global_dice() -> None:
    spacing, classes = (1.0, 1.0, 1.0), {1: "vessel"}
    table = MetricTable()
    table.add_case("perfect", case_metrics(*_cube_case(True, True, side=10), spacing, classes))
    table.add_case("miss", case_metrics(*_cube_case(True, False, side=2), spacing, classes))
    table.add_case("clean", case_metrics(*_cube_case(False, False), spacing, classes))
    frame = table.volume_frame()
    assert len(frame) == 3 and list(frame.columns[:3]) == ["case_id", "class_id", "class"]
    s = table.global_summary()["vessel"]
    assert s["n_cases"] == 3
    assert s["dice"]["mean"] == pytest.approx(2 / 3)      # (1 + 0 + 1) / 3, the miss stays in
    assert s["dice"]["min"] == 0.0 and s["dice"]["median"] == 1.0
    assert s["hd95_mm"]["mean"] == pytest.approx(math.sqrt(3 * 16 ** 2) / 3)
    assert s["hd95_mm"]["max"] == pytest.approx(math.sqrt(3 * 16 ** 2))
    assert s["outcomes"] == {"true_negative": 1, "missed": 1, "false_positive": 0, "detected": 1}
    assert s["global_dice"] == pytest.approx(2 * 1000 / (2000 + 8))
    assert s["cldice"] is None


def test_metric_table_one_perfect_one_miss_mean_half() -> None:
    table = MetricTable()
    for case_id, on in (("a", True), ("b", False)):
        table.add_case(case_id, case_metrics(*_cube_case(True, on), (1.0, 1.0, 1.0), {1: "x"},
                                             cldice_classes={1}))
    s = table.global_summary()["x"]
    assert [s[m]["mean"] for m in ("dice", "iou", "nsd", "cldice")] == pytest.approx([0.5] * 4)
    assert s["dice"]["std"] == pytest.approx(0.5)
    assert s["global_dice"] == pytest.approx(2 * 64 / (128 + 64))
    with pytest.raises(ValueError):
        table.add_case("a", [])
    assert MetricTable().global_summary() == {}


def test_metric_table_slice_frame() -> None:
    pred, gt = _cube_case(True, True)
    table = MetricTable()
    table.add_slices("a", slice_metrics(pred, gt, (1.0, 1.0, 1.0), {1: "x"}))
    frame = table.slice_frame()
    assert frame["slice"].tolist() == [2, 3, 4, 5]
    assert (frame["case_id"] == "a").all() and (frame["dice"] == 1.0).all()
