"""Biomarkers against analytic shapes on anisotropic grids, plus the registry, rows, summary and
Bland-Altman plot.

Tolerances: volume 2 %; surface area 3 % (smoothed marching cubes; the raw binary surface is
> 5 % high); largest inscribed radius 3 %; vessel mean radius and centreline length 2 %.
Tubes run from face to face of the array (the open-border convention: a structure touching a
face continues beyond it), so the expected centreline length is the length of the axis between
the first and last planes of voxel centres it crosses, (n - 1) · spacing / cos(tilt).
"""
from __future__ import annotations

import logging
import math

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from samtune.eval.biomarkers import (
    BIOMARKERS,
    ROW_KEYS,
    SUMMARY_COLUMNS,
    compute_biomarkers,
    lesion_volumes_ml,
    summarize_biomarkers,
    validate_selection,
)
from samtune.eval.biomarkers import shape as biomarkers_shape
from samtune.eval.bland_altman import bland_altman_plot

EXTENSIVE = {"volume_ml", "count", "total_volume_ml", "surface_area_mm2", "centreline_length_mm"}


def _centres(shape: tuple[int, int, int], spacing) -> np.ndarray:
    """N×3 voxel-centre coordinates in mm."""
    return np.indices(shape).reshape(3, -1).T * np.asarray(spacing, dtype=np.float64)


def _ball(shape, spacing, centre, radius: float) -> np.ndarray:
    return (np.linalg.norm(_centres(shape, spacing) - centre, axis=1) <= radius).reshape(shape)


def _cylinder(shape, spacing, point, direction, radius: float) -> np.ndarray:
    """Infinite cylinder around the line through `point` along `direction` (mm)."""
    d = np.asarray(direction, dtype=np.float64) / np.linalg.norm(direction)
    v = _centres(shape, spacing) - point
    return (np.linalg.norm(v - np.outer(v @ d, d), axis=1) <= radius).reshape(shape)


def _rel(value: float, expected: float) -> float:
    return abs(value / expected - 1.0)


# ------------------------------------------------------------------ analytic shapes
@pytest.mark.parametrize("spacing", [(0.4, 0.4, 1.0), (0.7, 0.5, 0.3)])
def test_sphere_volume_surface_and_thickness(spacing) -> None:
    r, sp = 10.0, np.array(spacing)
    shape = tuple(int(n) for n in np.ceil((2 * r + 3) / sp))
    mask = _ball(shape, sp, (np.array(shape) - 1) * sp / 2 + 0.13, r)
    volume = BIOMARKERS["volume_ml"].fn(mask, spacing)["volume_ml"]
    assert _rel(volume, 4 / 3 * math.pi * r**3 / 1000) < 0.02
    area = BIOMARKERS["surface_area_mm2"].fn(mask, spacing)["surface_area_mm2"]
    assert _rel(area, 4 * math.pi * r**2) < 0.03
    raw = BIOMARKERS["surface_area_mm2"].fn(mask, spacing, smoothing_iterations=0)
    assert raw["surface_area_mm2"] > 1.05 * 4 * math.pi * r**2  # why the smoothing is there
    thick = BIOMARKERS["thickness"].fn(mask, spacing)
    assert _rel(thick["max_thickness_mm"] / 2, r) < 0.03  # largest inscribed radius ≈ r
    assert _rel(thick["mean_thickness_mm"], 2 * r) < 0.03  # the medial set of a ball: its centre


@pytest.mark.parametrize("spacing, offset", [
    ((0.25, 0.25, 0.5), (0.0, 0.0)),  # centred: skimage 0.26 skeletonize empties this tube
    ((0.3, 0.25, 0.5), (0.07, -0.11)),
])
def test_vessel_straight_tube_face_to_face(spacing, offset) -> None:
    sp, r = np.array(spacing), 3.0
    shape = (30, 30, 81)  # 80 steps of 0.5 mm: 40 mm between the end planes of voxel centres
    centre = (np.array(shape) - 1) * sp / 2 + np.array([*offset, 0.0])
    mask = _cylinder(shape, sp, centre, (0, 0, 1), r)
    v = BIOMARKERS["vessel"].fn(mask, spacing)
    assert _rel(v["mean_radius_mm"], r) < 0.02
    assert _rel(v["min_radius_mm"], r) < 0.05 and _rel(v["max_radius_mm"], r) < 0.05
    assert _rel(v["centreline_length_mm"], 40.0) < 0.02


@pytest.mark.parametrize("spacing, tilt_deg, azimuth_deg", [
    ((0.3, 0.25, 0.4), 25.0, 30.0),
    ((0.25, 0.3, 0.3), 40.0, 200.0),
])
def test_vessel_oblique_tube_face_to_face(spacing, tilt_deg, azimuth_deg) -> None:
    """Tilted from axis 2, entering and leaving through the two faces normal to axis 2 only."""
    sp, r, tilt, az = np.array(spacing), 3.0, math.radians(tilt_deg), math.radians(azimuth_deg)
    d = np.array([math.sin(tilt) * math.cos(az), math.sin(tilt) * math.sin(az), math.cos(tilt)])
    nz = int(round(24.0 / sp[2])) + 1
    span = np.abs(d[:2] / d[2]) * (nz - 1) * sp[2] + 2 * r / math.cos(tilt) + 2.0
    shape = (*(int(n) for n in np.ceil(span / sp[:2]) + 2), nz)
    mask = _cylinder(shape, sp, (np.array(shape) - 1) * sp / 2, d, r)
    assert not (mask[0].any() or mask[-1].any() or mask[:, 0].any() or mask[:, -1].any())
    v = BIOMARKERS["vessel"].fn(mask, spacing)
    assert _rel(v["mean_radius_mm"], r) < 0.02
    assert _rel(v["centreline_length_mm"], (nz - 1) * sp[2] / math.cos(tilt)) < 0.02


def test_vessel_closed_ends_stop_about_a_radius_short() -> None:
    """The same straight tube with background beyond both ends: a medial axis ends inside."""
    sp, r = np.array((0.3, 0.25, 0.5)), 3.0
    shape = (30, 30, 81)
    mask = _cylinder(shape, sp, (np.array(shape) - 1) * sp / 2 + 0.05, (0, 0, 1), r)
    mask[:, :, [0, -1]] = False  # closed: the tube now spans 39 mm of voxel centres
    length = BIOMARKERS["vessel"].fn(mask, tuple(sp))["centreline_length_mm"]
    assert 39.0 - 3 * r < length < 39.0 - r


def test_skeleton_last_resort_is_the_deepest_voxel(monkeypatch, caplog) -> None:
    """If thinning empties a component even after peeling, the deepest voxel stands for it."""
    monkeypatch.setattr(biomarkers_shape, "skeletonize", lambda m: np.zeros(m.shape, bool))
    sp, r = (0.5, 0.5, 0.5), 5.0
    mask = _ball((25, 25, 25), sp, np.full(3, 6.05), r)
    with caplog.at_level(logging.WARNING, logger=biomarkers_shape.__name__):
        thick = biomarkers_shape.thickness(mask, sp)
        v = biomarkers_shape.vessel(mask, sp)
    assert "deepest voxel" in caplog.text
    assert _rel(thick["max_thickness_mm"], 2 * r) < 0.05
    assert _rel(v["mean_radius_mm"], r) < 0.03 and v["centreline_length_mm"] == 0.0


# ------------------------------------------------------------------ lesions, qmap, empty masks
def test_lesion_count_and_volumes_with_min_size() -> None:
    sp = (0.5, 0.5, 1.0)  # 0.25 mm³ per voxel
    mask = np.zeros((40, 40, 20), bool)
    mask[2:10, 2:10, 2:6] = True  # 256 voxels = 64 mm³
    mask[20:24, 20:24, 10:14] = True  # 64 voxels = 16 mm³
    mask[30:32, 2:4, 2:4] = True  # 8 voxels = 2 mm³: below the default 10 mm³
    out = BIOMARKERS["lesion_count"].fn(mask, sp)
    assert out == pytest.approx({"count": 2.0, "total_volume_ml": 0.080, "mean_volume_ml": 0.040})
    assert lesion_volumes_ml(mask, sp) == pytest.approx([0.064, 0.016])
    assert BIOMARKERS["lesion_count"].fn(mask, sp, min_size_mm3=1.0)["count"] == 3.0
    assert BIOMARKERS["lesion_count"].fn(mask, sp, min_size_mm3=20.0)["count"] == 1.0
    mask[24, 24, 14] = True  # one voxel touching the 16 mm³ cube at a corner: merged (26-conn.)
    assert BIOMARKERS["lesion_count"].fn(mask, sp, min_size_mm3=0.1)["count"] == 3.0
    assert lesion_volumes_ml(mask, sp, 0.1) == pytest.approx([0.064, 0.01625, 0.002])


def test_qmap_mean_and_median() -> None:
    mask = np.zeros((10, 10, 10), bool)
    mask[2:5, 3:6, 4:8] = True
    sp = (0.5, 0.5, 2.0)
    constant = np.full(mask.shape, 42.0)
    assert BIOMARKERS["qmap_mean"].fn(mask, sp, qmap=constant) == {"qmap_mean": 42.0}
    assert BIOMARKERS["qmap_median"].fn(mask, sp, qmap=constant) == {"qmap_median": 42.0}
    ramp = np.broadcast_to(np.arange(10.0)[:, None, None] ** 2, mask.shape).copy()  # 4, 9, 16
    ramp[2, 3, 4] = np.nan  # a failed fit: ignored
    assert BIOMARKERS["qmap_mean"].fn(mask, sp, qmap=ramp)["qmap_mean"] == pytest.approx(
        (4 * 11 + 9 * 12 + 16 * 12) / 35)
    assert BIOMARKERS["qmap_median"].fn(mask, sp, qmap=ramp)["qmap_median"] == 9.0
    with pytest.raises(ValueError, match="needs a quantitative map"):
        BIOMARKERS["qmap_mean"].fn(mask, sp)
    with pytest.raises(ValueError, match="qmap shape"):
        BIOMARKERS["qmap_median"].fn(mask, sp, qmap=constant[:, :, :5])
    with pytest.raises(ValueError, match="qmap_mean need a quantitative map"):
        compute_biomarkers(mask, mask, sp, {"volume_ml": True, "qmap_mean": True})
    rows = compute_biomarkers(mask, np.zeros_like(mask), sp, {"qmap_mean": True}, qmap=constant)
    assert rows[0]["pred"] == 42.0 and math.isnan(rows[0]["gt"]) and rows[0]["rel_error"] is None


def test_empty_mask_extensive_zero_intensive_nan() -> None:
    empty = np.zeros((8, 9, 10), bool)
    for name, spec in BIOMARKERS.items():
        out = spec.fn(empty, (0.5, 0.7, 1.2), qmap=np.ones(empty.shape))
        assert tuple(out) == spec.values, name
        for key, value in out.items():
            assert (value == 0.0) if key in EXTENSIVE else math.isnan(value), (name, key, value)
    assert lesion_volumes_ml(empty, (1, 1, 1)) == []


def test_bad_inputs_raise() -> None:
    with pytest.raises(ValueError, match="3D"):
        BIOMARKERS["volume_ml"].fn(np.zeros((4, 4), bool), (1, 1, 1))
    with pytest.raises(ValueError, match="spacing"):
        BIOMARKERS["volume_ml"].fn(np.zeros((4, 4, 4), bool), (1, 0, 1))
    with pytest.raises(ValueError, match="differs from gt shape"):
        compute_biomarkers(np.zeros((4, 4, 4)), np.zeros((4, 4, 5)), (1, 1, 1), {"volume_ml": True})


# ------------------------------------------------------------------ registry and rows
def test_unknown_biomarker_lists_valid_names() -> None:
    valid = ", ".join(sorted(BIOMARKERS))
    with pytest.raises(ValueError) as err:
        validate_selection({"volume_ml": True, "hausdorff": True})
    assert "'hausdorff'" in str(err.value) and valid in str(err.value)
    with pytest.raises(ValueError, match="valid names: " + valid):
        compute_biomarkers(np.ones((3, 3, 3)), np.ones((3, 3, 3)), (1, 1, 1), {"nope": True})


def test_validate_selection_params() -> None:
    chosen = validate_selection({"volume_ml": True, "vessel": False,
                                 "lesion_count": {"min_size_mm3": 5}})
    assert chosen == {"volume_ml": {}, "lesion_count": {"min_size_mm3": 5}}
    assert validate_selection({"surface_area_mm2": True}) == {
        "surface_area_mm2": {"smoothing_iterations": 20}}
    for bad in ({"lesion_count": {"min_size": 5}}, {"lesion_count": {"min_size_mm3": -1}},
                {"lesion_count": {"min_size_mm3": True}}, {"volume_ml": "yes"},
                {"surface_area_mm2": {"smoothing_iterations": 2.5}}):
        with pytest.raises(ValueError):
            validate_selection(bad)


def test_compute_biomarkers_rows_and_rel_error() -> None:
    sp = (1.0, 1.0, 2.0)  # 2 mm³ per voxel
    pred = np.zeros((20, 20, 20), bool)
    pred[0:10, 0:10, 0:10] = True  # 1000 voxels = 2.0 mL
    gt = np.zeros_like(pred)
    gt[0:10, 0:10, 0:8] = True  # 800 voxels = 1.6 mL
    rows = compute_biomarkers(pred, gt, sp, {"volume_ml": True, "vessel": False,
                                             "lesion_count": {"min_size_mm3": 5}})
    assert [tuple(r) for r in rows] == [ROW_KEYS] * 4
    assert [(r["biomarker"], r["value_name"]) for r in rows] == [
        ("volume_ml", "volume_ml"), ("lesion_count", "count"),
        ("lesion_count", "total_volume_ml"), ("lesion_count", "mean_volume_ml")]
    vol = rows[0]
    assert (vol["pred"], vol["gt"]) == pytest.approx((2.0, 1.6))
    assert vol["abs_error"] == pytest.approx(0.4) and vol["rel_error"] == pytest.approx(0.25)
    assert rows[1]["rel_error"] == 0.0  # one lesion each

    empty_gt = compute_biomarkers(pred, np.zeros_like(pred), sp, {"volume_ml": True,
                                                                  "lesion_count": True})
    by_value = {r["value_name"]: r for r in empty_gt}
    assert by_value["volume_ml"]["gt"] == 0.0 and by_value["volume_ml"]["rel_error"] is None
    assert by_value["count"]["rel_error"] is None and by_value["count"]["abs_error"] == 1.0
    assert math.isnan(by_value["mean_volume_ml"]["gt"])  # undefined without a lesion
    assert by_value["mean_volume_ml"]["rel_error"] is None
    assert math.isnan(by_value["mean_volume_ml"]["abs_error"])


def test_summarize_biomarkers_agreement() -> None:
    rows = [("c1", 1.0, 1.5), ("c2", 2.0, 2.0), ("c3", 3.0, 2.0), ("c4", math.nan, 1.0)]
    frame = pd.DataFrame([{"case_id": c, "class": "liver", "biomarker": "volume_ml",
                           "value_name": "volume_ml", "pred": p, "gt": g,
                           "abs_error": abs(p - g), "rel_error": (p - g) / g} for c, p, g in rows]
                         + [{"case_id": "c1", "class": "spleen", "biomarker": "volume_ml",
                             "value_name": "volume_ml", "pred": 0.2, "gt": 0.1,
                             "abs_error": 0.1, "rel_error": 1.0}])
    out = summarize_biomarkers(frame)
    assert list(out.columns) == list(SUMMARY_COLUMNS)
    liver = out[out["class"] == "liver"].iloc[0]
    # differences -0.5, 0, 1: bias 1/6, sample SD sqrt(7/12), |d| mean 0.5
    sd = math.sqrt(7 / 12)
    assert (liver["n"], liver["n_undefined"]) == (3, 1)
    assert liver["mean_abs_error"] == pytest.approx(0.5)
    assert liver["mean_error"] == pytest.approx(1 / 6) and liver["sd_diff"] == pytest.approx(sd)
    assert liver["loa_lower"] == pytest.approx(1 / 6 - 1.96 * sd)
    assert liver["loa_upper"] == pytest.approx(1 / 6 + 1.96 * sd)
    spleen = out[out["class"] == "spleen"].iloc[0]
    assert spleen["n"] == 1 and spleen["mean_error"] == pytest.approx(0.1)
    assert math.isnan(spleen["sd_diff"]) and math.isnan(spleen["loa_upper"])
    assert summarize_biomarkers(frame.iloc[:0]).empty
    with pytest.raises(ValueError, match="case_id"):
        summarize_biomarkers(frame.drop(columns="case_id"))


# ------------------------------------------------------------------ Bland-Altman
def test_bland_altman_plot_writes_png(tmp_path) -> None:
    import matplotlib.pyplot as plt  # only to check that no pyplot figure was opened

    before = plt.get_fignums()
    out = bland_altman_plot([1.0, 2.1, 2.9, math.nan], [1.1, 2.0, 3.2, 4.0], "liver volume",
                            tmp_path / "plots" / "ba.png", unit="mL")
    assert out == tmp_path / "plots" / "ba.png"
    with Image.open(out) as img:
        assert img.format == "PNG" and img.size == (600, 450)
        pixels = np.asarray(img.convert("RGB"))
    assert (pixels.reshape(-1, 3) != 255).any()  # something was drawn
    assert sorted(p.name for p in out.parent.iterdir()) == ["ba.png"]  # no temporary left
    assert plt.get_fignums() == before
    bland_altman_plot([math.nan], [1.0], "none", tmp_path / "empty.png")  # "no finite pairs"
    assert (tmp_path / "empty.png").stat().st_size > 0
    with pytest.raises(ValueError, match="differ in length"):
        bland_altman_plot([1.0, 2.0], [1.0], "bad", tmp_path / "bad.png")
