"""Benchmark: samtune's volume → COCO conversion against a naive converter and the I/O floor.

Synthetic coronary-CTA phantoms (int16 gzip NIfTI + uint8 labels, 512×512×256 by default) are
written to a temporary folder, then, with the same settings (img_size, channels 1, empty slices
none, CTA window, 8-connected components, min area 5):
  (a) naive: one process, the way the field's scripts do it: nibabel get_fdata(), a loop over
      slices (window the slice, PIL resize, PNG with Pillow's default compression), per class
      per component one pycocotools encode call, json.dump at the end;
  (b) floor: load image and label with nibabel into memory (np.asanyarray(img.dataobj));
  (c) samtune: convert_collection with 2 workers, in a fresh subprocess per run; the peak
      memory of that run is the peak over time of the summed RSS of the subprocess and all its
      descendants (main, forkserver, workers), sampled with psutil every 20 ms. Summed RSS counts
      shared library pages once per process, so it overstates; the summed PSS (shared pages
      split between their users) is printed beside it. The target is on the RSS ratio.
Only min(N, --distinct) phantoms are generated; the other files are hard links to them (the
work per file is the same, generation is the slow part). Ends with one JSON line.
Usage: python bench/convert.py [--n-small 2] [--n-large 20] [--n-naive 5] [--quick] [--keep]
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
logger = logging.getLogger("bench.convert")
IMG_SIZE, CHANNELS, EMPTY, WINDOW, MIN_AREA = 512, 1, "none", (300.0, 800.0), 5


def fallback_phantom(shape, seed):
    """Vectorised stand-in if samtune.data.phantoms is missing: body + bright tubes."""
    rng = np.random.default_rng(seed)
    i, j = np.ogrid[:shape[0], :shape[1]]
    body = ((i - shape[0] / 2) ** 2 / (0.45 * shape[0]) ** 2
            + (j - shape[1] / 2) ** 2 / (0.35 * shape[1]) ** 2) < 1
    image = np.where(body, 40, -1000).astype(np.int16)[:, :, None].repeat(shape[2], 2)
    image += rng.normal(0, 20, shape).astype(np.int16)
    label = np.zeros(shape, np.uint8)
    for t in range(4):
        k = np.arange(shape[2])
        ci = (shape[0] * (0.35 + 0.1 * t) + 10 * np.sin(k / 15 + t)).astype(int)
        cj = (shape[1] * 0.5 + 12 * np.cos(k / 20 + t)).astype(int)
        for d in range(-2, 3):
            label[np.clip(ci + d, 0, shape[0] - 1), cj, k] = 1
    image[label == 1] = 400
    return image, label


def make_dataset(root: Path, n: int, shape, distinct: int) -> list[tuple[str, str]]:
    import nibabel as nib
    try:
        from samtune.data.phantoms import make_phantom
    except ImportError:
        make_phantom = None
    spacing = (0.4, 0.4, 0.625)
    affine = np.diag([*spacing, 1.0])
    pairs = []
    for c in range(n):
        img, lab = root / f"case{c:03d}.nii.gz", root / f"case{c:03d}_label.nii.gz"
        if c < distinct:
            if make_phantom is not None:
                image, label = make_phantom(shape, spacing, seed=c, diseased=bool(c % 2))
            else:
                image, label = fallback_phantom(shape, c)
            nib.save(nib.Nifti1Image(image, affine), img)
            nib.save(nib.Nifti1Image(label, affine), lab)
        else:
            os.link(root / f"case{c % distinct:03d}.nii.gz", img)
            os.link(root / f"case{c % distinct:03d}_label.nii.gz", lab)
        pairs.append((str(img), str(lab)))
    return pairs


def naive_convert(pairs: list[tuple[str, str]], out: Path) -> None:
    """The per-slice converter of typical scripts."""
    import nibabel as nib
    from PIL import Image
    from pycocotools import mask as mask_utils
    from scipy import ndimage

    (out / "images").mkdir(parents=True)
    coco = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "artery"}]}
    lo, hi = WINDOW[0] - WINDOW[1] / 2, WINDOW[0] + WINDOW[1] / 2
    for c, (img_path, lab_path) in enumerate(pairs):
        image = nib.load(img_path).get_fdata()
        label = nib.load(lab_path).get_fdata()
        for k in range(image.shape[2]):
            anns = []
            for value in (1,):
                comps, n = ndimage.label(label[:, :, k] == value, structure=np.ones((3, 3)))
                for i in range(1, n + 1):
                    m = Image.fromarray(((comps == i).T * 255).astype(np.uint8))
                    m = np.asarray(m.resize((IMG_SIZE, IMG_SIZE), Image.NEAREST)) > 0
                    if m.sum() < MIN_AREA:
                        continue
                    rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
                    anns.append({"category_id": value, "area": int(mask_utils.area(rle)),
                                 "bbox": mask_utils.toBbox(rle).tolist(), "iscrowd": 0,
                                 "segmentation": {"size": rle["size"],
                                                  "counts": rle["counts"].decode()}})
            if not anns:
                continue
            sl = np.clip((image[:, :, k].T - lo) / (hi - lo) * 255, 0, 255).astype(np.uint8)
            pic = Image.fromarray(sl).resize((IMG_SIZE, IMG_SIZE), Image.BILINEAR)
            name = f"case{c:03d}_{k:04d}.png"
            pic.save(out / "images" / name)
            image_id = len(coco["images"]) + 1
            coco["images"].append({"id": image_id, "file_name": name, "width": IMG_SIZE,
                                   "height": IMG_SIZE})
            for a in anns:
                coco["annotations"].append({"id": len(coco["annotations"]) + 1,
                                            "image_id": image_id, **a})
    with open(out / "annotations.json", "w") as f:
        json.dump(coco, f)


def floor_load(pairs: list[tuple[str, str]]) -> None:
    import nibabel as nib

    for img_path, lab_path in pairs:
        image = np.asanyarray(nib.load(img_path).dataobj)
        label = np.asanyarray(nib.load(lab_path).dataobj)
        del image, label


def timed(fn, *args) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of fn(*args)."""
    w0, c0 = time.perf_counter(), time.process_time()
    fn(*args)
    return time.perf_counter() - w0, time.process_time() - c0


def child(manifest: str, out: str, result: str) -> None:
    """Subprocess entry: convert the manifest's cases with samtune; write seconds + summary."""
    from samtune.config import ConvertConfig
    from samtune.data.cases import Case, CaseCollection
    from samtune.data.convert import convert_collection

    pairs = json.loads(Path(manifest).read_text())
    cases = [Case(Path(i).name.split(".")[0], f"p{n}", (i,), lab) for n, (i, lab) in
             enumerate(pairs)]
    col = CaseCollection("bench", str(Path(pairs[0][0]).parent), cases, {1: "artery"})
    cfg = ConvertConfig(img_size=IMG_SIZE, channels=CHANNELS, empty_slices=EMPTY, workers=2,
                        window_level=WINDOW[0], window_width=WINDOW[1], min_component_area=MIN_AREA)
    t0 = time.perf_counter()
    summary = convert_collection(col, cfg, Path(out))
    Path(result).write_text(json.dumps({"seconds": time.perf_counter() - t0, "summary": summary}))


def run_samtune(pairs: list[tuple[str, str]], work: Path, tag: str) -> dict:
    """Run `child` in a fresh interpreter; sample the process tree's summed RSS."""
    import psutil

    manifest, result = work / f"{tag}.json", work / f"{tag}.result.json"
    manifest.write_text(json.dumps(pairs))
    env = dict(os.environ, PYTHONPATH=f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, __file__, "--child", str(manifest),
                             str(work / f"{tag}_out"), str(result)], env=env)
    root, peak, peak_pss, cpu = psutil.Process(proc.pid), 0, 0, {}
    while proc.poll() is None:
        rss = pss = 0
        try:
            for p in [root] + root.children(recursive=True):
                try:
                    mem, times = p.memory_full_info(), p.cpu_times()
                    rss, pss = rss + mem.rss, pss + getattr(mem, "pss", mem.rss)
                    cpu[p.pid] = times.user + times.system
                except psutil.Error:
                    pass
        except psutil.Error:
            pass
        peak, peak_pss = max(peak, rss), max(peak_pss, pss)
        time.sleep(0.02)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"samtune run {tag} failed with exit code {proc.returncode}")
    out = json.loads(result.read_text())
    return {"seconds": out["seconds"], "wall": wall, "cpu": sum(cpu.values()),
            "peak_rss_mb": peak / 2**20,
            "peak_pss_mb": peak_pss / 2**20, "summary": out["summary"]}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n-small", type=int, default=2)
    parser.add_argument("--n-large", type=int, default=20)
    parser.add_argument("--n-naive", type=int, default=5, help="volumes for the naive converter")
    parser.add_argument("--distinct", type=int, default=3, help="distinct phantoms generated")
    parser.add_argument("--quick", action="store_true", help="128×128×64 volumes, smoke run")
    parser.add_argument("--workdir", type=Path, default=None, help="default: a temp folder")
    parser.add_argument("--keep", action="store_true", help="keep the generated data and outputs")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(message)s")
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    if args.child:
        child(*args.child)
        return
    shape = (128, 128, 64) if args.quick else (512, 512, 256)
    n_large = max(args.n_large, args.n_small, args.n_naive)
    work = Path(tempfile.mkdtemp(prefix="samtune-bench-convert-", dir=args.workdir))
    logger.info("settings: volumes %s int16 gzip NIfTI; img_size %d, channels %d, empty_slices "
                "%s, window L%g/W%g, min_component_area %d; samtune workers 2; naive on %d "
                "volume(s), floor and samtune on %d; %d distinct phantoms; work dir %s",
                "×".join(map(str, shape)), IMG_SIZE, CHANNELS, EMPTY, *WINDOW, MIN_AREA,
                args.n_naive, n_large, min(args.distinct, n_large), work)
    logger.info("load average at the start: %s", os.getloadavg())
    t0 = time.perf_counter()
    pairs = make_dataset(work, n_large, shape, max(1, args.distinct))
    logger.info("generated %d volumes in %.1f s", n_large, time.perf_counter() - t0)
    floor, floor_cpu = (x / n_large for x in timed(floor_load, pairs))
    logger.info("floor (nibabel load of image + label): %.3f s/vol (CPU %.3f)", floor, floor_cpu)
    naive, naive_cpu = (x / args.n_naive for x in
                        timed(naive_convert, pairs[:args.n_naive], work / "naive_out"))
    logger.info("naive converter: %.3f s/vol (CPU %.3f; %d volumes)", naive, naive_cpu,
                args.n_naive)
    small = run_samtune(pairs[:args.n_small], work, "small")
    large = run_samtune(pairs, work, "large")
    sam = large["seconds"] / n_large
    for n, r in ((args.n_small, small), (n_large, large)):
        logger.info("samtune N=%d: %.3f s/vol (CPU of the process tree %.3f s/vol; wall incl. "
                    "interpreter start %.1f s), peak summed RSS %.0f MB (PSS %.0f MB); %s", n,
                    r["seconds"] / n, r["cpu"] / n, r["wall"], r["peak_rss_mb"],
                    r["peak_pss_mb"], r["summary"])
    logger.info("load average at the end: %s (the figures are wall times; CPU contention from "
                "other processes slows the 2-worker run most)", os.getloadavg())
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps({
        "speedup_vs_naive": round(naive / sam, 2), "ratio_to_floor": round(sam / floor, 2),
        "rss_ratio_20_vs_2": round(large["peak_rss_mb"] / small["peak_rss_mb"], 3),
        "samtune_s_per_vol": round(sam, 3), "naive_s_per_vol": round(naive, 3),
        "floor_s_per_vol": round(floor, 3),
        "samtune_cpu_s_per_vol": round(large["cpu"] / n_large, 3),
        "naive_cpu_s_per_vol": round(naive_cpu, 3), "floor_cpu_s_per_vol": round(floor_cpu, 3),
        "samtune_peak_rss_mb_small": round(small["peak_rss_mb"]),
        "samtune_peak_rss_mb_large": round(large["peak_rss_mb"]),
        "samtune_peak_pss_mb_small": round(small["peak_pss_mb"]),
        "samtune_peak_pss_mb_large": round(large["peak_pss_mb"]), "n_small": args.n_small,
        "n_large": n_large, "n_naive": args.n_naive, "shape": list(shape), "img_size": IMG_SIZE,
        "channels": CHANNELS, "empty_slices": EMPTY, "workers": 2, "quick": args.quick}))


if __name__ == "__main__":
    main()
