"""Volumes → COCO slices: `images/*.png` + one `annotations.json`, parallel over volumes, atomic.

A worker loads ONE volume, converts it with whole-stack array operations (reorientation as
views, lookup-table window and one interpolate call per batch of slices, components per class
over the stack cropped to the labels' bounding box, one `pycocotools.mask.encode` per batch of
masks), writes its PNGs and its records (`.parts/<case>.json`). Ids are assigned afterwards
(cases by id, then slice index) while annotations.json is streamed, so the output is
byte-identical whatever the worker count. All is built in `out_dir.parent/.tmp-<name>-<random>`
and renamed to `out_dir` only after success.

Annotations: ONE per connected component per class per slice, 8-connected in-plane and never
across slices, on the output grid; components under `min_component_area` output pixels are
dropped and counted. Geometry and the way back to 3D: `samtune.data.slicing`.
"""
from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import shutil
import struct
import tempfile
import zlib
from collections import Counter
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import ExitStack
from pathlib import Path
from typing import Iterable

import numpy as np
from pycocotools import mask as mask_utils
from scipy import ndimage
from tqdm import tqdm

from samtune.config import ConvertConfig
from samtune.data.cases import Case, CaseCollection, DataError, Volume
from samtune.data.intensity import compute_stats, resolve_window
from samtune.data.render import SliceGrid
from samtune.data.slicing import CANONICAL_AXIS, nearest_indices, occupied, to_canonical, view_stack
from samtune.data.storage import StorageFullError, is_storage_full, tree_bytes

__all__ = ["convert_collection", "convert_volume", "compute_stats", "slice_annotations",
           "write_png"]
logger = logging.getLogger(__name__)

CONNECTIVITY = 8
_STRUCTURE = np.pad(np.ones((1, 3, 3), bool), ((1, 1), (0, 0), (0, 0)))  # 8-connected in-plane
_BATCH_PIXELS = 1 << 24  # slice pixels per vectorised batch (bounds a worker's extra memory)
_MASK_BYTES = 1 << 26  # bytes of full-size masks per pycocotools.mask.encode call


def convert_collection(collection: CaseCollection, cfg: ConvertConfig, out_dir: Path) -> dict:
    """Write the COCO folder `out_dir` (images/ + annotations.json) for every case; returns counts.

    Raises DataError naming the file when a case cannot be loaded or converted (no output is
    left, an existing `out_dir` stays as it was), StorageFullError (a DataError: the folder, the
    space needed, estimated, and free) when the disk fills, ValueError for an unknown window.
    """
    out_dir = Path(out_dir)
    resolve_window(cfg)
    ids = [c.case_id for c in collection.cases]
    if len(set(ids)) != len(ids) or any("/" in i or "\\" in i for i in ids):
        raise DataError(collection.root, "case ids must be unique and contain no path separator")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{out_dir.name}-", dir=out_dir.parent))
    try:
        for sub in ("images", ".parts"):
            (tmp / sub).mkdir()
        results = _run(collection.cases, cfg, sorted(collection.labels), tmp)
        summary = _write_coco(tmp, results, collection, cfg)
        shutil.rmtree(tmp / ".parts")
        old = Path(tempfile.mkdtemp(prefix=f".old-{out_dir.name}-", dir=out_dir.parent))
        if out_dir.exists():  # moved aside only now, after success
            out_dir.rename(old / out_dir.name)
        tmp.rename(out_dir)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException as exc:
        full = is_storage_full(exc) and _storage_full(tmp, len(collection.cases))
        shutil.rmtree(tmp, ignore_errors=True)
        if full:
            raise full from None
        raise
    logger.info("converted to %s: %s", out_dir, summary)
    return summary


def _storage_full(tmp: Path, n_cases: int) -> StorageFullError:
    """The disk under `tmp` filled: the estimate is what the finished cases wrote (PNGs and
    records), scaled to every case and doubled for annotations.json; a lower bound when no case
    had finished."""
    done = len(list((tmp / ".parts").glob("*.json"))) if (tmp / ".parts").is_dir() else 0
    written = tree_bytes(tmp)
    needed = written * 2 if not done else int(written / done * n_cases * 1.1) + tree_bytes(
        tmp / ".parts") // done * n_cases
    return StorageFullError(tmp.parent, f"converting {n_cases} cases to COCO slices in the "
                            f"scratch folder {tmp.name} ({done} of {n_cases} cases done)",
                            needed, at_least=not done)


def _run(cases: list[Case], cfg: ConvertConfig, classes: list[int], tmp: Path) -> list[dict]:
    """Convert every case: in this process for one worker, else in a pool of `cfg.workers`
    processes started by a forkserver (no fork of a threaded parent; modules preloaded once)."""
    tasks = [(case, cfg, classes, str(tmp)) for case in cases]
    results = []
    with tqdm(total=len(tasks), desc="convert", unit="vol") as bar, ExitStack() as stack:
        if cfg.workers == 1 or len(tasks) <= 1:
            it: Iterable[dict] = map(_convert_case, tasks)
        else:
            ctx = multiprocessing.get_context("forkserver")
            ctx.set_forkserver_preload([__name__])
            pool = stack.enter_context(ProcessPoolExecutor(min(cfg.workers, len(tasks)), ctx))
            stack.callback(pool.shutdown, cancel_futures=True)  # on error: drop queued cases
            it = (f.result() for f in as_completed([pool.submit(_convert_case, t) for t in tasks]))
        for res in it:
            if "error" in res:
                raise DataError(*res["error"])
            results.append(res)
            bar.update()
    return sorted(results, key=lambda r: r["case_id"])


def _convert_case(task: tuple[Case, ConvertConfig, list[int], str]) -> dict:
    """Worker: load one case, convert it, write its records to `.parts/<case_id>.json`, return
    counts only. A DataError comes back as {"error": [path, problem]} (it does not pickle)."""
    from samtune.data import io as data_io

    case, cfg, classes, tmp = task
    try:  # the reader names the file in a DataError (VolumeReadError) for any unreadable file
        res = convert_volume(data_io.load_volume(case), cfg, classes, Path(tmp) / "images")
    except DataError as exc:
        return {"case_id": case.case_id, "error": [exc.path, exc.problem]}
    part = {"images": res["images"], "annotations": res["annotations"]}
    (Path(tmp) / ".parts" / f"{case.case_id}.json").write_text(json.dumps(part))
    return {"case_id": case.case_id, "labelled": res["labelled"], "dropped": res["dropped"]}


def write_png(path: Path, pixels: np.ndarray, level: int = 1) -> None:
    """Write H×W (grey) or H×W×3 (RGB) uint8 as an 8-bit PNG.

    Every row is Sub-filtered (vectorised) and deflated with zlib `level`; level 1 uses zlib's
    run-length strategy. Measured on 512² CT slices: ~2.5 ms and ~10 % smaller than Pillow's
    compress_level=1 (~8 ms, most of it Pillow's per-row adaptive filter choice).
    """
    h, w = pixels.shape[:2]
    c = 1 if pixels.ndim == 2 else pixels.shape[2]
    rows = np.ascontiguousarray(pixels).reshape(h, w * c)
    raw = np.empty((h, w * c + 1), dtype=np.uint8)
    raw[:, 0] = 1  # filter type Sub: byte − byte of the previous pixel
    raw[:, 1:c + 1] = rows[:, :c]
    np.subtract(rows[:, c:], rows[:, :-c], out=raw[:, c + 1:])
    z = zlib.compressobj(level, zlib.DEFLATED, 15, 9, zlib.Z_RLE if level == 1 else 0)
    chunks = [(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0 if c == 1 else 2, 0, 0, 0)),
              (b"IDAT", z.compress(raw.tobytes()) + z.flush()), (b"IEND", b"")]
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"".join(
        struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body))
        for tag, body in chunks))


def convert_volume(vol: Volume, cfg: ConvertConfig, classes: list[int], images: Path) -> dict:
    """Convert one loaded volume: write its PNGs into `images`; return {"case_id", "labelled",
    "images": [image record without id], "annotations": [[annotation without id/image_id] per
    image], "dropped": number of components under cfg.min_component_area}."""
    case, label = vol.case, vol.label
    grid = SliceGrid.build(vol, cfg)
    n, (h, w) = grid.n_slices, grid.slice_shape
    anns, dropped = slice_annotations(vol, cfg, classes, grid.geometry) if label is not None \
        else ({}, 0)
    selected = _select_slices(n, anns, label is not None, cfg, case.case_id)
    records, out_anns = [], []
    step = max(1, _BATCH_PIXELS // max(h * w, cfg.img_size ** 2))
    for b in range(0, len(selected), step):
        batch = selected[b:b + step]
        for pixels, k in zip(grid.images(batch), batch):
            t = grid.transform(k)
            name = f"{case.case_id}_{cfg.axis}_{t['slice_index']:04d}.png"
            write_png(images / name, pixels[..., 0] if pixels.shape[-1] == 1 else pixels,
                      cfg.png_compression)
            records.append({
                "file_name": name, "width": cfg.img_size, "height": cfg.img_size,
                "case_id": case.case_id, "patient_id": case.patient_id, "group": case.group,
                "split": case.split, "modality": case.modality, "axis": cfg.axis,
                **{f: t[f] for f in ("slice_index", "spacing", "original_shape", "affine")},
                "transform": t, "has_label": label is not None,
                "n_instances": len(anns.get(k, [])), "intensity": grid.params.to_dict()})
            out_anns.append(anns.get(k, []))
    order = np.argsort([r["slice_index"] for r in records], kind="stable")
    return {"case_id": case.case_id, "images": [records[i] for i in order], "dropped": dropped,
            "annotations": [out_anns[i] for i in order], "labelled": label is not None}


def slice_annotations(vol: Volume, cfg: ConvertConfig, classes: list[int], geom: dict, *,
                      min_area: int | None = None) -> tuple[dict[int, list[dict]], int]:
    """Annotations per canonical slice index (only slices with ≥ 1 kept), and the number of
    components dropped for being smaller than `min_area` output pixels (None:
    cfg.min_component_area, the training export's filter; evaluation passes 0 to keep all).

    Components are found on the output grid, inside the in-plane bounding box of all labels."""
    min_area = cfg.min_component_area if min_area is None else min_area
    canon, _, ornt = to_canonical(vol.label, vol.affine)
    a = CANONICAL_AXIS[cfg.axis]
    fg, rows, cols = occupied(vol.label, ornt, a)
    if not fg.size:
        return {}, 0
    views = view_stack(canon, a)
    (nh, nw), size = geom["resized_shape"], cfg.img_size
    src_r, src_c = nearest_indices(views.shape[1], nh), nearest_indices(views.shape[2], nw)
    r_out = np.flatnonzero((src_r >= rows[0]) & (src_r <= rows[-1]))  # output rows in the box
    c_out = np.flatnonzero((src_c >= cols[0]) & (src_c <= cols[-1]))
    if not r_out.size or not c_out.size:  # every label pixel falls between output pixels
        return {}, 0
    r0, c0 = int(r_out[0]), int(c_out[0])
    anns: dict[int, list[dict]] = {}
    dropped = 0
    step = max(1, _BATCH_PIXELS // (len(r_out) * len(c_out)))
    for idx in (fg[b:b + step] for b in range(0, len(fg), step)):
        stack = views[np.ix_(idx, src_r[r_out], src_c[c_out])]
        if stack.dtype.kind == "f":
            stack = np.rint(stack).astype(np.int64)
        for value in classes:
            comp, n_comp = ndimage.label(stack == value, structure=_STRUCTURE)
            areas = np.bincount(comp.ravel(), minlength=n_comp + 1)[1:]
            objects = ndimage.find_objects(comp)
            keep = [i for i in range(n_comp) if areas[i] >= min_area]
            dropped += n_comp - len(keep)
            per_call = max(1, _MASK_BYTES // size ** 2)
            for c in range(0, len(keep), per_call):
                chunk = keep[c:c + per_call]
                buf = np.zeros((len(chunk), size, size), dtype=np.uint8)  # mask × col × row
                for m, i in enumerate(chunk):
                    zs, ys, xs = objects[i]
                    buf[m, xs.start + c0:xs.stop + c0, ys.start + r0:ys.stop + r0] = \
                        (comp[zs.start, ys, xs] == i + 1).T
                rles = mask_utils.encode(buf.transpose(2, 1, 0))  # H×W×N, Fortran order
                for rle, i, bbox in zip(rles, chunk, mask_utils.toBbox(rles)):
                    slice_anns = anns.setdefault(int(idx[objects[i][0].start]), [])
                    slice_anns.append({
                        "category_id": int(value),
                        "segmentation": {"size": [size, size], "counts": rle["counts"].decode()},
                        "area": int(areas[i]), "bbox": [float(v) for v in bbox], "iscrowd": 0,
                        "instance_index": sum(x["category_id"] == value for x in slice_anns)})
    return anns, dropped


def _select_slices(n: int, anns: dict[int, list[dict]], labelled: bool, cfg: ConvertConfig,
                   case_id: str) -> list[int]:
    """Canonical slice indices to export under cfg.empty_slices (unlabelled cases: all)."""
    if not labelled or cfg.empty_slices == "all":
        return list(range(n))
    annotated = sorted(anns)
    if cfg.empty_slices == "none":
        return annotated
    empty = np.setdiff1d(np.arange(n), annotated)
    count = int(np.floor(cfg.empty_fraction * len(empty) + 0.5))
    seed = int.from_bytes(hashlib.sha256(case_id.encode()).digest()[:8], "little")
    chosen = np.random.default_rng([cfg.seed, seed]).choice(empty, size=count, replace=False)
    return sorted(annotated + [int(k) for k in chosen])


def _write_coco(tmp: Path, results: list[dict], collection: CaseCollection,
                cfg: ConvertConfig) -> dict:
    """Stream `tmp/annotations.json` from the per-case parts (ids: cases by id, then slice
    index), holding one case's records at a time; returns the summary counts."""
    info = {"description": "samtune volume → COCO slices", "layout": collection.layout,
            "convert_config": cfg.model_dump(mode="json", exclude={"workers"}),
            "collection_hash": collection.content_hash(), "connectivity": CONNECTIVITY}
    categories = [{"id": v, "name": name, "supercategory": "structure"}
                  for v, name in sorted(collection.labels.items())]
    per_class = {v: {"images": 0, "instances": 0} for v in collection.labels}
    empty = 0
    with open(tmp / "annotations.json", "w") as f:
        f.write(json.dumps({"info": info, "categories": categories}, separators=(",", ":"))[:-1])
        for key in ("images", "annotations"):
            f.write(f',"{key}":[')
            image_id = ann_id = 0
            for res in results:
                part = json.loads((tmp / ".parts" / f"{res['case_id']}.json").read_text())
                for rec, anns in zip(part["images"], part["annotations"]):
                    image_id += 1
                    if key == "images":
                        items = [{"id": image_id, **rec}]
                        empty += not anns
                        for v, count in Counter(a["category_id"] for a in anns).items():
                            per_class[v]["images"] += 1
                            per_class[v]["instances"] += count
                    else:
                        items = [{"id": ann_id + n + 1, "image_id": image_id, **a}
                                 for n, a in enumerate(anns)]
                        ann_id += len(anns)
                    for item in items:
                        f.write(("," if item["id"] > 1 else "")
                                + json.dumps(item, separators=(",", ":")))
            f.write("]")
        f.write("}")
    return {"cases": len(results), "unlabelled_cases": sum(not r["labelled"] for r in results),
            "images": image_id, "annotations": ann_id, "empty_images": empty,
            "dropped_small_components": sum(r["dropped"] for r in results),
            "per_class": {collection.labels[v]: c for v, c in sorted(per_class.items())}}
