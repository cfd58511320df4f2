"""Intensity → uint8 (CT windows, MR percentiles, RGB pass-through), channels, pixel statistics.

`intensity_params` looks at a whole volume once (the MR percentiles) and `apply_intensity` maps
any array of it (the volume, or a stack of its slices) to uint8 in one vectorised call:
``round(clip((x - lo) / (hi - lo), 0, 1) · 255)`` per channel, with lo/hi the window's bounds
(level ∓ width/2) or the volume's percentiles. Integer inputs of ≤ 16 bits go through a lookup
table (one gather, no float copy of the volume); others are computed in float32 in chunks.

Mode choice: `intensity="auto"` windows CT (preset `cta` when no window is set), normalises MR
by percentiles and passes RGB (COCO-2D pictures, already uint8) through.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np
from PIL import Image

# Level / width in HU. Soft tissue, lung, bone, brain and mediastinum are the usual published
# values (e.g. Radiopaedia "Windowing (CT)"). `cta` (alias `angio`): contrast lumen sits at
# ~300–500 HU in coronary/vascular CTA; cardiac-CT reading practice uses a width of ~600–900 and a
# level of ~200–300. L 300 / W 800 spans −100…700 HU: epicardial fat just above black, myocardium
# mid-grey, the opacified lumen bright but unsaturated, dense calcium saturated.
CT_WINDOWS: dict[str, tuple[float, float]] = {
    "cta": (300.0, 800.0),
    "angio": (300.0, 800.0),
    "soft_tissue": (40.0, 400.0),
    "lung": (-600.0, 1500.0),
    "bone": (400.0, 1800.0),
    "brain": (40.0, 80.0),
    "mediastinum": (50.0, 350.0),
    "liver": (30.0, 150.0),
}
DEFAULT_CT_WINDOW = "cta"
_CHUNK_VOXELS = 1 << 24


@dataclass(frozen=True)
class IntensityParams:
    """How to map one volume: mode 'window' | 'percentile' | 'passthrough', bounds per channel."""

    mode: str
    low: tuple[float, ...] = ()
    high: tuple[float, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "low": list(self.low), "high": list(self.high)}


def resolve_window(cfg: Any) -> tuple[float, float]:
    """(level, width) in HU from cfg.window_level/window_width, else cfg.window, else `cta`.

    Raises ValueError for an unknown preset (listing them) or only one of level/width.
    """
    level, width = cfg.window_level, cfg.window_width
    if (level is None) != (width is None):
        raise ValueError("set both convert.window_level and convert.window_width (or neither)")
    if level is not None:
        return float(level), float(width)
    name = (cfg.window or DEFAULT_CT_WINDOW).lower()
    if name not in CT_WINDOWS:
        raise ValueError(f"unknown CT window preset '{cfg.window}'; presets: "
                         f"{', '.join(sorted(CT_WINDOWS))}")
    return CT_WINDOWS[name]


def resolve_mode(modality: str, cfg: Any) -> str:
    """'window' | 'percentile' | 'passthrough' for a modality and cfg.intensity."""
    if modality == "RGB":
        return "passthrough"
    if cfg.intensity != "auto":
        return cfg.intensity
    return "percentile" if modality == "MR" else "window"


def intensity_params(image: np.ndarray, modality: str, cfg: Any) -> IntensityParams:
    """Parameters for a C×… image (C first). MR percentiles are computed here, once per volume
    and channel, over all voxels (`cfg.percentiles`, e.g. (0.5, 99.5))."""
    mode = resolve_mode(modality, cfg)
    n_channels = image.shape[0]
    if mode == "passthrough":
        return IntensityParams(mode)
    if mode == "window":
        level, width = resolve_window(cfg)
        return IntensityParams(mode, (level - width / 2,) * n_channels,
                               (level + width / 2,) * n_channels)
    lows, highs = [], []
    for c in range(n_channels):
        lo, hi = np.percentile(image[c], list(cfg.percentiles))
        lows.append(float(lo))
        highs.append(float(hi))
    return IntensityParams(mode, tuple(lows), tuple(highs))


def _scale(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """float32 values → uint8 (constant when hi ≤ lo: everything ≥ hi becomes 255, else 0)."""
    if hi <= lo:
        return np.where(values >= hi, 255, 0).astype(np.uint8)
    x = (values.astype(np.float32) - np.float32(lo)) * np.float32(255.0 / (hi - lo))
    np.clip(x, 0, 255, out=x)
    return np.rint(x, out=x).astype(np.uint8)


def _window_channel(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    if x.dtype.kind in "iub" and x.dtype.itemsize <= 2:
        if x.dtype == np.bool_:
            x = x.view(np.uint8)
        unsigned = np.dtype(f"u{x.dtype.itemsize}")
        table = _scale(np.arange(1 << (8 * x.dtype.itemsize), dtype=unsigned).view(x.dtype), lo, hi)
        return np.take(table, x.view(unsigned))
    out = np.empty(x.shape, dtype=np.uint8)
    step = max(1, _CHUNK_VOXELS // max(1, int(np.prod(x.shape[1:]))))
    for s in range(0, x.shape[0], step):
        out[s:s + step] = _scale(x[s:s + step], lo, hi)
    return out


def apply_intensity(array: np.ndarray, params: IntensityParams,
                    channel_axis: int = 0) -> np.ndarray:
    """Map an array with channels on `channel_axis` to uint8 of the same shape.

    Pass-through requires uint8 (or integers within 0…255) and returns them unchanged.
    """
    if params.mode == "passthrough":
        if array.dtype == np.uint8:
            return array
        if array.dtype.kind in "iu" and array.size and 0 <= array.min() and array.max() <= 255:
            return array.astype(np.uint8)
        raise ValueError(f"RGB pass-through needs uint8 pixels, got {array.dtype}")
    moved = np.moveaxis(array, channel_axis, 0)
    if len(params.low) != moved.shape[0]:
        raise ValueError(f"{len(params.low)} channel bounds for {moved.shape[0]} channels")
    out = np.empty(moved.shape, dtype=np.uint8)
    for c in range(moved.shape[0]):
        out[c] = _window_channel(moved[c], params.low[c], params.high[c])
    return np.moveaxis(out, 0, channel_axis)


def to_uint8(image: np.ndarray, modality: str, cfg: Any) -> np.ndarray:
    """A whole C×… image → uint8 (one call per volume): `intensity_params` + `apply_intensity`."""
    return apply_intensity(image, intensity_params(image, modality, cfg), channel_axis=0)


def channel_plan(n_in: int, modality: str, cfg: Any) -> list[int]:
    """Input channel feeding each of the cfg.channels output channels; [-1] = luma of RGB.

    cfg.input_channels names 1 (replicated) or cfg.channels channels; without it one channel
    takes channel 0 (an RGB picture its luma), three take an RGB/3-channel image as it is or
    replicate a single channel. Raises ValueError otherwise.
    """
    picks = cfg.input_channels
    if picks is not None:
        if len(picks) not in (1, cfg.channels) or any(not 0 <= c < n_in for c in picks):
            raise ValueError(f"input_channels {picks} do not name 1 or {cfg.channels} of the "
                             f"volume's {n_in} channels")
        return list(picks) * (cfg.channels // len(picks))
    if cfg.channels == 1:
        return [-1] if n_in == 3 and modality == "RGB" else [0]
    if n_in in (1, 3):
        return [0, 0, 0] if n_in == 1 else [0, 1, 2]
    raise ValueError(f"{n_in} channels; set convert.input_channels to pick 3 (or 1)")


def luma(u8: np.ndarray) -> np.ndarray:
    """…×3 uint8 → …×1 (ITU-R 601-2 luma in Pillow's fixed point, as its convert('L'))."""
    w = np.array([19595, 38470, 7471], dtype=np.uint32)
    return ((u8.astype(np.uint32) @ w + 0x8000) >> 16).astype(np.uint8)[..., None]


def compute_stats(coco_dir: Path, image_ids: Iterable[int] | None = None,
                  max_images: int = 2000) -> dict:
    """Pixel and label statistics of a COCO folder written by `convert_collection`.

    Over `image_ids` (None: all images): per-channel mean/std on the 0–255 and 0–1 scales and
    the 1/50/99th intensity percentiles (0–255) of the image content (padding excluded), from at
    most `max_images` images picked evenly by id; slices and instances per class name and the
    image count from all the chosen images. Empty selection: pixel figures are None.
    """
    coco_dir = Path(coco_dir)
    data = json.loads((coco_dir / "annotations.json").read_text())
    images = sorted(data["images"], key=lambda r: r["id"])
    if image_ids is not None:
        wanted = set(int(i) for i in image_ids)
        images = [r for r in images if r["id"] in wanted]
    chosen = {r["id"] for r in images}
    names = {c["id"]: c["name"] for c in data["categories"]}
    slices = {n: set() for n in names.values()}
    instances = dict.fromkeys(names.values(), 0)
    for ann in data["annotations"]:
        if ann["image_id"] in chosen:
            slices[names[ann["category_id"]]].add(ann["image_id"])
            instances[names[ann["category_id"]]] += 1
    if len(images) > max_images:
        picks = np.unique(np.linspace(0, len(images) - 1, max_images).round().astype(int))
        images = [images[i] for i in picks]
    hist = None
    for rec in images:
        with Image.open(coco_dir / "images" / rec["file_name"]) as img:
            pixels = np.asarray(img)
        nh, nw = rec["transform"]["resized_shape"]
        pixels = pixels[:nh, :nw].reshape(nh * nw, -1)
        counts = np.stack([np.bincount(pixels[:, c], minlength=256)
                           for c in range(pixels.shape[1])])
        hist = counts if hist is None else hist + counts
    stats: dict[str, Any] = {"n_images": len(chosen), "n_sampled": len(images),
                             "slices_per_class": {n: len(s) for n, s in slices.items()},
                             "instances_per_class": instances}
    if hist is None:
        return {**stats, "mean_255": None, "std_255": None, "mean_01": None, "std_01": None,
                "percentiles": None}
    values = np.arange(256, dtype=np.float64)
    total = hist.sum(axis=1)
    mean = hist @ values / total
    std = np.sqrt((hist * (values[None] - mean[:, None]) ** 2).sum(axis=1) / total)
    cdf = np.cumsum(hist, axis=1) / total[:, None]
    pct = {str(p): [int(np.searchsorted(row, p / 100)) for row in cdf] for p in (1, 50, 99)}
    return {**stats, "mean_255": mean.tolist(), "std_255": std.tolist(),
            "mean_01": (mean / 255).tolist(), "std_01": (std / 255).tolist(), "percentiles": pct}
