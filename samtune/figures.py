"""QC figures as PNG files: training curves and image / ground truth / prompt / prediction panels.

Drawn on a bare `matplotlib.figure.Figure` (Agg canvas, never pyplot), so nothing opens a window
or touches global state; every file is written to a temporary sibling and renamed into place.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from matplotlib.ticker import MaxNLocator

from samtune.atomic import atomic_write

# Instance colours (tab10, 0–255); instance k gets PALETTE[k % 10].
PALETTE = np.array([[31, 119, 180], [255, 127, 14], [44, 160, 44], [214, 39, 40],
                    [148, 103, 189], [140, 86, 75], [227, 119, 194], [127, 127, 127],
                    [188, 189, 34], [23, 190, 207]], dtype=np.float64)
PANELS = ("image", "ground truth", "prompt", "prediction")
CURVE_KEYS = {"loss": ("train_loss", "loss"), "val_loss": ("val_loss",),
              "val_dice": ("val_dice", "dice"), "lr": ("lr", "learning_rate")}


def save_figure(fig: Figure, path: str | Path, dpi: float) -> Path:
    """Render `fig` with Agg (no pyplot state) and write it to `path` as PNG, atomically."""
    FigureCanvasAgg(fig)
    return atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=dpi))


def _as_array(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor, without importing torch here
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def to_rgb_uint8(image: Any) -> np.ndarray:
    """H×W, H×W×3 or 3×H×W (0–255, any dtype) → H×W×3 uint8."""
    img = _as_array(image).astype(np.float64)
    if img.ndim == 3 and img.shape[0] in (1, 3) and img.shape[-1] not in (1, 3):
        img = np.moveaxis(img, 0, -1)
    if img.ndim == 2:
        img = img[..., None]
    if img.ndim != 3 or img.shape[-1] not in (1, 3):
        raise ValueError(f"image must be H×W, H×W×3 or 3×H×W, got shape {img.shape}")
    if img.shape[-1] == 1:
        img = np.repeat(img, 3, axis=-1)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def _as_masks(masks: Any, shape: tuple[int, int]) -> np.ndarray:
    """None, H×W or K×H×W (bool or 0/1) → K×H×W bool."""
    if masks is None:
        return np.zeros((0, *shape), dtype=bool)
    m = _as_array(masks).astype(bool)
    m = m[None] if m.ndim == 2 else m
    if m.ndim != 3 or m.shape[1:] != shape:
        raise ValueError(f"masks must be K×{shape[0]}×{shape[1]}, got shape {m.shape}")
    return m


def overlay_masks(image: Any, masks: Any, alpha: float = 0.5) -> np.ndarray:
    """Blend instance k of K×H×W `masks` onto the image in PALETTE[k % 10] → H×W×3 uint8.

    Pixels outside every mask keep the image's value; where masks overlap the later one wins.
    """
    rgb = to_rgb_uint8(image)
    out = rgb.astype(np.float64)
    for k, mask in enumerate(_as_masks(masks, rgb.shape[:2])):
        out[mask] = (1 - alpha) * rgb[mask] + alpha * PALETTE[k % len(PALETTE)]
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _prompt_arrays(prompts: Any) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]:
    """`Prompts`, a mapping with boxes/points/point_labels, or None → numpy arrays
    (boxes N×4, points N×P×2, labels N×P)."""
    if prompts is None:
        return None, None, None
    get = prompts.get if isinstance(prompts, Mapping) else lambda k: getattr(prompts, k, None)
    arrays = [None if get(k) is None else _as_array(get(k)).astype(np.float64)
              for k in ("boxes", "points", "point_labels")]
    boxes, points, labels = arrays
    if points is not None and points.ndim == 2:  # one point per instance: N×2 → N×1×2
        points = points[:, None]
    if points is not None and labels is None:
        labels = np.ones(points.shape[:2])
    return (None if boxes is None else boxes.reshape(-1, 4)), points, labels


def _draw_prompts(ax: Any, prompts: Any) -> None:
    """Boxes (x0, y0, x1, y1) as outlines in the instance colour; points as + (positive, green)
    and x (negative, red); padding points (label -1) are skipped."""
    boxes, points, labels = _prompt_arrays(prompts)
    for k, (x0, y0, x1, y1) in enumerate([] if boxes is None else boxes):
        ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, linewidth=1.5,
                               edgecolor=PALETTE[k % len(PALETTE)] / 255))
    if points is not None:
        pts, lab = points.reshape(-1, 2), labels.reshape(-1)
        for value, marker, colour in ((1, "+", "lime"), (0, "x", "red")):
            sel = lab == value
            if sel.any():
                ax.scatter(pts[sel, 0], pts[sel, 1], marker=marker, c=colour, s=40, linewidths=1.5)


def qc_overlay(image: Any, gt_masks: Any, prompts: Any, pred_masks: Any, path: str | Path,
               *, scale: float = 1.0, title: str | None = None) -> Path:
    """Four panels side by side — image, ground truth, prompt, prediction — as one PNG.

    image: H×W, H×W×3 or 3×H×W in 0–255; gt_masks / pred_masks: K×H×W (or H×W) bool, instance k
    drawn in PALETTE[k]; prompts: `Prompts` or a mapping with boxes N×4 (x0, y0, x1, y1) and/or
    points N×P×2 (x, y) with point_labels N×P, in pixels of the image. The PNG is exactly
    round(H·scale) × round(4·W·scale) pixels; each panel is the image at `scale`.
    """
    rgb = to_rgb_uint8(image)
    h, w = rgb.shape[:2]
    panels = (rgb, overlay_masks(rgb, gt_masks), rgb, overlay_masks(rgb, pred_masks))
    dpi = 100.0
    fig = Figure(figsize=(round(4 * w * scale) / dpi, round(h * scale) / dpi), dpi=dpi)
    for i, (name, pixels) in enumerate(zip(PANELS, panels)):
        ax = fig.add_axes((i / 4, 0, 1 / 4, 1))
        ax.imshow(pixels, interpolation="nearest", aspect="auto",
                  extent=(-0.5, w - 0.5, h - 0.5, -0.5))
        ax.set_xlim(-0.5, w - 0.5)
        ax.set_ylim(h - 0.5, -0.5)
        ax.set_axis_off()
        if name == "prompt":
            _draw_prompts(ax, prompts)
        label = f"{title} — {name}" if title and i == 0 else name
        ax.text(0.02, 0.98, label, transform=ax.transAxes, va="top", ha="left", fontsize=7,
                color="white", bbox={"facecolor": "black", "alpha": 0.6, "pad": 1, "linewidth": 0})
    return save_figure(fig, path, dpi)


def _series(history: Any) -> dict[str, list[float]]:
    """History as a list of per-epoch dicts or a dict of per-epoch lists → {key: [float|nan]}."""
    if isinstance(history, Mapping):
        columns = {k: list(v) for k, v in history.items() if isinstance(v, Sequence)}
        n = max((len(v) for v in columns.values()), default=0)
        rows = [{k: v[i] for k, v in columns.items() if i < len(v)} for i in range(n)]
    else:
        rows = [dict(r) for r in history]
    out: dict[str, list[float]] = {}
    for name, aliases in CURVE_KEYS.items():
        key = next((a for a in aliases if any(a in r for r in rows)), None)
        if key is not None:
            out[name] = [_float(r.get(key)) for r in rows]
    out["epoch"] = [_float(r.get("epoch", i + 1)) for i, r in enumerate(rows)]
    return out


def _float(v: Any) -> float:
    try:
        return float(v) if v is not None else math.nan
    except (TypeError, ValueError):
        return math.nan


def training_curves(history: Any, path: str | Path) -> Path:
    """Loss (train, and val if present), validation Dice and learning rate per epoch → PNG of
    1200×350 pixels.

    history: a list of per-epoch dicts or a dict of per-epoch lists, with keys `epoch` (default
    1, 2, …), `train_loss` (or `loss`), `val_loss`, `val_dice` (or `dice`) and `lr`. Missing or
    None values (e.g. validation every few epochs) are skipped; an empty history draws empty
    axes.
    """
    s = _series(history)
    epochs = np.array(s["epoch"])
    fig = Figure(figsize=(12, 3.5), dpi=100)
    panels = (("loss", [("loss", "train"), ("val_loss", "val")], False),
              ("validation Dice", [("val_dice", "val Dice")], False),
              ("learning rate", [("lr", "lr")], True))
    for i, (title, curves, log_y) in enumerate(panels):
        ax = fig.add_subplot(1, 3, i + 1)
        for key, label in curves:
            y = np.array(s.get(key, []), dtype=np.float64)
            ok = np.isfinite(y) & np.isfinite(epochs[:len(y)])
            if ok.any():
                ax.plot(epochs[:len(y)][ok], y[ok], marker="o", markersize=3, label=label)
                if log_y and (y[ok] > 0).all():
                    ax.set_yscale("log")
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if len(ax.lines) > 1:
            ax.legend()
    fig.tight_layout()
    return save_figure(fig, path, 100)
