"""From per-slice predictions back to a volume: instance probabilities → one label map per slice
(`label_slice`), slice label maps → an I×J×K label volume on the source grid (`reassemble`,
undoing pad, resize and reorientation exactly through `slicing.mask_to_original`)."""
from __future__ import annotations

import numpy as np

from samtune.data.render import SliceGrid
from samtune.data.slicing import mask_to_original


def label_slice(probs: np.ndarray, labels: np.ndarray, size: int) -> np.ndarray:
    """K×S×S probabilities with class ids K → S×S label map (0 background): per class the max
    over its instances; a pixel takes the most probable class above 0.5."""
    if len(labels) == 0:
        return np.zeros((size, size), np.int32)
    classes = np.unique(labels)
    per_class = np.stack([probs[labels == c].max(axis=0) for c in classes])
    best = per_class.argmax(axis=0)
    return np.where(per_class.max(axis=0) > 0.5, classes[best], 0).astype(np.int32)


def reassemble(grid: SliceGrid, slice_labels: dict[int, np.ndarray]) -> np.ndarray:
    """Canonical slice index → S×S label map on the slice grid, to an I×J×K int32 label volume
    on the source grid (slices not given stay 0)."""
    out = np.zeros(grid.volume.shape, np.int32)
    for k, lab in slice_labels.items():
        arr, index = mask_to_original(lab, grid.transform(k))
        out[index] = arr
    return out
