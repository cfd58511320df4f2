"""Bland-Altman plot of a biomarker over cases: prediction against ground truth.

x = mean of the pair (pred + gt) / 2, y = difference pred - gt, with the bias (mean difference)
and the limits of agreement bias ± 1.96 SD (`samtune.eval.biomarkers.agreement`). Drawn on a
bare `matplotlib.figure.Figure` with the Agg canvas (never pyplot, so no global figure state and
no window) and written atomically: a temporary sibling renamed into place.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from samtune.eval.biomarkers import agreement
from samtune.figures import save_figure

log = logging.getLogger(__name__)


def bland_altman_plot(pred_values: Sequence[float] | np.ndarray,
                      gt_values: Sequence[float] | np.ndarray, title: str,
                      out_path: str | Path, *, unit: str = "", dpi: float = 100.0) -> Path:
    """Write a Bland-Altman PNG of paired values (one pair per case) to `out_path`; return it.

    Pairs where either value is NaN or infinite (undefined biomarker) are left out and counted
    in the legend. With fewer than two finite pairs there is no SD: the limits are not drawn;
    with none the axes say "no finite pairs". `unit` (e.g. "mL", "mm") labels the axes.
    ValueError if the two sequences differ in length.
    """
    pred = np.asarray(pred_values, dtype=np.float64).ravel()
    gt = np.asarray(gt_values, dtype=np.float64).ravel()
    if pred.shape != gt.shape:
        raise ValueError(f"pred_values ({pred.size}) and gt_values ({gt.size}) differ in length")
    stats = agreement(pred, gt)
    ok = np.isfinite(pred) & np.isfinite(gt)
    mean, diff = (pred[ok] + gt[ok]) / 2, pred[ok] - gt[ok]
    suffix = f" ({unit})" if unit else ""

    fig = Figure(figsize=(6.0, 4.5))
    ax = fig.add_subplot()
    ax.scatter(mean, diff, s=18, alpha=0.8, color="tab:blue",
               label=f"cases (n={stats['n']}, undefined {stats['n_undefined']})")
    if stats["n"]:
        ax.axhline(stats["mean_error"], color="tab:red",
                   label=f"bias {stats['mean_error']:.3g}")
    if stats["n"] > 1:
        for key in ("loa_lower", "loa_upper"):
            ax.axhline(stats[key], color="tab:gray", linestyle="--")
        ax.plot([], [], color="tab:gray", linestyle="--",
                label=f"±1.96 SD [{stats['loa_lower']:.3g}, {stats['loa_upper']:.3g}]")
    if not stats["n"]:
        ax.text(0.5, 0.5, "no finite pairs", transform=ax.transAxes, ha="center", va="center")
    ax.axhline(0.0, color="black", linewidth=0.5)
    ax.set_xlabel(f"mean of prediction and ground truth{suffix}")
    ax.set_ylabel(f"prediction − ground truth{suffix}")
    ax.set_title(title)
    ax.legend(loc="best", fontsize="small")
    fig.tight_layout()
    path = Path(out_path)
    save_figure(fig, path, dpi)
    log.debug("wrote Bland-Altman plot %s (%s)", path, stats)
    return path
