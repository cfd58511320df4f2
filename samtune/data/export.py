"""Per-split export of a COCO slice folder: the folder users open.

    out_dir/{train,val,test}/images/*.png       hard links into the COCO folder (else copies)
    out_dir/{train,val,test}/annotations.json   the split's images and their annotations; ids,
                                                categories and info unchanged; each image record's
                                                "split" set to the split it is in
    out_dir/infer/…                             the same for inference-only patients, if any
    out_dir/splits.json                         {"method", "patients", "cases", "summary"}
    out_dir/dataset.json                        fingerprint, categories, split counts, train stats

The export is built in a hidden sibling `.<name>.tmp-*` and renamed into place only when complete; a
previous export is swapped out at the very end and stays intact on any failure. Hard-linked PNGs
share their content with the COCO folder, so edit neither in place.
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import shutil
import tempfile
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Callable

from samtune.data.cases import Case, DataError
from samtune.data.datasets import read_coco_json
from samtune.data.split import INFER, SPLITS, split_summary

log = logging.getLogger(__name__)

MARKER = "dataset.json"  # written last; a folder without it is not a finished export


def _load_coco(coco_dir: Path) -> dict[str, Any]:
    path = coco_dir / "annotations.json"
    coco = read_coco_json(path)
    coco.setdefault("annotations", [])
    coco.setdefault("categories", [])
    for key in ("images", "annotations"):
        ids = Counter(rec.get("id") if isinstance(rec, dict) else None for rec in coco[key])
        bad = sorted((str(i) for i, n in ids.items() if n > 1 or i is None))
        if bad:
            raise DataError(path, f"{key}: missing or duplicate ids {bad[:10]}")
    return coco


def _route(coco: dict[str, Any], assignment: dict[str, str], coco_dir: Path) -> dict[str, list]:
    """Split → its image records, after checking ids, files, patients and case → patient."""
    path = coco_dir / "annotations.json"
    routed: dict[str, list] = {s: [] for s in SPLITS}
    unassigned, missing, patient_of = set(), [], {}
    names = Counter(rec.get("file_name") for rec in coco["images"])
    for rec in coco["images"]:
        name, pid, cid = rec.get("file_name"), rec.get("patient_id"), rec.get("case_id")
        if not name or names[name] > 1 or Path(name).name != name:
            raise DataError(path, f"image {rec['id']}: file_name {name!r} is empty, repeated or "
                                  "not a bare name inside images/")
        if pid is None or cid is None:
            raise DataError(path, f"image {rec['id']}: no patient_id/case_id")
        if patient_of.setdefault(str(cid), str(pid)) != str(pid):
            raise DataError(path, f"case {cid} has images of patients {patient_of[str(cid)]} "
                                  f"and {pid}")
        if not (coco_dir / "images" / name).is_file():
            missing.append(name)
        split = assignment.get(str(pid))
        if split is None:
            unassigned.add(str(pid))
        elif split not in (*SPLITS, INFER):
            raise DataError(None, f"patient {pid}: unknown split '{split}'")
        else:
            routed.setdefault(split, []).append(rec)
    if missing:
        raise DataError(coco_dir / "images",
                        f"{len(missing)} image file(s) missing: {missing[:10]}")
    if unassigned:
        raise DataError(path, f"{len(unassigned)} patient(s) have images but no split: "
                              f"{sorted(unassigned)[:10]}")
    known = {rec["id"] for rec in coco["images"]}
    orphans = [a["id"] for a in coco["annotations"] if a.get("image_id") not in known]
    if orphans:
        raise DataError(path, f"{len(orphans)} annotation(s) of unknown images: {orphans[:10]}")
    return routed


def _place(src: Path, dst: Path) -> bool:
    """Hard-link src to dst (True), or copy it where linking fails, e.g. across devices (False)."""
    try:
        os.link(src, dst)
        return True
    except OSError:
        shutil.copy2(src, dst)
        return False


def _write_json(path: Path, obj: Any, indent: int | None = 2) -> None:
    with open(path, "w") as f:
        json.dump(obj, f, indent=indent)
        f.flush()
        os.fsync(f.fileno())


def _check_loads(path: Path, n_images: int, n_annotations: int) -> None:
    """Load with pycocotools (its prints silenced) and check the counts survived."""
    from pycocotools.coco import COCO

    try:
        with contextlib.redirect_stdout(io.StringIO()):
            coco = COCO(str(path))
    except Exception as exc:  # pycocotools raises bare asserts/KeyErrors
        raise DataError(path, f"pycocotools cannot load it: {type(exc).__name__}: {exc}") from None
    if (len(coco.imgs), len(coco.anns)) != (n_images, n_annotations):
        raise DataError(path, f"pycocotools sees {len(coco.imgs)} images / {len(coco.anns)} "
                              f"annotations, expected {n_images} / {n_annotations}")


def _write_split(root: Path, coco: dict[str, Any], images: list, anns_of: dict[int, list],
                 src_dir: Path, split: str) -> dict[str, Any]:
    """Write root/<split>/{images/, annotations.json}; return its counts."""
    (root / split / "images").mkdir(parents=True)
    linked = sum(_place(src_dir / rec["file_name"], root / split / "images" / rec["file_name"])
                 for rec in images)
    anns = [a for rec in images for a in anns_of.get(rec["id"], [])]
    subset = {k: v for k, v in coco.items() if k not in ("images", "annotations")}
    subset["images"] = [{**rec, "split": split} for rec in images]
    subset["annotations"] = anns
    _write_json(root / split / "annotations.json", subset, indent=None)
    _check_loads(root / split / "annotations.json", len(images), len(anns))
    names = {c["id"]: c.get("name", str(c["id"])) for c in coco["categories"]}
    classes = {n: {"instances": 0, "slices": 0} for n in names.values()}
    slices = {(a.get("category_id"), a["image_id"]) for a in anns}
    for key, counter in (("instances", Counter(a.get("category_id") for a in anns)),
                         ("slices", Counter(cat for cat, _ in slices))):
        for cat, count in counter.items():
            name = names.get(cat, str(cat))
            classes.setdefault(name, {"instances": 0, "slices": 0})[key] = count
    return {"images": len(images), "annotations": len(anns),
            "patients": len({str(r["patient_id"]) for r in images}),
            "cases": len({str(r["case_id"]) for r in images}), "classes": classes,
            "linked": linked, "copied": len(images) - linked}


def _swap_in(tmp: Path, out_dir: Path) -> None:
    """Rename tmp to out_dir, replacing a previous export only once tmp is in place."""
    old = None
    if out_dir.exists() or out_dir.is_symlink():
        old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
        os.rename(out_dir, old / "export")
    try:
        os.rename(tmp, out_dir)
    except BaseException:
        if old is not None:
            os.rename(old / "export", out_dir)
            old.rmdir()
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _check_target(coco_dir: Path, out_dir: Path) -> None:
    src, dst = coco_dir.resolve(), out_dir.resolve()
    if dst == src or dst in src.parents:
        raise DataError(out_dir, f"export folder would replace the COCO folder {coco_dir}")
    if dst.is_dir() and any(dst.iterdir()) and not (dst / MARKER).is_file():
        raise DataError(out_dir, f"exists, is not empty and is not a samtune export (no {MARKER}); "
                                 "refusing to replace it")
    if dst.exists() and not dst.is_dir():
        raise DataError(out_dir, "exists and is not a folder")
    stale = sorted(str(p) for p in dst.parent.glob(f".{dst.name}.*-*"))
    if stale:
        log.warning("left by an interrupted export (safe to delete once no export runs): %s", stale)


def export_splits(coco_dir: Path, assignment: dict[str, str], out_dir: Path, *, fingerprint: str,
                  method: str, stats_fn: Callable[..., dict] | None = None) -> dict[str, Any]:
    """Write the per-split COCO folders, splits.json and dataset.json under out_dir (atomically).

    assignment: patient_id → train|val|test|infer (from `assign_splits`). Every image of
    `coco_dir/annotations.json` goes to exactly one split; an image whose patient has no split is a
    DataError. `stats_fn(coco_dir, image_ids=…)` computes pixel stats of the train images (default
    `samtune.data.convert.compute_stats`; `stats` is None when train is empty). Returns paths and
    counts per split.
    """
    coco_dir, out_dir = Path(coco_dir), Path(out_dir)
    if stats_fn is None:
        from samtune.data.convert import compute_stats as stats_fn
    coco = _load_coco(coco_dir)
    routed = _route(coco, assignment, coco_dir)
    _check_target(coco_dir, out_dir)
    anns_of: dict[int, list] = defaultdict(list)
    for a in coco["annotations"]:
        anns_of[a["image_id"]].append(a)
    cases = {str(r["case_id"]): Case(str(r["case_id"]), str(r["patient_id"]), (),
                                     group=r.get("group")) for r in coco["images"]}
    splits_of = defaultdict(set)
    for split, recs in routed.items():
        for r in recs:
            splits_of[str(r["patient_id"])].add(split)
    mixed = sorted(p for p, s in splits_of.items() if len(s) > 1)
    if mixed:  # cannot happen with a dict assignment; kept as the export's own guarantee
        raise DataError(coco_dir, f"patients in two splits: {mixed[:10]}")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        counts = {s: _write_split(tmp, coco, recs, anns_of, coco_dir / "images", s)
                  for s, recs in routed.items() if s in SPLITS or recs}
        exported = [r["id"] for recs in routed.values() for r in recs]
        if sorted(exported) != sorted(r["id"] for r in coco["images"]):
            raise DataError(coco_dir, "internal: not every image exported exactly once")
        train_ids = [r["id"] for r in routed["train"]]
        stats = stats_fn(coco_dir, image_ids=train_ids) if train_ids else None
        if stats is None:
            log.warning("%s: no train images; dataset.json stats is null", out_dir)
        case_split = {c: assignment[cases[c].patient_id] for c in sorted(cases)}
        _write_json(tmp / "splits.json", {
            "method": method, "patients": dict(sorted(assignment.items())), "cases": case_split,
            "summary": split_summary(assignment, list(cases.values()))})
        _write_json(tmp / MARKER, {
            "fingerprint": fingerprint, "method": method, "categories": coco["categories"],
            "splits": {s: {k: v for k, v in c.items() if k not in ("linked", "copied")}
                       for s, c in counts.items()},
            "stats": stats})
        _swap_in(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    linked, copied = (sum(c[k] for c in counts.values()) for k in ("linked", "copied"))
    if copied:
        log.warning("%d image(s) copied, not hard-linked (different filesystem?)", copied)
    log.info("exported %d images to %s: %s", len(exported), out_dir,
             {s: c["images"] for s, c in counts.items()})
    return {"out_dir": str(out_dir), "splits_json": str(out_dir / "splits.json"),
            "dataset_json": str(out_dir / MARKER), "linked": linked, "copied": copied,
            "splits": {s: {"path": str(out_dir / s),
                           "annotations_json": str(out_dir / s / "annotations.json"),
                           **{k: c[k] for k in ("images", "annotations", "patients", "cases")}}
                       for s, c in counts.items()}}
