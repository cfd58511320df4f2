"""Dice after N simulated clicks, per volume and class, and the clicks needed to reach a Dice
(NoC@Dice). The rows come from either path: 2D models clicked slice by slice
(`samtune.inference.click_eval`), 3D models clicked in their crop (`samtune.inference.volume3d`).

Rows: case_id, class, model ("evaluated", or "zero-shot" for the untrained base model scored
beside it), clicks (N ≥ 1), dice (volume Dice after N clicks).
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from samtune.eval.metrics.overlap import dice

__all__ = ["click_rows", "curve_rows", "clicks_frame", "clicks_to_reach_frame", "CLICK_COLUMNS"]

CLICK_COLUMNS = ["case_id", "class", "model", "clicks", "dice"]


def click_rows(case_id: str, preds: Mapping[int, np.ndarray], gt: np.ndarray,
               classes: Mapping[int, str], model: str = "evaluated") -> list[dict]:
    """{N: I×J×K label volume after N clicks} and the ground truth → one row per N and class.
    A class absent from the ground truth is skipped (nothing to click)."""
    present = [c for c in classes if (gt == c).any()]
    return [{"case_id": case_id, "class": classes[c], "model": model, "clicks": int(n),
             "dice": dice(pred == c, gt == c)} for n, pred in sorted(preds.items())
            for c in present]


def curve_rows(case_id: str, curves: Mapping[int, Sequence[float]], classes: Mapping[int, str],
               model: str = "evaluated") -> list[dict]:
    """{class id: Dice after 1…N clicks} (a 3D model's per-class curves) → rows."""
    return [{"case_id": case_id, "class": classes[c], "model": model, "clicks": n,
             "dice": float(d)} for c, curve in curves.items()
            for n, d in enumerate(curve, start=1)]


def clicks_frame(rows: Sequence[dict], report_at: Sequence[int]) -> pd.DataFrame:
    """Rows of every N → the rows at the reported click counts (eval.clicks), sorted."""
    frame = pd.DataFrame(list(rows), columns=CLICK_COLUMNS)
    frame = frame[frame["clicks"].isin(list(report_at))]
    return frame.sort_values(["model", "case_id", "class", "clicks"]).reset_index(drop=True)


def clicks_to_reach_frame(rows: Sequence[dict], target: float) -> pd.DataFrame:
    """Rows of every N (1…max) → per case, class and model the fewest clicks with Dice ≥
    target (NaN: not within the clicks simulated) and the best Dice seen."""
    frame = pd.DataFrame(list(rows), columns=CLICK_COLUMNS)
    out = []
    for (model, case, name), g in frame.groupby(["model", "case_id", "class"], sort=True):
        g = g.sort_values("clicks")
        hit = g[g["dice"] >= target]
        out.append({"case_id": case, "class": name, "model": model,
                    f"clicks_to_{target:g}": int(hit["clicks"].iloc[0]) if len(hit) else np.nan,
                    "max_clicks": int(g["clicks"].max()), "best_dice": float(g["dice"].max())})
    return pd.DataFrame(out)
