"""Box prompts on key slices, read from a file, checked against the volumes, and mapped exactly
onto the slice grid (what the model sees).

File format (`infer.prompts_file`), JSON or CSV, one row per box:

    JSON  [{"case_id": "Normal_5", "axis": "k", "slice": 24, "label": 1, "box": [10, 12, 30, 40]},
           ...]                         (or {"prompts": [...]})
    CSV   case_id,axis,slice,label,a0,b0,a1,b1
          Normal_5,k,24,1,10,12,30,40

- `case_id`: a case of the inference input (file stem for `infer.input`, the layout's id else).
- `axis`: the ORIGINAL voxel axis the key slice is taken across, "i", "j" or "k" (array order,
  as a viewer's voxel coordinates show them); `slice`: its index on that axis, 0-based.
- `box` [a0, b0, a1, b1]: voxel index ranges on the two other original axes in increasing
  axis order, both ends inclusive: axis k → a = i, b = j; axis j → a = i, b = k; axis i → a = j,
  b = k.
- `label`: the class id (≥ 1) written for this object.
Several rows per case (several objects, several key slices, even several axes) are allowed;
each key slice's boxes are propagated through the volume (see samtune.inference.infer).

A box goes to the slice grid by building it as a mask on the original slice and pushing it
through the very steps the images take (reorientation to RAS+, 2D view, nearest resize, pad);
its bounding box there is the prompt (`slicing.mask_to_original` maps that mask back exactly
when the slice is not shrunk; a box thinner than a pixel after shrinking keeps its continuous
extent).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from samtune.data.cases import DataError
from samtune.data.render import SliceGrid
from samtune.data.slicing import (
    CANONICAL_AXIS,
    original_axis,
    resize_labels,
    to_canonical,
    view_stack,
)

__all__ = ["BoxPrompt", "PromptsFileError", "read_prompts", "check_prompt", "convert_axis_for",
           "to_slice_grid", "box_on_grid"]
AXES = "ijk"
CSV_COLUMNS = ("case_id", "axis", "slice", "label", "a0", "b0", "a1", "b1")


class PromptsFileError(DataError):
    """A prompts file that cannot be used: names the file, the row (1-based) and the problem."""

    def __init__(self, path: str | Path, problem: str, row: int | None = None):
        super().__init__(path, problem if row is None else f"row {row}: {problem}")


@dataclass(frozen=True)
class BoxPrompt:
    """One row: a box on original slice `index` across original axis `axis` (0, 1, 2 = i, j, k);
    box = (a0, b0, a1, b1) inclusive voxel indices on the two other axes, in axis order."""

    case_id: str
    axis: int
    index: int
    label: int
    box: tuple[int, int, int, int]
    row: int

    @property
    def in_plane(self) -> tuple[int, int]:
        """The two original axes of the box, increasing."""
        a, b = (x for x in range(3) if x != self.axis)
        return a, b


def _int(value: Any, what: str, path: Path, row: int) -> int:
    if isinstance(value, bool):
        raise PromptsFileError(path, f"{what} must be an integer, got {value!r}", row)
    try:
        number = float(str(value).strip()) if isinstance(value, str) else float(value)
    except (TypeError, ValueError):
        raise PromptsFileError(path, f"{what} must be an integer, got {value!r}", row) from None
    if not np.isfinite(number) or number != int(number):
        raise PromptsFileError(path, f"{what} must be an integer, got {value!r}", row)
    return int(number)


def _parse_row(raw: Any, path: Path, row: int) -> BoxPrompt:
    if not isinstance(raw, dict):
        raise PromptsFileError(path, f"expected an object with case_id, axis, slice, label, box; "
                                     f"got {type(raw).__name__}", row)
    missing = [k for k in ("case_id", "axis", "slice", "label", "box") if k not in raw]
    if missing:
        raise PromptsFileError(path, f"missing field(s) {', '.join(missing)}", row)
    unknown = sorted(set(raw) - {"case_id", "axis", "slice", "label", "box"})
    if unknown:
        raise PromptsFileError(path, f"unknown field(s) {', '.join(unknown)}", row)
    case_id, axis = str(raw["case_id"]).strip(), str(raw["axis"]).strip().lower()
    if not case_id:
        raise PromptsFileError(path, "empty case_id", row)
    if axis not in ("i", "j", "k"):
        raise PromptsFileError(path, f"axis must be i, j or k, got {raw['axis']!r}", row)
    box = raw["box"]
    if not isinstance(box, (list, tuple)) or len(box) != 4:
        raise PromptsFileError(path, f"box must be [a0, b0, a1, b1], got {box!r}", row)
    a0, b0, a1, b1 = (_int(v, "box value", path, row) for v in box)
    if a0 > a1 or b0 > b1:
        raise PromptsFileError(path, f"box {[a0, b0, a1, b1]} is inverted (need a0 ≤ a1, "
                                     "b0 ≤ b1)", row)
    label = _int(raw["label"], "label", path, row)
    if label < 1:
        raise PromptsFileError(path, f"label must be ≥ 1 (0 is background), got {label}", row)
    return BoxPrompt(case_id, AXES.index(axis), _int(raw["slice"], "slice", path, row), label,
                     (a0, b0, a1, b1), row)


def prompt_rows(path: str | Path, csv_rows: Callable[[Path], list[dict[str, Any]]]
                ) -> list[dict[str, Any]]:
    """The raw rows of a prompts file: a JSON list (or {"prompts": [...]}), or `csv_rows(path)`
    for a .csv; PromptsFileError naming the file for a missing, malformed or empty one."""
    path = Path(path)
    if not path.is_file():
        raise PromptsFileError(path, "prompts file not found (infer.prompts_file)")
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(path.read_text())
        except (ValueError, UnicodeDecodeError) as exc:
            raise PromptsFileError(path, f"not valid JSON: {exc}") from None
        rows = data.get("prompts") if isinstance(data, dict) else data
        if not isinstance(rows, list):
            raise PromptsFileError(path, "expected a list of prompts (or {\"prompts\": [...]})")
    elif path.suffix.lower() == ".csv":
        rows = csv_rows(path)
    else:
        raise PromptsFileError(path, f"unknown prompts file type '{path.suffix}'; use .json or "
                                     ".csv")
    if not rows:
        raise PromptsFileError(path, "no prompts in the file")
    return rows


def _csv_box_rows(path: Path) -> list[dict[str, Any]]:
    from samtune.data.layouts.common import read_table

    try:
        table = read_table(path, CSV_COLUMNS)
    except DataError as exc:
        raise PromptsFileError(path, exc.problem) from None
    return [{**{k: r[k] for k in CSV_COLUMNS[:4]}, "box": [r["a0"], r["b0"], r["a1"], r["b1"]]}
            for r in table]


def read_prompts(path: str | Path) -> list[BoxPrompt]:
    """Parse a prompts file (.json or .csv, format in the module docstring); PromptsFileError
    naming the file and row for anything malformed."""
    rows = prompt_rows(path, _csv_box_rows)
    return [_parse_row(r, Path(path), n) for n, r in enumerate(rows, start=1)]


def check_prompt(p: BoxPrompt, shape: Sequence[int], path: str | Path, source: str) -> None:
    """The slice and box must lie inside the I×J×K volume `shape` (read from `source`);
    PromptsFileError naming the prompts file, the row and the problem otherwise."""
    n = int(shape[p.axis])
    if not 0 <= p.index < n:
        raise PromptsFileError(path, f"slice {p.index} is outside the volume of case "
                                     f"'{p.case_id}' ({source}: axis {AXES[p.axis]} has {n} "
                                     f"slices, 0–{n - 1})", p.row)
    (a, b), (a0, b0, a1, b1) = p.in_plane, p.box
    na, nb = int(shape[a]), int(shape[b])
    if a0 < 0 or b0 < 0 or a1 >= na or b1 >= nb:
        raise PromptsFileError(path, f"box {list(p.box)} is outside the slice of case "
                                     f"'{p.case_id}' ({source}: {AXES[a]} 0–{na - 1}, "
                                     f"{AXES[b]} 0–{nb - 1})", p.row)


def convert_axis_for(ornt: np.ndarray, axis: int) -> str:
    """The convert.axis name (axial/coronal/sagittal) whose slices are taken across original
    axis `axis` of a volume with orientation `ornt` (see slicing.to_canonical)."""
    canonical = int(np.asarray(ornt)[axis][0])
    return next(name for name, c in CANONICAL_AXIS.items() if c == canonical)


def _views(grid: SliceGrid, labels: np.ndarray) -> np.ndarray:
    """Source-grid labels → N×H×W views across the grid's slice axis (before resizing)."""
    canon, _, _ = to_canonical(labels, grid.volume.affine)
    return view_stack(canon, CANONICAL_AXIS[grid.cfg.axis])


def to_slice_grid(grid: SliceGrid, labels: np.ndarray,
                  ks: Sequence[int] | None = None) -> np.ndarray:
    """Labels on the source grid (I×J×K, or a slab one voxel thick across the grid's slice axis)
    → N×S×S on the slice grid (canonical slices `ks`, default all): reorient, view, nearest
    resize, pad bottom/right, exactly as the images."""
    views = _views(grid, labels)
    views = views if ks is None else views[list(ks)]
    if views.shape[1:3] != grid.slice_shape:
        raise ValueError(f"labels of shape {labels.shape} do not fit the slices "
                         f"{grid.slice_shape} of {grid.volume.case.case_id}")
    small = resize_labels(views, grid.geometry["resized_shape"])
    size = grid.cfg.img_size
    out = np.zeros((small.shape[0], size, size), small.dtype)
    out[:, :small.shape[1], :small.shape[2]] = small
    return out


def box_on_grid(p: BoxPrompt, grid: SliceGrid) -> tuple[int, np.ndarray, np.ndarray]:
    """A (checked) prompt on `grid`, whose slices must be across the prompt's axis →
    (canonical slice k, box mask S×S bool, box x0, y0, x1, y1 float32 with x1/y1 exclusive,
    slice-grid pixels, like `propagate.key_boxes`)."""
    o, flip = original_axis(grid.ornt, CANONICAL_AXIS[grid.cfg.axis])
    if o != p.axis:
        raise ValueError(f"grid slices are across axis {AXES[o]}, the prompt's across "
                         f"{AXES[p.axis]}")
    (a, b), (a0, b0, a1, b1) = p.in_plane, p.box
    shape = list(grid.volume.shape)
    plane = np.zeros((shape[a], shape[b]), bool)
    plane[a0:a1 + 1, b0:b1 + 1] = True
    mask = to_slice_grid(grid, np.expand_dims(plane, p.axis))[0]
    k = p.index if flip > 0 else shape[o] - 1 - p.index
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if rows.size:
        box = [cols[0], rows[0], cols[-1] + 1, rows[-1] + 1]
    else:  # a box thinner than a pixel after downscaling: its continuous extent
        view = _views(grid, np.expand_dims(plane, p.axis))[0]
        r, c = np.flatnonzero(view.any(1)), np.flatnonzero(view.any(0))
        (nh, nw), (h, w) = grid.geometry["resized_shape"], grid.slice_shape
        box = [c[0] * nw / w, r[0] * nh / h, (c[-1] + 1) * nw / w, (r[-1] + 1) * nh / h]
    return k, mask, np.asarray(box, np.float32)

