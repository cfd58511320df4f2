"""Evaluation report: every file written, tables round-trip, JSON without NaN, a self-contained
and escaped HTML page, and no half-written report after a failure."""
from __future__ import annotations

import base64
import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from samtune import atomic
from samtune.eval import report_html
from samtune.eval.report import QCCase, json_safe, montage_slice, pick_qc_cases, write_report

CASES = ["case_a", "case<b>&", "case_c"]
CLASSES = ["aorta", "coronary"]
DIAGONAL = math.sqrt(3 * 32.0 ** 2)  # hd95 of a missed structure: the image diagonal in mm
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _volume() -> pd.DataFrame:
    rows = []
    for i, case in enumerate(CASES):
        for cid, name in enumerate(CLASSES, start=1):
            missed = case == "case_c" and name == "coronary"
            dice = 0.0 if missed else 0.6 + 0.1 * i + 0.05 * cid
            rows.append({"case_id": case, "class_id": cid, "class": name, "dice": dice,
                         "iou": dice / (2 - dice), "hd95_mm": DIAGONAL if missed else 2.0 + i,
                         "nsd": 0.0 if missed else 0.9, "cldice": 0.0 if missed else 0.8,
                         "gt_voxels": 100 * cid, "pred_voxels": 0 if missed else 90 * cid,
                         "intersection_voxels": 0 if missed else 80 * cid,
                         "gt_empty": False, "pred_empty": missed,
                         "outcome": "missed" if missed else "detected"})
    # class_id first: write_report must move case_id and class to the front
    return pd.DataFrame(rows)[["class_id", *[k for k in rows[0] if k != "class_id"]]]


def _slices() -> pd.DataFrame:
    return pd.DataFrame([{"case_id": c, "slice": s, "class_id": 1, "class": "aorta",
                          "dice": 0.7, "outcome": "detected"} for c in CASES for s in (3, 4)])


def _summary() -> dict:
    stats = {"mean": 0.5, "std": float("nan"), "median": 0.6, "min": 0.0, "max": 0.9}
    return {name: {"class_id": cid, "n_cases": 3, "dice": stats, "iou": stats,
                   "hd95_mm": {**stats, "max": DIAGONAL}, "nsd": stats, "cldice": None,
                   "outcomes": {"true_negative": 0, "missed": int(name == "coronary"),
                                "false_positive": 0, "detected": 3 - int(name == "coronary")},
                   "global_dice": 0.71}
            for cid, name in enumerate(CLASSES, start=1)}


def _biomarkers() -> pd.DataFrame:
    rows = []
    for i, case in enumerate(CASES):
        for name in CLASSES:
            gt, pred = 10.0 + i, 10.5 + i + (0.2 if name == "aorta" else -0.3)
            if case == "case_c" and name == "coronary":
                pred = float("nan")
            rows.append({"case_id": case, "class": name, "biomarker": "volume_ml",
                         "value_name": "volume_ml", "pred": pred, "gt": gt,
                         "abs_error": abs(pred - gt), "rel_error": (pred - gt) / gt})
    return pd.DataFrame(rows)


def _qc_cases() -> list[QCCase]:
    out = []
    for i, case in enumerate(CASES):
        image = np.linspace(-100.0, 400.0, 24 * 20).reshape(24, 20)  # float: percentile-scaled
        gt = np.zeros((24, 20), np.int64)
        gt[4:12, 4:12], gt[14:20, 10:16] = 1, 2
        pred = np.roll(gt, i, axis=1)
        out.append(QCCase(case, 0.9 - 0.2 * i, image, gt, pred, f"axis 2, slice {i}"))
    return out


def _write(out_dir: Path, **overrides):
    kwargs = dict(volume=_volume(), slices=_slices(), global_summary=_summary(),
                  biomarkers=_biomarkers(), qc_cases=_qc_cases(), title="Eval <demo> & co",
                  context={"model": "sam_vit_tiny", "checkpoint": Path("/runs/best.pt"),
                           "split": "test", "prompt_mode": "box", "lr": float("nan")},
                  qc_per_side=2)
    kwargs.update(overrides)
    return write_report(out_dir, **kwargs)


def test_write_report_files_and_contents(tmp_path) -> None:
    paths = _write(tmp_path)
    expected = [paths.volume_csv, paths.slice_csv, paths.global_json, paths.biomarkers_csv,
                paths.biomarker_summary_csv, paths.html]
    assert all(p is not None and p.is_file() for p in expected)
    assert paths.html == tmp_path / "report.html" and paths.all()[-1] == paths.html
    assert set(paths.all()) == set(expected)
    assert not list(tmp_path.rglob("*.tmp"))

    vol = pd.read_csv(paths.volume_csv)
    assert list(vol.columns[:2]) == ["case_id", "class"] and len(vol) == 6
    assert set(_volume().columns) == set(vol.columns)
    assert vol.loc[vol["outcome"] == "missed", "hd95_mm"].tolist() == pytest.approx([DIAGONAL])
    assert list(pd.read_csv(paths.slice_csv).columns[:3]) == ["case_id", "slice", "class"]

    text = paths.global_json.read_text()
    assert "NaN" not in text and "Infinity" not in text
    data = json.loads(text)
    assert data["n_cases"] == 3 and data["context"]["n_cases"] == 3
    assert data["context"]["lr"] is None and data["context"]["checkpoint"] == "/runs/best.pt"
    assert data["classes"]["aorta"]["dice"]["std"] is None
    assert data["classes"]["coronary"]["outcomes"]["missed"] == 1
    bio = {(r["class"], r["value_name"]): r for r in data["biomarkers"]}
    assert bio[("aorta", "volume_ml")]["mean_error"] == pytest.approx(0.7)
    assert bio[("coronary", "volume_ml")]["n"] == 2  # the NaN prediction is left out
    assert len(pd.read_csv(paths.biomarkers_csv)) == 6
    assert len(pd.read_csv(paths.biomarker_summary_csv)) == 2


def test_report_html_is_self_contained_and_escaped(tmp_path) -> None:
    page = _write(tmp_path).html.read_text(encoding="utf-8")
    assert "http://" not in page and "https://" not in page
    assert not re.search(r"<(script|link)\b", page)
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    # 2 distributions + 3 QC montages (2 worst, 1 best of 3 cases) + 2 Bland–Altman plots
    assert len(images) >= 7
    assert all(base64.b64decode(b).startswith(PNG_SIGNATURE) for b in images)
    for case in ("case_a", "case_c", "case&lt;b&gt;&amp;"):
        assert case in page
    assert "case<b>" not in page and "<demo>" not in page
    assert "Eval &lt;demo&gt; &amp; co" in page
    assert page.count('<tr class="missed">') == 1
    assert "sam_vit_tiny" in page and "0.710" in page  # context value, pooled Dice


def test_no_biomarkers_no_slices(tmp_path) -> None:
    paths = _write(tmp_path, slices=None, biomarkers=None, qc_cases=[])
    assert paths.slice_csv is None and paths.biomarkers_csv is None
    assert not (tmp_path / "biomarkers.csv").exists()
    page = paths.html.read_text()
    assert "Biomarkers" not in page and page.count("data:image/png;base64,") == 2
    assert json.loads(paths.global_json.read_text())["biomarkers"] is None


def test_failure_midway_leaves_no_partial_report(tmp_path, monkeypatch) -> None:
    good = _write(tmp_path / "run")
    before = {p: p.read_bytes() for p in good.all()}
    calls = {"n": 0}
    real = report_html.qc_montage_png

    def flaky(case, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("disk on fire")
        return real(case, *args, **kwargs)

    monkeypatch.setattr(report_html, "qc_montage_png", flaky)
    with pytest.raises(RuntimeError, match="disk on fire"):
        _write(tmp_path / "run", title="second run")
    assert {p: p.read_bytes() for p in good.all()} == before  # previous report untouched
    calls["n"] = 0
    with pytest.raises(RuntimeError):
        _write(tmp_path / "fresh")
    assert not (tmp_path / "fresh" / "report.html").exists()
    assert not [p for p in tmp_path.rglob("*") if p.is_file() and p.suffix == ".tmp"]


def test_failed_rename_keeps_old_file(tmp_path, monkeypatch) -> None:
    good = _write(tmp_path, qc_cases=[], biomarkers=None)
    old = good.html.read_bytes()
    real = atomic.os.replace  # the one place samtune renames a finished file into place

    def refuse_html(src, dst):
        if Path(dst).name == "report.html":
            raise OSError("no space left")
        return real(src, dst)

    monkeypatch.setattr(atomic.os, "replace", refuse_html)
    with pytest.raises(OSError):
        _write(tmp_path, qc_cases=[], biomarkers=None, title="new")
    assert good.html.read_bytes() == old
    assert not list(tmp_path.rglob("*.tmp"))


def test_montage_slice_picks_largest_area() -> None:
    image = np.arange(6 * 7 * 5, dtype=float).reshape(6, 7, 5)
    gt, pred = np.zeros((6, 7, 5), np.uint8), np.zeros((6, 7, 5), np.uint8)
    gt[1:3, 1:3, 1] = 1
    gt[0:4, 0:4, 3] = 2  # largest GT area on axis-2 slice 3
    pred[:, :, 4] = 1
    img2, gt2, pred2, index = montage_slice(image, gt, pred)
    assert index == 3 and img2.shape == (6, 7)
    assert np.array_equal(img2, image[:, :, 3]) and gt2.sum() == 32 and pred2.sum() == 0
    assert montage_slice(image, gt, pred, axis=0)[3] == 1  # rows 1, 2 tie (6 each): lowest wins
    assert montage_slice(image, np.zeros_like(gt), pred)[3] == 4  # empty GT: prediction area
    empty = np.zeros_like(gt)
    assert montage_slice(image, empty, empty, axis=1)[3] == 3  # both empty: middle slice
    qc = QCCase.from_volumes("c1", 0.5, image, gt, pred)
    assert qc.slice_label == "axis 2, slice 3" and qc.gt.shape == (6, 7)
    with pytest.raises(ValueError):
        montage_slice(image, gt[:, :, :4], pred)
    with pytest.raises(ValueError):
        QCCase("bad", 0.1, np.zeros((4, 4)), np.zeros((4, 5)), np.zeros((4, 4)))


def test_pick_qc_cases_and_json_safe() -> None:
    worst, best = pick_qc_cases(_volume(), n=2)
    assert worst == ["case_c", "case_a"] and best == ["case<b>&"]
    assert pick_qc_cases(_volume(), n=1) == (["case_c"], ["case<b>&"])
    safe = json_safe({"a": np.float32("nan"), "b": [np.int64(3), float("inf")],
                      "c": np.array([1.5, np.nan]), "d": Path("x/y"), "e": np.bool_(True)})
    assert safe == {"a": None, "b": [3, None], "c": [1.5, None], "d": "x/y", "e": True}
