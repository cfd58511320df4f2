"""Agreement of a biomarker between prediction and ground truth over cases (Bland-Altman)."""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

SUMMARY_COLUMNS = ("class", "biomarker", "value_name", "n", "n_undefined", "mean_abs_error",
                   "mean_error", "sd_diff", "loa_lower", "loa_upper")


def agreement(pred: Any, gt: Any) -> dict[str, float]:
    """Bland-Altman statistics of paired values (difference = pred - gt), over the pairs where
    both are finite: n, n_undefined (the other pairs), mean_abs_error, mean_error (bias),
    sd_diff (sample SD, ddof=1), loa_lower / loa_upper = bias ∓ 1.96 SD. NaN where undefined
    (no pair; SD and limits need two)."""
    p, g = np.asarray(pred, dtype=np.float64), np.asarray(gt, dtype=np.float64)
    ok = np.isfinite(p) & np.isfinite(g)
    d = p[ok] - g[ok]
    bias = float(d.mean()) if d.size else math.nan
    sd = float(d.std(ddof=1)) if d.size > 1 else math.nan
    return {"n": int(d.size), "n_undefined": int((~ok).sum()),
            "mean_abs_error": float(np.abs(d).mean()) if d.size else math.nan,
            "mean_error": bias, "sd_diff": sd, "loa_lower": bias - 1.96 * sd,
            "loa_upper": bias + 1.96 * sd}


def summarize_biomarkers(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows over cases (columns case_id, class, biomarker, value_name, pred, gt, ...) → one row
    per (class, biomarker, value_name) with `agreement` statistics (SUMMARY_COLUMNS). Cases
    where pred or gt is undefined (NaN) are left out of the statistics and counted in
    n_undefined. Empty frame: empty summary."""
    missing = sorted({"case_id", "class", "biomarker", "value_name", "pred", "gt"}
                     - set(frame.columns))
    if missing:
        raise ValueError(f"biomarker frame lacks column(s) {', '.join(missing)}")
    keys = ["class", "biomarker", "value_name"]
    out = [{**dict(zip(keys, key)), **agreement(group["pred"], group["gt"])}
           for key, group in frame.groupby(keys, sort=True, dropna=False)]
    return pd.DataFrame(out, columns=list(SUMMARY_COLUMNS))
