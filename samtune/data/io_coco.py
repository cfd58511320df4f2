"""COCO annotations as a label map: the label of a COCO-2D case (`samtune.data.io.load_volume`).

Polygons and RLE (uncompressed or compressed) are rasterised with pycocotools as
`COCO.annToMask` does. A segmentation pycocotools cannot decode (corrupted RLE `counts`, an RLE
whose size is not the picture's) is a VolumeReadError naming the annotation file, the
annotation id and its image, never pycocotools' bare "Invalid RLE mask representation".
"""
from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from samtune.data.cases import VolumeReadError

__all__ = ["rasterize_coco"]


@functools.lru_cache(maxsize=2)
def _coco_index(path: str, mtime_ns: int, size: int) -> tuple[dict, dict, int]:
    """image id → image record, image id → its annotations (file order), max category id.

    Cached on (path, mtime, size): parsing a large annotation file once per picture is slow.
    """
    try:
        data = json.loads(Path(path).read_text())
        images = {im["id"]: im for im in data["images"]}
        anns: dict = {i: [] for i in images}
        for a in data["annotations"]:
            anns[a["image_id"]].append(a)
        max_cat = max((int(a["category_id"]) for a in data["annotations"]), default=0)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise VolumeReadError(path, f"malformed COCO annotation file ({type(exc).__name__}: "
                                    f"{exc})") from None
    return images, anns, max_cat


def _mask(segm: Any, h: int, w: int) -> np.ndarray | None:
    """H×W uint8 mask of one segmentation, None for none (box only); pycocotools' errors pass."""
    from pycocotools import mask as mask_utils

    if isinstance(segm, list):
        polys = [p for p in segm if len(p) >= 6]
        if not polys:
            return None
        rle = mask_utils.merge(mask_utils.frPyObjects(polys, h, w))
    elif isinstance(segm, dict) and isinstance(segm.get("counts"), list):
        rle = mask_utils.frPyObjects(segm, h, w)
    elif isinstance(segm, dict):
        rle = segm
    else:
        return None
    mask = mask_utils.decode(rle)
    if mask.shape != (h, w):
        raise ValueError(f"RLE size {list(mask.shape)} differs from the image's [height, width] "
                         f"{[h, w]}")
    if mask.size and mask.max() > 1:  # runs past the mask: the decoder read garbage counts
        raise ValueError("RLE runs do not add up to height × width")
    return mask


def rasterize_coco(path: str | Path, image_id: int, size: tuple[int, int]) -> np.ndarray:
    """I×J×1 label map of category ids for one COCO image (pycocotools, as COCO.annToMask).

    size: (I, J) = (width, height) of the picture. Later annotations overwrite earlier ones;
    annotations without a segmentation (bounding boxes only) are left out. Raises
    VolumeReadError naming the file (and the annotation id) for anything it cannot rasterise.
    """
    path = str(path)
    st = os.stat(path)
    images, anns, max_cat = _coco_index(path, st.st_mtime_ns, st.st_size)
    if image_id not in images:
        raise VolumeReadError(path, f"image id {image_id} is not in this annotation file")
    h, w = int(images[image_id]["height"]), int(images[image_id]["width"])
    if (w, h) != tuple(size):
        raise VolumeReadError(path, f"image {image_id}: annotated size {w}×{h} differs from the "
                                    f"picture's {size[0]}×{size[1]}")
    label = np.zeros((h, w), np.uint8 if max_cat <= 255 else np.int32)
    for a in anns[image_id]:
        try:
            mask = _mask(a.get("segmentation"), h, w)
        except (ValueError, TypeError, OverflowError, KeyError) as exc:
            problem = " ".join(str(exc).split())[:200] or type(exc).__name__
            raise VolumeReadError(path, f"annotation {a.get('id')} (image {image_id}): corrupted "
                                        f"segmentation, cannot decode it ({problem})") from None
        if mask is not None:
            label[mask > 0] = int(a["category_id"])
    return np.ascontiguousarray(label.T)[:, :, None]
