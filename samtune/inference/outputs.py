"""What the `infer` pipeline writes beside each label volume: overlay PNGs of a few
representative slices, the per-case numbers, and inference.json (all written atomically)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

import numpy as np
from scipy.ndimage import binary_erosion

from samtune.atomic import atomic_write, atomic_write_text
from samtune.data.cases import Case
from samtune.data.io_formats import extension
from samtune.data.render import SliceGrid
from samtune.data.slicing import CANONICAL_AXIS, occupied
from samtune.figures import PALETTE, overlay_masks, to_rgb_uint8
from samtune.inference.prompts_file import AXES, to_slice_grid

__all__ = ["label_stats", "representative_slices", "write_overlays", "write_json"]


def label_stats(pred: np.ndarray, affine: np.ndarray, labels: Iterable[int]) -> dict[str, Any]:
    """Voxels and volume (mL = voxels × |det affine[:3, :3]| mm³ / 1000) per label: every label
    present in the I×J×K `pred`, plus the `labels` expected (0 where absent)."""
    ids, counts = np.unique(pred[pred > 0], return_counts=True)
    voxels = {int(c): 0 for c in labels} | {int(i): int(n) for i, n in zip(ids, counts)}
    voxel_ml = abs(float(np.linalg.det(np.asarray(affine, float)[:3, :3]))) / 1000.0
    return {"voxels": {str(k): v for k, v in sorted(voxels.items())},
            "volume_ml": {str(k): round(v * voxel_ml, 6) for k, v in sorted(voxels.items())}}


def representative_slices(grid: SliceGrid, pred: np.ndarray, n: int) -> list[int]:
    """Up to n canonical slices of `grid`, evenly spread over the prediction's extent (the
    middle slice when the prediction is empty, none when n is 0)."""
    if n <= 0:
        return []
    occ = occupied(pred, grid.ornt, CANONICAL_AXIS[grid.cfg.axis])[0]
    if not len(occ):
        return [grid.n_slices // 2]
    return sorted({int(occ[min(len(occ) - 1, (i + 1) * len(occ) // (n + 1))]) for i in range(n)})


def _overlay(image: np.ndarray, lab: np.ndarray) -> np.ndarray:
    """H×W×C uint8 image, H×W label map → H×2W×3: the image, and the image with each label
    filled (alpha 0.4) and outlined in PALETTE[label - 1]."""
    rgb = to_rgb_uint8(image)
    top = int(lab.max())
    masks = np.stack([lab == c for c in range(1, top + 1)]) if top else None
    out = overlay_masks(rgb, masks, alpha=0.4)
    for c in range(1, top + 1):
        m = lab == c
        out[m & ~binary_erosion(m)] = PALETTE[(c - 1) % len(PALETTE)].astype(np.uint8)
    return np.concatenate([rgb, out], axis=1)


def write_overlays(grid: SliceGrid, pred: np.ndarray, folder: Path, n: int) -> list[Path]:
    """PNGs `<case_id>_<axis><index>.png` (index on the original axis the slices are across) of
    `representative_slices`: image | image + prediction, on the slice grid without padding."""
    ks = representative_slices(grid, pred, n)
    if not ks:
        return []
    from PIL import Image

    nh, nw = grid.geometry["resized_shape"]
    labels = to_slice_grid(grid, pred, ks)
    images = grid.images(ks)
    paths = []
    for k, image, lab in zip(ks, images, labels):
        t = grid.transform(k)
        path = Path(folder) / (f"{grid.volume.case.case_id}_{AXES[t['original_axis']]}"
                               f"{t['slice_index']:03d}.png")
        pixels = _overlay(image[:nh, :nw], lab[:nh, :nw])
        atomic_write(path, lambda fh: Image.fromarray(pixels).save(fh, format="PNG"))
        paths.append(path)
    return paths


def write_json(path: Path, obj: Any) -> Path:
    """`obj` as indented JSON at `path`, atomically."""
    text = json.dumps(obj, indent=2, sort_keys=False)
    return atomic_write_text(path, text)


def prediction_path(out_dir: Path, case: Case) -> Path:
    """predictions/<case_id>.nrrd for NRRD inputs, else .nii.gz."""
    src = case.image_paths[0] if case.image_paths else ""
    ext = ".nrrd" if extension(Path(src)) in (".nrrd", ".nhdr") else ".nii.gz"
    return Path(out_dir) / "predictions" / f"{case.case_id}{ext}"
