"""Geometry of volume → 2D slice → model grid, and its exact inverse.

Steps (forward):
1. Reorient the I×J×K(×C) array to canonical RAS+ with `nibabel.orientations` (axes permuted and
   flipped, no resampling); the orientation `ornt` (3×2, nibabel's) is recorded.
2. Take slices along the canonical axis: axial = k (2), coronal = j (1), sagittal = i (0).
3. 2D view, radiological: ``view = np.flip(slice2d, (0, 1)).T`` for all three axes, where
   `slice2d` keeps the two remaining canonical axes in increasing order. Hence
   axial    rows = j reversed (anterior at top),  cols = i reversed (patient right on image left);
   coronal  rows = k reversed (superior at top),  cols = i reversed (patient right on image left);
   sagittal rows = k reversed (superior at top),  cols = j reversed (anterior on image left).
   A picture read with affine diag(-1, -1, 1, 1) and i = column, j = row comes out unchanged.
4. Resize so the longer side is `img_size` (aspect kept; images bilinear, antialiased when
   shrinking; labels nearest-exact, i.e. pixel centres), then pad with zeros at the bottom and
   right to img_size×img_size (SAM's own preprocessing pads bottom/right too).

`mask_to_original` undoes 4 → 1 for one slice. Nearest-exact index maps are computed in integers,
so with no downscaling the round trip of a label map is exact.
"""
from __future__ import annotations

from typing import Any

import numpy as np
from nibabel.orientations import apply_orientation, inv_ornt_aff, io_orientation, ornt_transform

CANONICAL_AXIS = {"sagittal": 0, "coronal": 1, "axial": 2}
PAD_MODE = "bottom-right"


def to_canonical(array: np.ndarray,
                 affine: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Reorient an I×J×K(×…) array to RAS+ (a view: axes permuted/flipped, no copy).

    Returns (canonical array, canonical affine 4×4, ornt 3×2 [output axis, flip ±1] per input axis).
    """
    ornt = io_orientation(np.asarray(affine, dtype=float))
    canon = apply_orientation(array, ornt)
    canon_affine = np.asarray(affine, dtype=float) @ inv_ornt_aff(ornt, array.shape[:3])
    return canon, canon_affine, ornt


def from_canonical(canon: np.ndarray, ornt: np.ndarray) -> np.ndarray:
    """Inverse of `to_canonical` for the array (I'×J'×K'(×…) canonical → original axes)."""
    ras = np.array([[0, 1], [1, 1], [2, 1]], dtype=float)
    return apply_orientation(canon, ornt_transform(ras, np.asarray(ornt, dtype=float)))


def original_axis(ornt: np.ndarray, canonical_axis: int) -> tuple[int, int]:
    """(original axis, flip ±1) that became `canonical_axis`."""
    o = int(np.flatnonzero(np.asarray(ornt)[:, 0] == canonical_axis)[0])
    return o, int(ornt[o][1])


def slice_to_original_index(k_canonical: int, canonical_axis: int, ornt: np.ndarray,
                            original_shape: tuple[int, ...]) -> tuple[int, int]:
    """(original axis, original slice index) of canonical slice `k_canonical`."""
    o, flip = original_axis(ornt, canonical_axis)
    return o, (k_canonical if flip > 0 else int(original_shape[o]) - 1 - k_canonical)


def view_stack(canon: np.ndarray, canonical_axis: int) -> np.ndarray:
    """All 2D views along an axis: canonical I×J×K(×C) → N×H×W(×C), a view (no copy).

    `result[n]` is the radiological view of canonical slice n (see module docstring).
    """
    s = np.moveaxis(canon, canonical_axis, 0)
    return np.flip(s, (1, 2)).swapaxes(1, 2)


def occupied(label: np.ndarray, ornt: np.ndarray, axis: int) -> tuple[np.ndarray, ...]:
    """Where an I×J×K label is non-zero, seen through `view_stack(canonical, axis)`: indices of
    the occupied canonical slices, view rows and view columns (two passes over the array)."""
    plane = label.any(axis=2)
    occ = [plane.any(axis=1), plane.any(axis=0), label.any(axis=(0, 1))]
    canon = []
    for c in range(3):
        o, flip = original_axis(ornt, c)
        canon.append(occ[o] if flip > 0 else occ[o][::-1])
    p, q = (c for c in range(3) if c != axis)
    return (np.flatnonzero(canon[axis]), np.flatnonzero(canon[q][::-1]),
            np.flatnonzero(canon[p][::-1]))


def view_to_slice(view2d: np.ndarray) -> np.ndarray:
    """Inverse of the 2D view for one slice: H×W → the canonical slice (remaining axes in order)."""
    return np.flip(view2d.swapaxes(0, 1), (0, 1))


def resize_geometry(height: int, width: int, img_size: int) -> dict[str, Any]:
    """Scale/resized shape/pad for an H×W slice fitted into img_size×img_size.

    scale = img_size / max(H, W); resized = round(H·scale), round(W·scale) (≥ 1);
    pad = [top, bottom, left, right] pixels (top = left = 0: bottom-right padding).
    """
    scale = img_size / max(height, width)
    nh = min(img_size, max(1, int(np.floor(height * scale + 0.5))))
    nw = min(img_size, max(1, int(np.floor(width * scale + 0.5))))
    return {"scale": scale, "resized_shape": [nh, nw], "pad": [0, img_size - nh, 0, img_size - nw]}


def nearest_indices(n_in: int, n_out: int) -> np.ndarray:
    """Source index of each of `n_out` pixels, nearest-exact (pixel centres), in exact integers."""
    o = np.arange(n_out, dtype=np.int64)
    return np.minimum(((2 * o + 1) * n_in) // (2 * n_out), n_in - 1)


def resize_labels(stack: np.ndarray, resized_shape: tuple[int, int] | list[int]) -> np.ndarray:
    """Nearest-exact resize of an N×H×W label/component stack to N×h×w (no padding)."""
    nh, nw = resized_shape
    if (nh, nw) == stack.shape[1:3]:
        return np.ascontiguousarray(stack)
    rows = nearest_indices(stack.shape[1], nh)
    cols = nearest_indices(stack.shape[2], nw)
    return stack[:, rows[:, None], cols[None, :]]


def resize_images(stack: np.ndarray, geometry: dict[str, Any]) -> np.ndarray:
    """Resize + pad an N×H×W×C uint8 stack to N×S×S×C uint8 (S = img_size).

    One `torch.nn.functional.interpolate` call for the batch (bilinear; antialiased when
    shrinking); skipped when the size does not change.
    """
    n, h, w, c = stack.shape
    nh, nw = geometry["resized_shape"]
    size = nh + geometry["pad"][1]
    out = np.zeros((n, size, size, c), dtype=np.uint8)
    if (nh, nw) == (h, w):
        out[:, :h, :w] = stack
        return out
    import torch  # here, not at module level: ~0.6 GB RSS per process, only needed to resize

    t = torch.from_numpy(np.ascontiguousarray(stack)).permute(0, 3, 1, 2).float()
    r = torch.nn.functional.interpolate(t, size=(nh, nw), mode="bilinear", align_corners=False,
                                        antialias=nh < h or nw < w)
    out[:, :nh, :nw] = r.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return out


def slice_transform(*, ornt: np.ndarray, axis: str, k_canonical: int,
                    original_shape: tuple[int, int, int], spacing: tuple[float, float, float],
                    affine: np.ndarray, slice_shape: tuple[int, int], img_size: int,
                    geometry: dict[str, Any]) -> dict[str, Any]:
    """The JSON-able record that lets `mask_to_original` map a slice back (sizes in pixels/voxels,
    spacing in mm along the original i, j, k; pixel_spacing in mm of an output-grid pixel)."""
    a = CANONICAL_AXIS[axis]
    o_axis, k_orig = slice_to_original_index(k_canonical, a, ornt, original_shape)
    p_axis, q_axis = (original_axis(ornt, c)[0] for c in range(3) if c != a)
    h, w = slice_shape
    nh, nw = geometry["resized_shape"]
    return {
        "orientation": [[int(x), int(f)] for x, f in np.asarray(ornt)],
        "axis": axis,
        "canonical_axis": a,
        "original_axis": o_axis,
        "slice_index": k_orig,
        "slice_index_canonical": int(k_canonical),
        "original_shape": [int(s) for s in original_shape],
        "spacing": [float(s) for s in spacing],
        "affine": np.asarray(affine, dtype=float).tolist(),
        "slice_shape": [int(h), int(w)],
        "scale": float(geometry["scale"]),
        "resized_shape": [int(nh), int(nw)],
        "pad": [int(p) for p in geometry["pad"]],
        "pad_mode": PAD_MODE,
        "img_size": int(img_size),
        "pixel_spacing": [float(spacing[q_axis]) * h / nh, float(spacing[p_axis]) * w / nw],
        "slice_thickness": float(spacing[o_axis]),
    }


def mask_to_original(mask2d: np.ndarray, record: dict[str, Any]) -> tuple[np.ndarray, tuple]:
    """Map an img_size×img_size mask on the output grid back to the original voxel grid.

    `record` is an image record of annotations.json (or its "transform"). Returns the 2D array
    (the original volume's two in-plane axes, in increasing axis order) and the index expression
    into the original I×J×K volume, e.g. ``(slice(None), slice(None), k)``, so that
    ``vol[index] = array`` assembles a 3D prediction. Nearest-exact, so labels stay labels.
    """
    t = record.get("transform", record)
    top, _, left, _ = t["pad"]
    nh, nw = t["resized_shape"]
    h, w = t["slice_shape"]
    m = np.asarray(mask2d)[top:top + nh, left:left + nw]
    if m.shape != (nh, nw):
        raise ValueError(f"mask of shape {np.shape(mask2d)} does not hold the {nh}×{nw} image")
    if (nh, nw) != (h, w):
        m = m[nearest_indices(nh, h)[:, None], nearest_indices(nw, w)[None, :]]
    canon2d = view_to_slice(m)
    ornt = np.asarray(t["orientation"])
    a = t["canonical_axis"]
    rest = [c for c in range(3) if c != a]
    axes_flips = [original_axis(ornt, c) for c in rest]
    for d, (_, flip) in enumerate(axes_flips):
        if flip < 0:
            canon2d = np.flip(canon2d, d)
    if axes_flips[0][0] > axes_flips[1][0]:
        canon2d = canon2d.T
    index: list[Any] = [slice(None)] * 3
    index[t["original_axis"]] = int(t["slice_index"])
    return np.ascontiguousarray(canon2d), tuple(index)
