"""Quantitative-map biomarkers per named map: exact on constant and ramp maps, and end to end on
phantoms (ingest with data.maps → validation → oracle evaluation → biomarkers.csv)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from samtune.config import ConvertConfig, DataConfig, EvalConfig, ModelConfig, PhantomConfig
from samtune.config import ValidateConfig
from samtune.data.io import load_volume, write_volume
from samtune.data.layouts import ingest
from samtune.data.validate import apply_quarantine, collect_facts, run_expectations
from samtune.eval.biomarkers.maps import compute_map_biomarkers, needs_map
from samtune.eval.volume_eval import evaluate_volumes
from samtune.inference.model_source import load_model

SP = (0.5, 0.5, 2.0)


def _rows(rows: list[dict]) -> dict[str, tuple[float, float]]:
    return {r["value_name"]: (r["pred"], r["gt"]) for r in rows}


def test_each_map_gets_its_own_exact_values() -> None:
    gt = np.zeros((10, 8, 6), bool)
    gt[2:7, 1:5, 1:4] = True
    pred = np.zeros_like(gt)
    pred[2:5, 1:5, 1:4] = True
    ramp = np.broadcast_to(np.arange(10, dtype=np.float32)[:, None, None], gt.shape)
    maps = {"t2": np.full(gt.shape, 42.5, np.float32), "t1rho": ramp}
    rows = compute_map_biomarkers(pred, gt, SP, {"volume_ml": True, "qmap_mean": True,
                                                 "qmap_median": True}, maps)
    got = _rows(rows)
    assert [r["value_name"] for r in rows] == ["volume_ml", "qmap_mean_t1rho",
                                               "qmap_median_t1rho", "qmap_mean_t2",
                                               "qmap_median_t2"]
    assert got["qmap_mean_t2"] == (42.5, 42.5) and got["qmap_median_t2"] == (42.5, 42.5)
    assert got["qmap_mean_t1rho"] == (3.0, 4.0)  # i = 2..4 and 2..6
    assert got["qmap_median_t1rho"] == (3.0, 4.0)
    assert got["volume_ml"] == pytest.approx((36 * 0.5 / 1000, 60 * 0.5 / 1000))  # mL
    assert {r["biomarker"] for r in rows if "t2" in r["value_name"]} == {"qmap_mean",
                                                                        "qmap_median"}
    legacy = _rows(compute_map_biomarkers(pred, gt, SP, {"qmap_mean": True},
                                          {"qmap": maps["t2"]}))
    assert legacy == {"qmap_mean": (42.5, 42.5)}  # the legacy meta["qmap"] keeps its name
    with pytest.raises(ValueError, match="case_7: biomarker.s. qmap_mean need .*data.maps"):
        compute_map_biomarkers(pred, gt, SP, {"qmap_mean": True}, {}, where="case_7")
    assert _rows(compute_map_biomarkers(pred, gt, SP, {"volume_ml": True}, {})).keys() == {
        "volume_ml"}
    assert needs_map({"qmap_median": True}) and not needs_map({"volume_ml": True,
                                                               "qmap_mean": False})


def test_maps_reach_the_biomarkers_on_phantoms(tmp_path: Path) -> None:
    """Phantoms + T2 (constant) and T1rho (ramp along i) maps through ingest, validation and the
    oracle's evaluation: the biomarkers are the hand-computed values, one column per map."""
    root = tmp_path / "phantoms"
    cfg = DataConfig(layout="phantoms", root=root, phantoms=PhantomConfig(
        n_normal=1, n_diseased=1, n_test=0, shape=(32, 32, 16), lesions=False),
        maps={"t2": "maps/<case>_t2.nii.gz", "t1rho": "maps/<case>_t1rho.nii.gz"})
    ingest(cfg.model_copy(update={"maps": {}}))  # writes the phantoms
    ramps = {}
    for case in ingest(cfg.model_copy(update={"maps": {}})).cases:
        vol = load_volume(case)
        ramp = np.broadcast_to(np.arange(vol.shape[0], dtype=np.float32)[:, None, None],
                               vol.shape)
        ramps[case.case_id] = (ramp, vol.label > 0)
        write_volume(root / "maps" / f"{case.case_id}_t2.nii.gz",
                     np.full(vol.shape, 61.25, np.float32), vol.affine)
        shape = vol.shape if case.case_id != "Diseased_1" else (*vol.shape[:2], vol.shape[2] + 1)
        write_volume(root / "maps" / f"{case.case_id}_t1rho.nii.gz",
                     np.ascontiguousarray(np.broadcast_to(ramp[:, :1, :1], shape)), vol.affine)
    coll = ingest(cfg)
    vcfg = ValidateConfig(min_valid_fraction=0.5)
    result = run_expectations(collect_facts(coll, vcfg), vcfg)
    assert result.passed == ["Normal_1"]
    assert str(root / "maps/Diseased_1_t1rho.nii.gz") in result.failed["Diseased_1"][0]
    cases = apply_quarantine(coll, result, vcfg).cases

    loaded = load_model(ModelConfig(name="oracle"), device="cpu")
    ev = EvalConfig(slice_metrics=False, qc_cases=0,
                    biomarkers={"qmap_mean": True, "qmap_median": True})
    out = evaluate_volumes(loaded, cases, ConvertConfig(img_size=32, intensity="percentile"), ev,
                           tmp_path / "run", {1: "artery"})
    bio = out.biomarkers.set_index("value_name")
    ramp, mask = ramps["Normal_1"]
    assert set(bio.index) == {"qmap_mean_t2", "qmap_median_t2", "qmap_mean_t1rho",
                              "qmap_median_t1rho"}
    assert bio.loc["qmap_mean_t2", "gt"] == 61.25 and bio.loc["qmap_median_t2", "gt"] == 61.25
    assert bio.loc["qmap_median_t1rho", "gt"] == float(np.median(ramp[mask]))
    assert bio.loc["qmap_mean_t1rho", "gt"] == pytest.approx(
        float(ramp[mask].astype(np.float64).mean()), rel=1e-12)
    assert (bio["pred"] == bio["gt"]).all()  # the oracle: prediction = ground truth
    written = pd.read_csv(tmp_path / "run" / "biomarkers.csv")
    assert "qmap_mean_t1rho" in set(written["value_name"])
