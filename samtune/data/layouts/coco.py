"""2D pictures with COCO annotations (Roboflow, finestSAM, samtune's export) or class-id masks.

Split folders `train/ valid/ val/ test/` (valid → split "val"), each with its annotation file and
pictures (beside it or in its `images/`), keep their split for `split.method: layout`; or one
such folder as root (split None, e.g. finestSAM's auto-split `images/` + `annotations.json`).
The annotation file is Roboflow's `_annotations.coco.json` or `annotations.json` (finestSAM /
MSSegSAM, and samtune's own export, whose `infer/` folder gives unlabelled cases). Masks:
`images/<stem>.png|jpg` + `masks/<stem>.png` whose pixel values are class ids. One case per
picture; an image record's `patient_id` and `group` (samtune's export has them) are kept.
Annotations are checked on read (ids, images, categories, polygons, RLE size and run lengths):
a corrupted one is a LayoutError naming the file and the annotation id.
"""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from samtune.config import DataConfig
from samtune.data.cases import Case, CaseCollection, LayoutError
from samtune.data.io_formats import PICTURE_EXTENSIONS, extension
from samtune.data.layouts.coco_rle import check_segmentation
from samtune.data.layouts.common import by_stem, inside, logger, require_root, skip

ANNOTATIONS = "_annotations.coco.json"  # Roboflow
ANNOTATION_FILES = (ANNOTATIONS, "annotations.json")  # + finestSAM / MSSegSAM / samtune export
SPLIT_FOLDERS = {"train": "train", "valid": "val", "val": "val", "test": "test"}
INFER_FOLDER = "infer"  # samtune's export: inference-only patients (no labels)


def load_coco(path: Path) -> dict[str, Any]:
    """Parse and check a COCO file: images (id, file_name), annotations pointing at known
    images and categories. LayoutError naming the file and the problem otherwise."""
    try:
        data = json.loads(path.read_text())
    except (ValueError, OSError) as exc:
        raise LayoutError(path, f"not valid COCO JSON ({exc})") from None
    if not isinstance(data, dict):
        raise LayoutError(path, "COCO file must hold a JSON object")
    for key in ("images", "annotations"):
        if not isinstance(data.get(key), list):
            raise LayoutError(path, f"COCO file has no '{key}' list")
    ids: dict[Any, tuple[Any, Any]] = {}  # image id → (height, width) as recorded
    for im in data["images"]:
        if not isinstance(im, dict) or "id" not in im or "file_name" not in im:
            raise LayoutError(path, f"image record {str(im)[:80]} needs 'id' and 'file_name'")
        if im["id"] in ids:
            raise LayoutError(path, f"duplicate image id {im['id']}")
        ids[im["id"]] = (im.get("height"), im.get("width"))
    cats = {}
    for c in data.get("categories", []):
        if not isinstance(c, dict) or not isinstance(c.get("id"), int):
            raise LayoutError(path, f"category {str(c)[:80]} has no integer 'id'")
        cats[c["id"]] = str(c.get("name", c["id"]))
    ann_ids: set = set()
    for n, a in enumerate(data["annotations"]):
        if not isinstance(a, dict) or a.get("image_id") not in ids:
            img = a.get("image_id") if isinstance(a, dict) else None
            raise LayoutError(path, f"annotation {str(a)[:80]} points at unknown image {img}")
        if a.get("id") is None or a["id"] in ann_ids:
            raise LayoutError(path, f"annotation #{n} (image {a['image_id']}): missing or "
                                    f"duplicate id {a.get('id')}")
        ann_ids.add(a["id"])
        cid = a.get("category_id")
        if not isinstance(cid, int) or isinstance(cid, bool) or (cats and cid not in cats):
            raise LayoutError(path, f"annotation {a.get('id')} has an unknown category "
                                    f"{a.get('category_id')}")
        problem = check_segmentation(a.get("segmentation"), ids[a["image_id"]])
        if problem:
            raise LayoutError(path, f"annotation {a['id']} (image {a['image_id']}): {problem}")
    data["_categories"] = cats
    return data


def annotation_file(folder: Path) -> Path | None:
    """The folder's COCO file (one of ANNOTATION_FILES); LayoutError when it holds both."""
    found = [folder / name for name in ANNOTATION_FILES if (folder / name).is_file()]
    if len(found) > 1:
        raise LayoutError(folder, f"holds both {found[0].name} and {found[1].name}; keep one")
    return found[0] if found else None


def _sources(root: Path) -> list[tuple[Path, Path, str | None]]:
    """(folder, annotation file, split) per split folder, else [(root, its file, None)]."""
    names = {**SPLIT_FOLDERS, INFER_FOLDER: INFER_FOLDER}
    splits = [(d, annotation_file(d), names[d.name.lower()]) for d in sorted(root.iterdir())
              if d.is_dir() and d.name.lower() in names]
    splits = [s for s in splits if s[1] is not None]
    if splits:
        return splits
    ann = annotation_file(root)
    return [(root, ann, None)] if ann is not None else []


def _labels(files: list[tuple[Path, dict[str, Any]]]) -> dict[int, str]:
    """Categories that have annotations in any file (drops Roboflow's empty super-category)."""
    used = {int(a["category_id"]) for _, d in files for a in d["annotations"]}
    if 0 in used:
        src = next(p for p, d in files if any(int(a["category_id"]) == 0
                                              for a in d["annotations"]))
        raise LayoutError(src, "annotations use category id 0, which is background here")
    names: dict[int, str] = {}
    for path, d in files:
        for cid, name in d["_categories"].items():
            if cid in used:
                if names.get(cid, name) != name:
                    logger.warning("%s: category %d is '%s' here but '%s' elsewhere; keeping "
                                   "'%s'", path, cid, name, names[cid], names[cid])
                names.setdefault(cid, name)
    return {cid: names.get(cid, str(cid)) for cid in sorted(used)}


def _masks(root: Path) -> CaseCollection:
    skipped: dict[str, str] = {}
    pictures, masks = [], []
    for folder, out in ((root / "images", pictures), (root / "masks", masks)):
        for p in sorted(folder.iterdir()):
            if p.name.startswith(".") or p.is_dir():
                continue
            if extension(p) in PICTURE_EXTENSIONS:
                out.append(p)
            else:
                skip(skipped, p, f"not a picture ({', '.join(PICTURE_EXTENSIONS)})")
    images, labels = by_stem(pictures, "picture"), by_stem(masks, "mask")
    cases = []
    for stem, img in images.items():
        if stem not in labels:
            skip(skipped, img, f"label missing: expected {root / 'masks' / (stem + '.png')}")
            continue
        cases.append(Case(stem, stem, (str(img),), str(labels[stem]), modality="RGB"))
    for stem, mask in labels.items():
        if stem not in images:
            skip(skipped, mask, f"label without image: expected a picture {stem}.* in images/")
    return CaseCollection("coco2d", str(root), cases, {}, skipped=skipped)


def coco2d(cfg: DataConfig) -> CaseCollection:
    """Roboflow COCO export (split folders or a single folder) or images/ + masks/."""
    root = require_root(cfg)
    sources = _sources(root)
    if not sources:
        if (root / "images").is_dir() and (root / "masks").is_dir():
            return _masks(root)
        raise LayoutError(root, f"expected train/ valid/ test/ folders with {ANNOTATIONS} or "
                                f"annotations.json, one of those files in the folder itself, or "
                                f"images/ + masks/")
    files = [(ann, load_coco(ann)) for _, ann, _ in sources]
    skipped: dict[str, str] = {}
    found = []  # (split folder, split, stem, picture, image record, annotation file)
    for (folder, _, split), (ann, data) in zip(sources, files):
        for im in data["images"]:
            pic = inside(folder, im["file_name"], ann)
            if not pic.is_file() and (folder / "images").is_dir():
                pic = inside(folder / "images", im["file_name"], ann)
            if not pic.is_file():
                skip(skipped, pic, f"picture listed in {ann} not found")
                continue
            found.append((folder, split, Path(pic.name).stem, pic, im, ann))
    splits_of = Counter()
    for stem, folder in {(f[2], f[0]) for f in found}:
        splits_of[stem] += 1
    cases = []
    for folder, split, stem, pic, im, ann in found:
        case_id = f"{folder.name}_{stem}" if splits_of[stem] > 1 else stem
        patient = str(im["patient_id"]) if im.get("patient_id") not in (None, "") else case_id
        label = None if split == INFER_FOLDER else str(ann)
        group = str(im["group"]) if im.get("group") not in (None, "") else None
        cases.append(Case(case_id, patient, (str(pic),), label, group=group,
                          modality="RGB", split=split, meta={"coco_image_id": im["id"]}))
    return CaseCollection("coco2d", str(root), cases, _labels(files), skipped=skipped)
