"""Inference on 2D pictures: `infer.input` a PNG/JPG file or a folder of them → per picture a
mask PNG of class ids and an overlay PNG, plus inference.json.

    if is_picture_input(cfg.infer.input):
        found = find_pictures(cfg.infer.input)     # before the model loads: fail fast
        summary = infer_pictures(loaded, found, cfg.infer, cfg.convert, cfg.output_dir)

A picture goes through the volume path as a one-slice volume (i = column, j = row, modality RGB,
`samtune.data.io`): the slice grid of convert.img_size, then back to the picture's pixels exactly
(`reassemble`). Modes as for volumes (`infer.mode`): automatic (the point-grid generator,
`samtune.inference.automatic`), or prompts from `infer.prompts_file` in pixel coordinates
(`samtune.inference.picture_prompts`; every row is checked first, a picture it does not name
is skipped). Objects of one class are united; where classes overlap the more probable wins.

Outputs under `out_dir/inference`: masks/<stem>.png (class ids as grey values: 8-bit, 16-bit
when a label exceeds 255) and overlays/<stem>.png (each class blended in PALETTE[label - 1] at
`infer.overlay_opacity`: out = round((1 - a) × picture + a × colour)), written atomically, and
out_dir/inference.json (per picture: source, mask, overlay, size, pixels per label, or its error
or why it was skipped). A picture that fails does not stop the others; when all fail,
InferenceError after inference.json is written.
"""
from __future__ import annotations

import logging
from collections import defaultdict
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from tqdm import tqdm

from samtune.atomic import atomic_write
from samtune.config import ConvertConfig, InferConfig
from samtune.data import io as data_io
from samtune.data.cases import Case, DataError
from samtune.data.intensity import apply_intensity
from samtune.data.io_formats import PICTURE_EXTENSIONS, VOLUME_EXTENSIONS, extension
from samtune.data.layouts.common import by_stem
from samtune.data.render import SliceGrid
from samtune.figures import overlay_masks
from samtune.inference.automatic import predict_automatic
from samtune.inference.infer import finish_summary
from samtune.inference.model_source import LoadedModel
from samtune.inference.picture_prompts import (
    PicturePrompt,
    check_picture_prompt,
    read_picture_prompts,
    to_grid_prompt,
)
from samtune.inference.predictor import SlicePredictor
from samtune.inference.prompts_file import PromptsFileError
from samtune.inference.reassemble import label_slice, reassemble
from samtune.models.base import Prompts
from samtune.models.prompts import select_best

__all__ = ["is_picture_input", "find_pictures", "overlay", "infer_pictures"]
log = logging.getLogger(__name__)


def is_picture_input(path: str | Path | None) -> bool:
    """Whether `infer.input` names pictures: a file (any file that is not a volume: a
    non-picture then gets its error from `find_pictures`) or a folder holding pictures and no
    volumes."""
    if path is None:
        return False
    p = Path(path)
    if p.is_file() or not p.exists():
        return extension(p) not in VOLUME_EXTENSIONS
    names = [extension(f) for f in p.iterdir() if f.is_file() and not f.name.startswith(".")]
    return any(e in PICTURE_EXTENSIONS for e in names) and not any(
        e in VOLUME_EXTENSIONS for e in names)


def find_pictures(path: str | Path) -> tuple[dict[str, Path], dict[str, str]]:
    """stem → picture file of `path` (a picture, or a folder of them, not recursive), and the
    other files of the folder → why they were skipped. DataError naming the file for a file
    that is not a picture or does not exist, the folder when it holds none; LayoutError for two
    pictures of one stem."""
    p = Path(path).absolute()
    kinds = ", ".join(PICTURE_EXTENSIONS)
    if p.is_file():
        if extension(p) not in PICTURE_EXTENSIONS:
            raise DataError(p, f"not a picture (infer.input takes {kinds} files, a folder of "
                               "them, or a folder of volumes)")
        return {p.name[: -len(extension(p))]: p}, {}
    if not p.is_dir():
        raise DataError(p, "infer.input does not exist")
    files = sorted(f for f in p.iterdir() if f.is_file() and not f.name.startswith("."))
    skipped = {str(f): f"not a picture ({kinds})" for f in files
               if extension(f) not in PICTURE_EXTENSIONS}
    for f, why in skipped.items():
        log.warning("skipped %s: %s", f, why)
    pictures = by_stem([f for f in files if extension(f) in PICTURE_EXTENSIONS], "picture")
    if not pictures:
        raise DataError(p, f"no pictures ({kinds}) in the folder")
    return pictures, skipped


def overlay(picture: np.ndarray, mask: np.ndarray, opacity: float) -> np.ndarray:
    """H×W×3 uint8 picture, H×W class ids → H×W×3 uint8, class c blended in PALETTE[c - 1] at
    `opacity` (0: the picture, 1: the colour)."""
    top = int(mask.max())
    masks = np.stack([mask == c for c in range(1, top + 1)]) if top else None
    return overlay_masks(picture, masks, alpha=opacity)


def _prompted(predictor: SlicePredictor, grid: SliceGrid, rows: Sequence[PicturePrompt]
              ) -> dict[int, np.ndarray]:
    """The rows' objects decoded against the picture's one embedding → {0: S×S labels}."""
    size = grid.volume.shape[:2]  # (width, height): i is the column
    emb = predictor.encode(grid.images([0]))
    probs = []
    for p in rows:
        box, points, labels = (None if a is None else torch.as_tensor(a, device=predictor.device)
                               for a in to_grid_prompt(p, size, grid.geometry["resized_shape"]))
        prompts = predictor.to_model_prompts(Prompts(
            boxes=None if box is None else box[None],
            points=None if points is None else points[None],
            point_labels=None if labels is None else labels[None]))
        multimask = box is None and len(p.points) == 1  # one point is ambiguous (SAM's advice)
        logits, iou = predictor.model.decode(emb, 0, prompts, multimask=multimask)
        if logits.shape[1] > 1:
            logits, _ = select_best(logits, iou)
        probs.append(predictor.to_slice_grid(logits.float()).cpu().numpy()[0])
    labels_of = np.array([p.label for p in rows], np.int64)
    return {0: label_slice(np.stack(probs), labels_of, predictor.slice_size)}


def _write_png(path: Path, array: np.ndarray) -> Path:
    from PIL import Image

    img = Image.fromarray(array) if array.dtype == np.uint8 or array.ndim == 3 \
        else Image.fromarray(array.astype(np.uint16))
    return atomic_write(path, lambda fh: img.save(fh, format="PNG"))


def _predict_picture(predictor: SlicePredictor, stem: str, path: Path, convert_cfg: ConvertConfig,
                     infer_cfg: InferConfig, rows: Sequence[PicturePrompt], out: Path
                     ) -> dict[str, Any]:
    vol = data_io.load_volume(Case(stem, stem, (str(path),), split="infer"), require_3d=False)
    vol.case.modality = "RGB" if vol.image.dtype == np.uint8 else "MR"  # 16-bit: percentiles
    grid = SliceGrid.build(vol, convert_cfg.model_copy(update={"axis": "axial"}))
    p = predictor.on(grid)
    with torch.inference_mode():
        slices = (_prompted(p, grid, rows) if infer_cfg.mode == "prompts"
                  else predict_automatic(p, grid, infer_cfg))
    mask = reassemble(grid, slices)[:, :, 0].T  # W×H×1 → H×W rows × columns
    rgb = apply_intensity(grid.views[:1], grid.params, -1)[0]  # H×W×C uint8, picture's size
    rgb = np.repeat(rgb[..., :1], 3, axis=2) if rgb.shape[2] != 3 else rgb
    mask_path = _write_png(out / "masks" / f"{stem}.png", mask.astype(
        np.uint8 if mask.max() < 256 else np.uint16))
    overlay_path = _write_png(out / "overlays" / f"{stem}.png",
                              overlay(rgb, mask, infer_cfg.overlay_opacity))
    ids, counts = np.unique(mask[mask > 0], return_counts=True)
    log.info("%s: %d labelled pixels → %s", stem, int(counts.sum()), mask_path)
    return {"source": str(path), "mask": str(mask_path), "overlay": str(overlay_path),
            "size": [int(mask.shape[1]), int(mask.shape[0])], "mode": infer_cfg.mode,
            "pixels": {str(int(i)): int(n) for i, n in zip(ids, counts)}}


def _checked_prompts(path: Path, pictures: dict[str, Path]
                     ) -> tuple[dict[str, list[PicturePrompt]], dict[str, str]]:
    """Every row checked against its picture (read once) → (stem → rows, stem → read error)."""
    by_name = {**{f.name: s for s, f in pictures.items()}, **{s: s for s in pictures}}
    grouped: dict[str, list[PicturePrompt]] = defaultdict(list)
    for p in read_picture_prompts(path):
        if p.image not in by_name:
            raise PromptsFileError(path, f"unknown image '{p.image}' (input pictures: "
                                         f"{', '.join(sorted(pictures)[:10])})", p.row)
        grouped[by_name[p.image]].append(p)
    failed = {}
    for stem, rows in grouped.items():
        try:
            w, h = data_io.read_image(pictures[stem])[0].shape[:2]
        except DataError as exc:
            failed[stem] = str(exc)
            continue
        for p in rows:
            check_picture_prompt(p, (w, h), path, str(pictures[stem]))
    return dict(grouped), failed


def infer_pictures(loaded: LoadedModel, found: tuple[dict[str, Path], dict[str, str]],
                   infer_cfg: InferConfig, convert_cfg: ConvertConfig, out_dir: Path
                   ) -> dict[str, Any]:
    """Predict the pictures `found` by `find_pictures` (stem → file, skipped files) and write
    the outputs (module docstring) → the summary written to out_dir/inference.json."""
    if loaded.family == "oracle":
        raise ValueError("the oracle model answers from ground truth; it cannot infer on "
                         "pictures (choose a model or eval.model_uri)")
    out_dir = Path(out_dir)
    pictures, skipped = found
    results: dict[str, dict[str, Any]] = {}
    rows: dict[str, list[PicturePrompt]] = {}
    todo = list(pictures)
    if infer_cfg.mode == "prompts":
        rows, failed = _checked_prompts(Path(infer_cfg.prompts_file), pictures)
        for stem in pictures:
            if stem in failed or stem not in rows:
                results[stem] = {"source": str(pictures[stem])} | (
                    {"error": failed[stem]} if stem in failed
                    else {"skipped": f"no prompts in {infer_cfg.prompts_file}"})
        todo = [s for s in pictures if s in rows and s not in failed]
    predictor = SlicePredictor(loaded.model.to(loaded.device).eval(), convert_cfg.img_size,
                               loaded.stats, loaded.device)
    for stem in tqdm(todo, desc="infer", unit="picture"):
        try:
            results[stem] = _predict_picture(predictor, stem, pictures[stem], convert_cfg,
                                             infer_cfg, rows.get(stem, []), out_dir / "inference")
        except (DataError, ValueError, OSError) as exc:
            log.error("%s failed: %s", stem, exc)
            results[stem] = {"source": str(pictures[stem]), "error": str(exc)}
    errors = [s for s, r in results.items() if "error" in r]
    summary = {"mode": infer_cfg.mode, "model": loaded.description, "input": "pictures",
               "output": str(out_dir / "inference"),
               "done": sum("mask" in r for r in results.values()), "failed": len(errors),
               "skipped": sum("skipped" in r for r in results.values()),
               "skipped_files": skipped, "pictures": dict(sorted(results.items()))}
    return finish_summary(out_dir, summary, results, "picture")
