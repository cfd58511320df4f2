"""Checking one COCO segmentation without decoding it: polygons, uncompressed and compressed RLE.

A corrupted RLE would otherwise surface deep in pycocotools' C decoder (a wrong mask or a crash),
so the coco2d layout checks every annotation when it reads the file. A compressed RLE string is
parsed as pycocotools' `rleFrString` parses it (6-bit groups offset by 48, 0x20 continuation,
0x10 sign, each count after the second stored relative to the one two back); its runs must be
non-negative and add up to height × width.
"""
from __future__ import annotations

import math
from typing import Any

__all__ = ["check_segmentation", "rle_runs"]


def rle_runs(counts: str) -> list[int] | None:
    """Run lengths of a compressed COCO RLE string, or None when the string is malformed
    (a character outside '0'…'o', a truncated number, a negative run)."""
    runs: list[int] = []
    p, n = 0, len(counts)
    while p < n:
        x, k, more = 0, 0, True
        while more:
            if p >= n:
                return None
            c = ord(counts[p]) - 48
            if not 0 <= c < 64:
                return None
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p, k = p + 1, k + 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)
        if len(runs) > 2:
            x += runs[-2]
        if x < 0:
            return None
        runs.append(x)
    return runs


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _size(value: Any) -> tuple[int, int] | None:
    ok = isinstance(value, (list, tuple)) and len(value) == 2 and all(
        isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)
    return (int(value[0]), int(value[1])) if ok else None


def check_segmentation(segm: Any, image_size: tuple[Any, Any]) -> str | None:
    """The problem with one annotation's `segmentation`, or None when it is usable.

    image_size: the image record's (height, width), either None when not recorded. Accepted:
    absent/None (a box-only annotation), a list of polygons (lists of finite numbers), an RLE
    dict {"size": [h, w], "counts": str | list of ints} whose size matches the image and whose
    runs add up to h × w.
    """
    if segm is None:
        return None
    if isinstance(segm, list):
        for i, poly in enumerate(segm):
            if not isinstance(poly, list) or not all(_is_number(v) for v in poly):
                return f"polygon {i} is not a list of finite numbers"
        return None
    if not isinstance(segm, dict):
        return f"segmentation is a {type(segm).__name__}, not polygons or an RLE dict"
    size = _size(segm.get("size"))
    if size is None:
        return f"RLE 'size' {segm.get('size')!r} is not [height, width]"
    recorded = tuple(image_size)
    if all(isinstance(v, int) for v in recorded) and size != recorded:
        return f"RLE size {list(size)} differs from the image's [height, width] {list(recorded)}"
    counts = segm.get("counts")
    if isinstance(counts, bytes):
        counts = counts.decode("ascii", errors="replace")
    if isinstance(counts, str):
        runs = rle_runs(counts)
        if runs is None:
            return "RLE 'counts' is not a valid compressed RLE string"
    elif isinstance(counts, list) and all(isinstance(v, int) and not isinstance(v, bool)
                                          and v >= 0 for v in counts):
        runs = counts
    else:
        return "RLE 'counts' is neither a compressed string nor a list of non-negative integers"
    total = sum(runs)
    if total != size[0] * size[1]:
        return (f"RLE runs cover {total} pixels, not {size[0]}×{size[1]} = "
                f"{size[0] * size[1]} (truncated or corrupted)")
    return None
