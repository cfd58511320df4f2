"""Clinical biomarkers on prediction and ground truth with the real voxel spacing.

`BIOMARKERS` maps a name to a `BiomarkerSpec`: a function
`fn(mask, spacing, *, qmap=None, **params) -> dict[str, float]` (mask 3D bool, spacing in mm
along array axes 0, 1, 2), the value names it returns, and its parameters with defaults.
Adding a biomarker is one function plus one entry.

| name | values |
| --- | --- |
| volume_ml | volume_ml |
| lesion_count | count, total_volume_ml, mean_volume_ml (params: min_size_mm3 = 10) |
| surface_area_mm2 | surface_area_mm2 (params: smoothing_iterations = 20) |
| thickness | mean_thickness_mm, max_thickness_mm (shape.thickness) |
| vessel | mean_radius_mm, min_radius_mm, max_radius_mm, centreline_length_mm |
| qmap_mean / qmap_median | qmap_mean / qmap_median (needs `qmap`) |

**Empty mask** (one rule for all): extensive values, which add up over parts (volume, count,
total lesion volume, surface area, centreline length), are 0.0; intensive ones (means,
extrema, radii, thickness, quantitative-map statistics) are NaN, undefined for an empty
structure. Lists (per-lesion volumes) are not biomarker values: `lesion_volumes_ml` gives them.

`compute_biomarkers` gives one row per (biomarker, value) and case; `summarize_biomarkers`
(agreement.py) aggregates rows over cases into Bland-Altman agreement statistics.
"""
from __future__ import annotations

import logging
import math
import numbers
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from samtune.eval.biomarkers.qmap import qmap_mean, qmap_median
from samtune.eval.biomarkers.shape import check_inputs, thickness, vessel
from samtune.eval.biomarkers.size import lesion_count, surface_area_mm2, volume_ml

log = logging.getLogger(__name__)

ROW_KEYS = ("biomarker", "value_name", "pred", "gt", "abs_error", "rel_error")


@dataclass(frozen=True)
class BiomarkerSpec:
    """A biomarker function, the value names it returns (in order), its parameters' defaults."""

    fn: Callable[..., dict[str, float]]
    values: tuple[str, ...]
    params: Mapping[str, float | int] = field(default_factory=dict)
    needs_qmap: bool = False


BIOMARKERS: dict[str, BiomarkerSpec] = {
    "volume_ml": BiomarkerSpec(volume_ml, ("volume_ml",)),
    "lesion_count": BiomarkerSpec(lesion_count, ("count", "total_volume_ml", "mean_volume_ml"),
                                  {"min_size_mm3": 10.0}),
    "surface_area_mm2": BiomarkerSpec(surface_area_mm2, ("surface_area_mm2",),
                                      {"smoothing_iterations": 20}),
    "thickness": BiomarkerSpec(thickness, ("mean_thickness_mm", "max_thickness_mm")),
    "vessel": BiomarkerSpec(vessel, ("mean_radius_mm", "min_radius_mm", "max_radius_mm",
                                     "centreline_length_mm")),
    "qmap_mean": BiomarkerSpec(qmap_mean, ("qmap_mean",), needs_qmap=True),
    "qmap_median": BiomarkerSpec(qmap_median, ("qmap_median",), needs_qmap=True),
}


def validate_selection(selection: Mapping[str, bool | Mapping[str, Any]]
                       ) -> dict[str, dict[str, Any]]:
    """{name: True | False | {param: value}} → {name: full params} for the selected ones.

    False leaves a biomarker out; True takes its defaults; a dict overrides some of them.
    ValueError for an unknown name (the message lists the valid names, sorted), an unknown
    parameter, or a parameter value that is not a finite number ≥ 0 (an integer where the
    default is one)."""
    unknown = sorted(set(selection) - set(BIOMARKERS))
    if unknown:
        raise ValueError(f"unknown biomarker(s) {', '.join(map(repr, unknown))}; valid names: "
                         f"{', '.join(sorted(BIOMARKERS))}")
    chosen: dict[str, dict[str, Any]] = {}
    for name, choice in selection.items():
        spec = BIOMARKERS[name]
        if choice is False:
            continue
        if choice is not True and not isinstance(choice, Mapping):
            raise ValueError(f"biomarker {name!r}: expected true, false or a mapping of "
                             f"parameters, got {choice!r}")
        given = {} if choice is True else dict(choice)
        bad = sorted(set(given) - set(spec.params))
        if bad:
            raise ValueError(f"biomarker {name!r}: unknown parameter(s) {', '.join(bad)}; valid: "
                             f"{', '.join(sorted(spec.params)) or '(none)'}")
        for key, value in given.items():
            integral = isinstance(spec.params[key], int)
            if (isinstance(value, bool) or not isinstance(value, numbers.Real)
                    or not math.isfinite(value) or value < 0
                    or (integral and value != int(value))):
                raise ValueError(f"biomarker {name!r}: {key} must be a finite "
                                 f"{'integer' if integral else 'number'} ≥ 0, got {value!r}")
        chosen[name] = {**spec.params, **given}
    return chosen


def compute_biomarkers(pred: np.ndarray, gt: np.ndarray, spacing: tuple[float, float, float],
                       selection: Mapping[str, bool | Mapping[str, Any]], *,
                       qmap: np.ndarray | None = None) -> list[dict[str, Any]]:
    """Selected biomarkers of one case on prediction and ground truth (3D masks of one shape).

    One row per (biomarker, value name), in registry value order: `{biomarker, value_name,
    pred, gt, abs_error = |pred - gt|, rel_error = (pred - gt) / gt}` (floats; NaN where a value
    is undefined, see the module docstring). `rel_error` is None when gt is 0 or NaN.
    `qmap` (same shape) is used by the qmap_* biomarkers, which raise ValueError without it."""
    chosen = validate_selection(selection)
    p, sp = check_inputs(pred, spacing)
    g, _ = check_inputs(gt, spacing)
    if p.shape != g.shape:
        raise ValueError(f"pred shape {p.shape} differs from gt shape {g.shape}")
    need_qmap = sorted(name for name in chosen if BIOMARKERS[name].needs_qmap)
    if need_qmap and qmap is None:
        raise ValueError(f"biomarker(s) {', '.join(need_qmap)} need a quantitative map "
                         "(qmap=...) co-registered with the masks; none was given")
    sp_mm = (float(sp[0]), float(sp[1]), float(sp[2]))
    rows: list[dict[str, Any]] = []
    for name, params in chosen.items():
        spec = BIOMARKERS[name]
        on_pred = spec.fn(p, sp_mm, qmap=qmap, **params)
        on_gt = spec.fn(g, sp_mm, qmap=qmap, **params)
        for value_name in spec.values:
            a, b = float(on_pred[value_name]), float(on_gt[value_name])
            rel = None if b == 0 or math.isnan(b) else (a - b) / b
            rows.append(dict(zip(ROW_KEYS, (name, value_name, a, b, abs(a - b), rel))))
        log.debug("biomarker %s: pred %s gt %s", name, on_pred, on_gt)
    return rows
