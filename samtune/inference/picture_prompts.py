"""Prompts for 2D pictures (`infer.prompts_file` when `infer.input` is pictures): boxes and points
in pixel coordinates, checked against the pictures and mapped onto the slice grid.

File format, JSON or CSV, one object per row (x = column, y = row, 0-based pixels):

    JSON  [{"image": "knee", "label": 1, "box": [10, 12, 30, 40]},
           {"image": "knee", "label": 2, "points": [[50, 60], [55, 70]], "point_labels": [1, 0]}]
                                        (or {"prompts": [...]})
    CSV   image,label,x0,y0,x1,y1,x,y   (a box in x0..y1, or one positive point in x, y, or both)
          knee,1,10,12,30,40,,

- `image`: the picture's file name, with or without its extension.
- `box` [x0, y0, x1, y1]: pixel ranges, both ends inclusive.
- `points` [[x, y], …] with `point_labels` (1 positive, 0 negative; default all 1).
- `label`: the class id (≥ 1) written for this object. A row needs a box, points or both.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from samtune.data.cases import DataError
from samtune.inference.prompts_file import PromptsFileError, _int, prompt_rows

__all__ = ["PicturePrompt", "read_picture_prompts", "check_picture_prompt", "to_grid_prompt"]
_FIELDS = {"image", "label", "box", "points", "point_labels"}
CSV_COLUMNS = ("image", "label", "x0", "y0", "x1", "y1", "x", "y")


@dataclass(frozen=True)
class PicturePrompt:
    """One object on one picture: box (x0, y0, x1, y1) inclusive pixels or None, points ((x, y),
    …) with labels (1/0), the class id, and the file row (1-based)."""

    image: str
    label: int
    box: tuple[int, int, int, int] | None
    points: tuple[tuple[int, int], ...]
    point_labels: tuple[int, ...]
    row: int


def _parse(raw: Any, path: Path, row: int) -> PicturePrompt:
    if not isinstance(raw, dict):
        raise PromptsFileError(path, f"expected an object with image, label and box or points; "
                                     f"got {type(raw).__name__}", row)
    unknown = sorted(set(raw) - _FIELDS)
    missing = [k for k in ("image", "label") if k not in raw]
    if unknown or missing:
        raise PromptsFileError(path, f"unknown field(s) {', '.join(unknown)}" if unknown
                               else f"missing field(s) {', '.join(missing)}", row)
    image = Path(str(raw["image"]).strip()).name
    label = _int(raw["label"], "label", path, row)
    if not image or label < 1:
        raise PromptsFileError(path, "empty image" if not image else
                               f"label must be ≥ 1 (0 is background), got {label}", row)
    box = raw.get("box")
    if box is not None:
        if not isinstance(box, (list, tuple)) or len(box) != 4:
            raise PromptsFileError(path, f"box must be [x0, y0, x1, y1], got {box!r}", row)
        box = tuple(_int(v, "box value", path, row) for v in box)
        if box[0] > box[2] or box[1] > box[3]:
            raise PromptsFileError(path, f"box {list(box)} is inverted (need x0 ≤ x1, y0 ≤ y1)",
                                   row)
    points = raw.get("points") or []
    if not isinstance(points, list) or any(not isinstance(p, (list, tuple)) or len(p) != 2
                                           for p in points):
        raise PromptsFileError(path, f"points must be [[x, y], …], got {points!r}", row)
    pts = tuple((_int(x, "point x", path, row), _int(y, "point y", path, row)) for x, y in points)
    labels = raw.get("point_labels", [1] * len(pts))
    if not isinstance(labels, list) or len(labels) != len(pts) or any(
            _int(v, "point label", path, row) not in (0, 1) for v in labels):
        raise PromptsFileError(path, f"point_labels must be one 1 or 0 per point, got {labels!r}",
                               row)
    if box is None and not pts:
        raise PromptsFileError(path, "a prompt needs a box, points or both", row)
    return PicturePrompt(image, label, box, pts, tuple(int(v) for v in labels), row)


def _csv_rows(path: Path) -> list[dict[str, Any]]:
    from samtune.data.layouts.common import read_table

    try:
        table = read_table(path, ("image", "label"))
    except DataError as exc:
        raise PromptsFileError(path, exc.problem) from None
    rows = []
    for r in table:
        row: dict[str, Any] = {"image": r["image"], "label": r["label"]}
        if any(r.get(c) for c in ("x0", "y0", "x1", "y1")):
            row["box"] = [r.get(c, "") for c in ("x0", "y0", "x1", "y1")]
        if r.get("x") or r.get("y"):
            row["points"] = [[r.get("x", ""), r.get("y", "")]]
        rows.append(row)
    return rows


def read_picture_prompts(path: str | Path) -> list[PicturePrompt]:
    """Parse a picture prompts file (.json or .csv, module docstring); PromptsFileError naming
    the file and row for anything malformed."""
    rows = prompt_rows(path, _csv_rows)
    return [_parse(r, Path(path), n) for n, r in enumerate(rows, start=1)]


def check_picture_prompt(p: PicturePrompt, size: tuple[int, int], path: str | Path,
                         source: str) -> None:
    """The box and points must lie inside the picture of `size` (width, height) read from
    `source`; PromptsFileError naming the prompts file, the row and the problem otherwise."""
    w, h = size
    xs = [x for x, _ in p.points] + ([p.box[0], p.box[2]] if p.box else [])
    ys = [y for _, y in p.points] + ([p.box[1], p.box[3]] if p.box else [])
    if min(xs) < 0 or min(ys) < 0 or max(xs) >= w or max(ys) >= h:
        raise PromptsFileError(path, f"prompt outside the picture '{p.image}' ({source}: x "
                                     f"0–{w - 1}, y 0–{h - 1})", p.row)


def to_grid_prompt(p: PicturePrompt, size: tuple[int, int], resized: tuple[int, int]
                   ) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]:
    """A checked prompt on a picture of `size` (width, height) → on the slice grid whose content
    is `resized` (rows, cols): (box x0, y0, x1, y1 with x1/y1 exclusive, like
    `prompts_file.box_on_grid`; points P×2 at the scaled pixel centres; point labels P), each
    None when the prompt has none."""
    (w, h), (nh, nw) = size, resized
    sx, sy = nw / w, nh / h
    box = None if p.box is None else np.array(
        [p.box[0] * sx, p.box[1] * sy, (p.box[2] + 1) * sx, (p.box[3] + 1) * sy], np.float32)
    if not p.points:
        return box, None, None
    pts = (np.asarray(p.points, np.float64) + 0.5) * [sx, sy] - 0.5
    return box, pts.astype(np.float32), np.asarray(p.point_labels, np.int64)
