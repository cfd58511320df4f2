"""Validate cases before conversion: one row of facts per case, Great Expectations over the table.

`collect_facts` reads each case (one volume in memory per worker) and keeps only scalar facts;
`run_expectations` checks the table with an ephemeral Great Expectations context and turns every
failed expectation into a specific reason per case; `apply_quarantine` keeps the passing cases.
An unreadable case fails on `read_error` alone; an unlabelled case is checked on its image only.
"""
from __future__ import annotations

import logging
import math
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from itertools import repeat
from typing import Any, Callable

import nibabel.orientations as nio
import numpy as np
import pandas as pd

from samtune.config import ValidateConfig
from samtune.data.cases import Case, CaseCollection, DataError, Volume
from samtune.data.io import load_volume
from samtune.data.maps import map_facts

log = logging.getLogger(__name__)

_SAMPLE_VOXELS = 2_000_000  # percentiles come from a strided sample of about this many voxels
_BINCOUNT_RANGE = 1 << 16  # label value ranges up to this wide are counted with bincount


def _label_facts(label: np.ndarray) -> dict[str, Any]:
    """Integer-ness, values present, voxel count per value and foreground size of an I×J×K map."""
    is_int = label.dtype.kind in "iub" or bool(
        np.isfinite(label).all() and (label % 1 == 0).all())
    if not is_int:  # keep a few values: a float label may hold millions of distinct ones
        values = np.unique(label[np.isfinite(label)])
        shown = np.concatenate([values[values % 1 != 0][:5], values[:5]])
        return {"label_is_integer": False, "label_values": sorted({float(v) for v in shown}),
                "label_voxel_counts": None, "foreground_voxels": int(np.count_nonzero(label))}
    lo, hi = (int(label.min()), int(label.max())) if label.size else (0, 0)
    if hi - lo < _BINCOUNT_RANGE:  # chunked bincount: exact, bounded memory, no sort
        counts = np.zeros(hi - lo + 1, dtype=np.int64)
        step = max(1, 4_000_000 // max(1, label.shape[0] * label.shape[1]))
        for k in range(0, label.shape[2], step):
            chunk = np.asarray(label[:, :, k:k + step], dtype=np.int64) - lo
            counts += np.bincount(chunk.ravel(), minlength=counts.size)
        present = {lo + int(v): int(counts[v]) for v in np.flatnonzero(counts)}
    else:
        vals, cnts = np.unique(label, return_counts=True)
        present = {int(v): int(c) for v, c in zip(vals, cnts)}
    return {"label_is_integer": True, "label_values": sorted(present),
            "label_voxel_counts": {str(v): c for v, c in sorted(present.items())},
            "foreground_voxels": sum(c for v, c in present.items() if v != 0)}


def case_facts(volume: Volume) -> dict[str, Any]:
    """Scalar facts of one loaded case (image C×I×J×K, label I×J×K), no arrays.

    Spacing is in mm along i, j, k; `orientation` is nibabel's axis code of the RAS+ affine (e.g.
    "RAS", "LPS"); p0_5/p50/p99_5 are percentiles of the finite voxels of channel 0 (a strided
    sample). Label facts are None without a label, except `label_affine_max_diff_mm` = 0.
    """
    case, image = volume.case, volume.image
    shape = volume.shape
    img0 = image[0]
    step = max(1, math.ceil((img0.size / _SAMPLE_VOXELS) ** (1 / 3)))
    sample = np.asarray(img0[::step, ::step, ::step], dtype=np.float64).ravel()
    sample = sample[np.isfinite(sample)]
    pcts = np.percentile(sample, [0.5, 50, 99.5]) if sample.size else [None] * 3
    is_float = image.dtype.kind in "fc"
    facts: dict[str, Any] = {
        "case_id": case.case_id, "patient_id": case.patient_id, "group": case.group,
        "modality": case.modality, "read_error": None,
        "shape": "x".join(str(s) for s in shape), "shape_i": shape[0], "shape_j": shape[1],
        "shape_k": shape[2], "n_channels": int(image.shape[0]),
        **{f"spacing_{ax}": s for ax, s in zip("ijk", volume.spacing)},
        "orientation": "".join(nio.aff2axcodes(volume.affine)), "dtype": str(image.dtype),
        **{k: None if v is None else float(v) for k, v in zip(("p0_5", "p50", "p99_5"), pcts)},
        "nan_count": int(np.count_nonzero(np.isnan(image))) if is_float else 0,
        "inf_count": int(np.count_nonzero(np.isinf(image))) if is_float else 0,
        "has_label": volume.label is not None, "label_dtype": None, "label_shape": None,
        "label_is_integer": None, "label_values": None, "label_values_str": None,
        "label_voxel_counts": None, "foreground_voxels": None, "label_shape_matches": None,
        "label_affine_max_diff_mm": 0.0,
    }
    if volume.label is not None:
        label = volume.label
        facts.update(_label_facts(label))
        facts["label_values_str"] = ",".join(f"{v:g}" for v in facts["label_values"])
        facts["label_dtype"] = str(label.dtype)
        facts["label_shape"] = "x".join(str(s) for s in label.shape)
        facts["label_shape_matches"] = tuple(label.shape) == tuple(shape)
        if volume.label_affine is not None:
            diff = np.abs(np.asarray(volume.label_affine) - np.asarray(volume.affine))
            facts["label_affine_max_diff_mm"] = float(diff.max())
    return facts


def _case_row(case: Case, allowed: frozenset[int], tolerance_mm: float) -> dict[str, Any]:
    """Facts of one case, or a row with `read_error` when it cannot be read (runs in workers)."""
    try:
        row = case_facts(volume := load_volume(case))
    except DataError as exc:
        log.warning("case %s: cannot be read: %s", case.case_id, exc)
        return {"case_id": case.case_id, "patient_id": case.patient_id, "group": case.group,
                "modality": case.modality, "read_error": str(exc),
                "has_label": case.label_path is not None}
    values = row["label_values"] or []
    row["undeclared_label_values"] = [v for v in values if v not in allowed]
    row["n_undeclared_label_values"] = len(row["undeclared_label_values"])
    row.update(map_facts(volume, tolerance_mm))  # data.maps against the image
    return row


def collect_facts(collection: CaseCollection, cfg: ValidateConfig,
                  workers: int = 1) -> pd.DataFrame:
    """One row of facts per case (see `case_facts`), in collection order.

    Adds `undeclared_label_values` (outside `cfg.label_values` when set, else 0 and the label
    keys), their number `n_undeclared_label_values`, and `map_problems` (samtune.data.maps) and
    theirs. Unreadable cases get `read_error`, null facts. `workers` > 1: a process pool.
    """
    declared = {0, *collection.labels} if cfg.label_values is None else cfg.label_values
    allowed, tol = frozenset(int(v) for v in declared), cfg.affine_tolerance_mm
    cases = list(collection.cases)
    if workers > 1 and len(cases) > 1:
        ctx = multiprocessing.get_context("spawn")  # no fork of a parent holding threads
        with ProcessPoolExecutor(min(workers, len(cases)), mp_context=ctx) as pool:
            rows = list(pool.map(_case_row, cases, repeat(allowed), repeat(tol)))
    else:
        rows = [_case_row(c, allowed, tol) for c in cases]
    facts = pd.DataFrame(rows)
    log.info("collected facts for %d cases (%d unreadable)", len(facts),
             int(facts["read_error"].notna().sum()) if len(facts) else 0)
    return facts


@dataclass
class ValidationResult:
    """Outcome of `run_expectations`: passing ids, reasons per failing id, facts, GE statistics."""

    passed: list[str]
    failed: dict[str, list[str]]
    facts: pd.DataFrame
    statistics: dict[str, Any] = field(default_factory=dict)

    @property
    def valid_fraction(self) -> float:
        """Passed / all cases; 0.0 for an empty table."""
        total = len(self.passed) + len(self.failed)
        return len(self.passed) / total if total else 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form (NaN → None, numpy scalars → Python)."""
        return _plain({"passed": self.passed, "failed": self.failed,
                       "valid_fraction": self.valid_fraction, "statistics": self.statistics,
                       "facts": self.facts.astype(object).to_dict(orient="records")})


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_plain(v) for v in value]
    value = value.item() if isinstance(value, np.generic) else value
    nan = isinstance(value, float) and not math.isfinite(value)
    return None if nan or value is pd.NA or value is pd.NaT else value


def _checks(cfg: ValidateConfig, gxe: Any, col: Any) -> list[tuple[Any, Callable[..., str]]]:
    """The expectation suite, each expectation paired with reason(facts_row, cfg) -> str."""
    ok = col("read_error").is_null()
    labelled = ok & (col("has_label") == True)  # noqa: E712  (builds a GE condition)
    lo, hi = cfg.spacing_range_mm
    hu_lo, hu_hi = cfg.hu_range

    def spacing(ax: str) -> tuple[Any, Callable[..., str]]:
        return (gxe.ExpectColumnValuesToBeBetween(column=f"spacing_{ax}", min_value=lo,
                                                  max_value=hi, row_condition=ok),
                lambda r, c: f"spacing_{ax} {r[f'spacing_{ax}']:g} mm outside [{lo:g}, {hi:g}]")

    def hu(name: str, label: str) -> tuple[Any, Callable[..., str]]:
        return (gxe.ExpectColumnValuesToBeBetween(column=name, min_value=hu_lo, max_value=hu_hi,
                                                  row_condition=ok & (col("modality") == "CT")),
                lambda r, c: f"CT intensity {label} {r[name]:g} outside HU range "
                             f"[{hu_lo:g}, {hu_hi:g}]")

    def fg_reason(r: pd.Series, c: ValidateConfig) -> str:
        n = int(r["foreground_voxels"])
        what = "label is empty (0 foreground voxels)" if n == 0 else f"{n} foreground voxels"
        return f"{what}, below validate.min_label_voxels={c.min_label_voxels}"

    return [
        (gxe.ExpectColumnValuesToBeNull(column="read_error"),
         lambda r, c: f"unreadable: {r['read_error']}"),
        (gxe.ExpectColumnValuesToBeBetween(column="nan_count", max_value=0, row_condition=ok),
         lambda r, c: f"image has {int(r['nan_count'])} NaN voxels"),
        (gxe.ExpectColumnValuesToBeBetween(column="inf_count", max_value=0, row_condition=ok),
         lambda r, c: f"image has {int(r['inf_count'])} infinite voxels"),
        spacing("i"), spacing("j"), spacing("k"),
        hu("p0_5", "p0.5"), hu("p99_5", "p99.5"),
        (gxe.ExpectColumnValuesToBeInSet(column="label_is_integer", value_set=[True],
                                         row_condition=labelled),
         lambda r, c: "label has non-integer values (e.g. "
                      f"{', '.join(f'{v:g}' for v in r['label_values'] if v % 1) or 'NaN/Inf'})"),
        (gxe.ExpectColumnValuesToBeBetween(
            column="n_undeclared_label_values", max_value=0,
            row_condition=labelled & (col("label_is_integer") == True)),  # noqa: E712
         lambda r, c: f"undeclared label values {r['undeclared_label_values']} (not in "
                      "validate.label_values or the dataset's labels)"),
        (gxe.ExpectColumnValuesToBeBetween(column="foreground_voxels",
                                           min_value=cfg.min_label_voxels,
                                           row_condition=labelled), fg_reason),
        (gxe.ExpectColumnValuesToBeInSet(column="label_shape_matches", value_set=[True],
                                         row_condition=labelled),
         lambda r, c: f"label shape {r['label_shape']} differs from image shape {r['shape']}"),
        (gxe.ExpectColumnValuesToBeBetween(column="label_affine_max_diff_mm",
                                           max_value=cfg.affine_tolerance_mm,
                                           row_condition=labelled),
         lambda r, c: f"label affine differs from image affine by {r['label_affine_max_diff_mm']:g}"
                      f" mm (tolerance {c.affine_tolerance_mm:g} mm)"),
        (gxe.ExpectColumnValuesToBeBetween(column="n_map_problems", max_value=0, row_condition=ok),
         lambda r, c: "; ".join(r["map_problems"])),
    ]


_GE_OBJECT = ["case_id", "read_error", "modality", "label_is_integer", "label_shape_matches"]
_GE_NUMERIC = ["nan_count", "inf_count", "spacing_i", "spacing_j", "spacing_k", "p0_5", "p99_5",
               "n_undeclared_label_values", "foreground_voxels", "label_affine_max_diff_mm",
               "n_map_problems"]


def run_expectations(facts: pd.DataFrame, cfg: ValidateConfig) -> ValidationResult:
    """Check the facts table (one row per case) with Great Expectations; reasons per case id."""
    import great_expectations as gx  # slow import (~3 s): only when validating
    import great_expectations.expectations as gxe
    from great_expectations.data_context.types.base import ProgressBarsConfig
    from great_expectations.expectations.row_conditions import Column

    for name in ["great_expectations", *logging.root.manager.loggerDict]:  # some set INFO
        if name.startswith("great_expectations"):
            logging.getLogger(name).setLevel(logging.WARNING)

    facts = facts.reset_index(drop=True)
    ids = [str(c) for c in facts.get("case_id", pd.Series(dtype=object))]
    if not ids:
        return ValidationResult([], {}, facts, {"evaluated_expectations": 0})
    table = pd.DataFrame({n: facts[n] if n in facts else None for n in _GE_OBJECT}, dtype=object)
    for name in _GE_NUMERIC:
        table[name] = pd.to_numeric(facts.get(name), errors="coerce").astype("float64")
    table["has_label"] = facts["has_label"].fillna(False).astype(bool)

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    batch_def = (context.data_sources.add_pandas("samtune_facts")
                 .add_dataframe_asset("cases").add_batch_definition_whole_dataframe("all"))
    checks = _checks(cfg, gxe, Column)
    suite = gx.ExpectationSuite(name="samtune_case_validation")
    for i, (expectation, _) in enumerate(checks):
        expectation.meta = {"check": i}
        suite.add_expectation(expectation)
    batch = batch_def.get_batch(batch_parameters={"dataframe": table})
    outcome = batch.validate(suite, result_format={
        "result_format": "COMPLETE", "unexpected_index_column_names": ["case_id"]})
    rows = {cid: facts.iloc[n] for n, cid in enumerate(ids)}
    failed: dict[str, list[str]] = {}
    summary = []
    for res in outcome.results:
        if res.exception_info.get("raised_exception"):
            raise RuntimeError(f"expectation {res.expectation_config.type} could not run: "
                               f"{res.exception_info.get('exception_message')}")
        index = res.expectation_config.meta["check"]
        bad = [str(u["case_id"]) for u in res.result.get("unexpected_index_list") or []]
        summary.append({"expectation": res.expectation_config.type,
                        "column": res.expectation_config.kwargs.get("column"),
                        "success": bool(res.success), "failed_cases": bad})
        for cid in bad:
            failed.setdefault(cid, []).append(checks[index][1](rows[cid], cfg))
    stats = {**dict(outcome.statistics), "expectations": summary}
    passed = [cid for cid in ids if cid not in failed]
    log.info("validation: %d of %d cases passed", len(passed), len(ids))
    return ValidationResult(passed, failed, facts, _plain(stats))


def apply_quarantine(collection: CaseCollection, result: ValidationResult,
                     cfg: ValidateConfig) -> CaseCollection:
    """The passing cases; raises DataError listing every failure below `min_valid_fraction`."""
    lines = [f"{cid}: {'; '.join(reasons)}" for cid, reasons in result.failed.items()]
    if result.valid_fraction < cfg.min_valid_fraction:
        raise DataError(None, (
            f"only {len(result.passed)} of {len(result.passed) + len(result.failed)} cases passed "
            f"validation ({result.valid_fraction:.0%}), below "
            f"validate.min_valid_fraction={cfg.min_valid_fraction:g}; "
            "failed cases:\n" + ("\n".join(f"  {ln}" for ln in lines) or "  (none: no cases)")))
    for line in lines:
        log.warning("quarantined %s", line)
    return collection.subset(set(result.passed))
