"""The self-contained HTML evaluation report: tables, and figures embedded as base64 PNG data URIs.

No external CSS, JS, fonts or images: the page reads the same offline. Every piece of text that
comes from data (case ids, class names, context values) goes through `html.escape`. Figures are
drawn on a bare `matplotlib.figure.Figure` with the Agg canvas (never pyplot) and kept in memory.
"""
from __future__ import annotations

import base64
import html
import io
import json
import logging
import math
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from samtune.figures import PALETTE

if TYPE_CHECKING:
    from samtune.eval.report import QCCase

log = logging.getLogger(__name__)

METRIC_LABELS = {"dice": "Dice", "iou": "IoU", "hd95_mm": "HD95 (mm)", "nsd": "NSD",
                 "cldice": "clDice"}
OUTCOME_LABELS = {"detected": "detected", "missed": "missed", "false_positive": "false positive",
                  "true_negative": "true negative"}
CASE_COLUMNS = ("case_id", "class", *METRIC_LABELS, "outcome", "gt_voxels", "pred_voxels")
_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; max-width: 1400px; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.85em; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #f0f0f0; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.missed td { background: #fde8e8; }
figure { display: inline-block; margin: 0.5em 1em 1em 0; }
figcaption { font-size: 0.85em; color: #444; }
img { max-width: 100%; image-rendering: pixelated; }
"""


# ------------------------------------------------------------------ figures → PNG bytes
def _png_bytes(fig: Figure, dpi: float = 100) -> bytes:
    """Render `fig` with the Agg canvas into PNG bytes."""
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def data_uri(png: bytes) -> str:
    """PNG bytes → `data:image/png;base64,…`."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _mpl_text(text: Any) -> str:
    """Data text safe for matplotlib (a `$` would start mathtext)."""
    return str(text).replace("$", r"\$")


def distribution_png(volume: pd.DataFrame, metric: str) -> bytes | None:
    """Box plot per class of one metric over cases, every case as a jittered dot (missed
    structures as red crosses). None when the metric has no value at all."""
    if metric not in volume.columns:
        return None
    values = pd.to_numeric(volume[metric], errors="coerce")
    if values.notna().sum() == 0:
        return None
    classes = list(dict.fromkeys(volume["class"].astype(str)))
    fig = Figure(figsize=(max(4.0, 1.4 * len(classes) + 2), 3.2), dpi=100)
    ax = fig.add_subplot(1, 1, 1)
    rng = np.random.default_rng(0)  # fixed jitter: the same report twice is the same file
    missed = volume["outcome"].eq("missed") if "outcome" in volume.columns else values.isna()
    for i, name in enumerate(classes, start=1):
        sel = volume["class"].astype(str).eq(name) & values.notna()
        v = values[sel].to_numpy(dtype=float)
        if len(v):
            ax.boxplot([v], positions=[i], widths=0.5, showfliers=False)
        for is_missed, style in ((False, {"marker": "o", "c": "tab:blue", "s": 14}),
                                 (True, {"marker": "x", "c": "red", "s": 30})):
            pts = values[sel & (missed == is_missed)].to_numpy(dtype=float)
            ax.scatter(i + rng.uniform(-0.15, 0.15, len(pts)), pts, alpha=0.7, **style)
    ax.set_xticks(range(1, len(classes) + 1), [_mpl_text(c) for c in classes])
    ax.set_xlim(0.4, len(classes) + 0.6)
    ax.set_ylabel(METRIC_LABELS.get(metric, metric))
    ax.set_title(f"{METRIC_LABELS.get(metric, metric)} per case (red ×: missed)")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return _png_bytes(fig)


def _grey_uint8(image: np.ndarray) -> np.ndarray:
    """uint8 as is; any other dtype scaled from its 1st–99th percentile to 0–255."""
    img = np.asarray(image)
    if img.dtype == np.uint8:
        return img
    img = img.astype(np.float64)
    finite = img[np.isfinite(img)]
    lo, hi = (np.percentile(finite, [1, 99]) if finite.size else (0.0, 1.0))
    hi = hi if hi > lo else lo + 1.0
    return np.clip(np.nan_to_num((img - lo) / (hi - lo) * 255.0, nan=0.0), 0, 255).astype(np.uint8)


def overlay_labels(grey: np.ndarray, labels: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """H×W uint8 image + H×W integer label map → H×W×3 uint8; label L > 0 blended in
    PALETTE[(L - 1) % 10], so a class has the same colour in ground truth and prediction."""
    rgb = np.repeat(grey[..., None], 3, axis=-1).astype(np.float64)
    out = rgb.copy()
    lab = np.asarray(labels).astype(np.int64)
    for value in np.unique(lab[lab > 0]):
        mask = lab == value
        out[mask] = (1 - alpha) * rgb[mask] + alpha * PALETTE[(int(value) - 1) % len(PALETTE)]
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def qc_montage_png(case: QCCase, panel_px: int = 220) -> bytes:
    """One row of three panels — image, ground truth, prediction — for one QC case; each panel
    is the slice scaled so its longer side is `panel_px` pixels."""
    grey = _grey_uint8(case.image)
    h, w = grey.shape
    scale = panel_px / max(h, w)
    pw, ph = w * scale, h * scale
    dpi = 100.0
    panels = (("image", np.repeat(grey[..., None], 3, axis=-1)),
              ("ground truth", overlay_labels(grey, case.gt)),
              ("prediction", overlay_labels(grey, case.pred)))
    fig = Figure(figsize=(3 * pw / dpi, ph / dpi), dpi=dpi)
    for i, (name, pixels) in enumerate(panels):
        ax = fig.add_axes((i / 3, 0, 1 / 3, 1))
        ax.imshow(pixels, interpolation="nearest", aspect="auto")
        ax.set_axis_off()
        ax.text(0.02, 0.98, name, transform=ax.transAxes, va="top", ha="left", fontsize=7,
                color="white", bbox={"facecolor": "black", "alpha": 0.6, "pad": 1, "linewidth": 0})
    return _png_bytes(fig, dpi)


def _unit(value_name: str) -> str:
    """Axis unit from a value name's suffix (volume_ml → mL, …_mm2 → mm², …_mm → mm)."""
    for suffix, unit in (("_ml", "mL"), ("_mm2", "mm²"), ("_mm3", "mm³"), ("_mm", "mm")):
        if str(value_name).endswith(suffix):
            return unit
    return ""


def bland_altman_pngs(biomarkers: pd.DataFrame) -> list[tuple[str, bytes]]:
    """One Bland–Altman plot per class × biomarker × value_name → [(title, PNG bytes)], drawn
    by `samtune.eval.bland_altman.bland_altman_plot` (which leaves out and counts undefined
    pairs) into a temporary folder and read back."""
    from samtune.eval.bland_altman import (
        bland_altman_plot,  # only when there are biomarkers
    )

    out: list[tuple[str, bytes]] = []
    keys = ["class", "biomarker", "value_name"]
    with tempfile.TemporaryDirectory(prefix="samtune-ba-") as tmp:
        for i, ((cls, bio, value), group) in enumerate(biomarkers.groupby(keys, sort=False)):
            pred = pd.to_numeric(group["pred"], errors="coerce").to_numpy(dtype=float)
            gt = pd.to_numeric(group["gt"], errors="coerce").to_numpy(dtype=float)
            title = f"{cls} — {bio} ({value})"
            path = Path(tmp) / f"ba_{i}.png"
            bland_altman_plot(pred, gt, _mpl_text(title), path, unit=_unit(value))
            out.append((title, path.read_bytes()))
    return out


# ------------------------------------------------------------------ HTML pieces
def fmt(value: Any, digits: int = 3) -> str:
    """A table cell's text: '–' for None/NaN, floats with `digits` decimals, the rest as str."""
    if value is None or value is pd.NA or (isinstance(value, (float, np.floating))
                                           and math.isnan(value)):
        return "–"
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return f"{float(value):.{digits}f}"
    if isinstance(value, (Mapping, list, tuple)):
        return json.dumps(value, default=str)
    return str(value)


def _cell(value: Any, tag: str = "td") -> str:
    numeric = (isinstance(value, (int, float, np.integer, np.floating))
               and not isinstance(value, bool))
    cls = ' class="num"' if numeric and tag == "td" else ""
    return f"<{tag}{cls}>{html.escape(fmt(value))}</{tag}>"


def table(header: Sequence[str], rows: Sequence[Sequence[Any]],
          row_classes: Sequence[str] | None = None) -> str:
    """An escaped HTML table; `row_classes` gives each row a CSS class (e.g. 'missed')."""
    head = "".join(_cell(h, "th") for h in header)
    body = []
    for i, row in enumerate(rows):
        cls = row_classes[i] if row_classes else ""
        attr = f' class="{html.escape(cls)}"' if cls else ""
        body.append(f"<tr{attr}>" + "".join(_cell(v) for v in row) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def figure(png: bytes, caption: str) -> str:
    """An <img> with a base64 PNG data URI and an escaped caption."""
    alt = html.escape(caption)
    return (f'<figure><img src="{data_uri(png)}" alt="{alt}">'
            f"<figcaption>{alt}</figcaption></figure>")


def summary_tables(global_summary: Mapping[str, Mapping[str, Any]]) -> str:
    """Per class: mean ± std, median, min–max of every computed metric; then outcome counts
    (missed structures included) and the pooled Dice."""
    stats_rows, outcome_rows = [], []
    for name, s in global_summary.items():
        for metric, label in METRIC_LABELS.items():
            st = s.get(metric)
            if not st:
                continue
            stats_rows.append([name, label, f"{fmt(st.get('mean'))} ± {fmt(st.get('std'))}",
                               st.get("median"), f"{fmt(st.get('min'))} – {fmt(st.get('max'))}"])
        counts = s.get("outcomes", {})
        outcome_rows.append([name, s.get("n_cases"), *(counts.get(o, 0) for o in OUTCOME_LABELS),
                             s.get("global_dice")])
    return (table(["class", "metric", "mean ± std", "median", "min – max"], stats_rows)
            + table(["class", "cases", *OUTCOME_LABELS.values(), "pooled Dice"], outcome_rows))


def case_table(volume: pd.DataFrame) -> str:
    """One row per case and class; missed structures highlighted."""
    cols = [c for c in CASE_COLUMNS if c in volume.columns]
    rows = list(volume[cols].itertuples(index=False))
    classes = (["missed" if o == "missed" else "" for o in volume["outcome"]]
               if "outcome" in volume.columns else None)
    return table(cols, rows, classes)


def render_html(*, title: str, context: Mapping[str, Any], volume: pd.DataFrame,
                global_summary: Mapping[str, Mapping[str, Any]],
                biomarker_summary: pd.DataFrame | None, biomarkers: pd.DataFrame | None,
                worst: Sequence[QCCase], best: Sequence[QCCase],
                sections: Sequence[str] = ()) -> str:
    """The whole report page as one string (every figure is drawn here, in memory);
    `sections`: ready HTML inserted after the distributions (e.g. the interactive one)."""
    t = html.escape(title)
    parts = [f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{t}</title>'
             f"<style>{_STYLE}</style></head><body><h1>{t}</h1>",
             "<h2>Context</h2>", table(["key", "value"], list(context.items())),
             "<h2>Summary per class</h2>", summary_tables(global_summary),
             "<h2>Distributions</h2>"]
    for metric in ("dice", "hd95_mm"):
        png = distribution_png(volume, metric)
        if png is not None:
            parts.append(figure(png, f"{METRIC_LABELS[metric]} per class"))
    parts.extend(s for s in sections if s)
    for label, cases in (("worst", worst), ("best", best)):
        if cases:
            parts.append(f"<h2>QC: {label} cases by Dice</h2>")
            parts.extend(figure(qc_montage_png(c), f"{c.case_id} — Dice {fmt(c.dice)} — "
                                f"{c.slice_label}") for c in cases)
    if biomarkers is not None and len(biomarkers):
        parts.append("<h2>Biomarkers</h2>")
        if biomarker_summary is not None:
            parts.append(table(list(biomarker_summary.columns),
                               list(biomarker_summary.itertuples(index=False))))
        parts.extend(figure(png, f"Bland–Altman: {name}")
                     for name, png in bland_altman_pngs(biomarkers))
    parts += ["<h2>Per-case metrics</h2>", case_table(volume), "</body></html>\n"]
    page = "\n".join(parts)
    log.debug("report page: %d figures, %d characters", page.count("<figure>"), len(page))
    return page
