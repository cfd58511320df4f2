"""Inference on new volumes (no labels needed): a model → label volumes on the source grid,
overlay PNGs and a summary.

    cases = find_inputs(cfg.infer, cfg.data)
    summary = infer_volumes(loaded, cases, cfg.convert, cfg.infer, cfg.output_dir)

Inputs (`find_inputs`): `infer.input`, a folder of volumes (.nii, .nii.gz, .nrrd, .nhdr, .mha,
.mhd directly in it; case id = file name without extension; modality = data.modality or CT); or,
when it is not set, the cases of the `data` section's layout (ingested with include_unlabelled),
by default only the unlabelled ones (`infer.cases: all` takes every case, labels ignored).

Modes (`infer.mode`):
- prompts: boxes on key slices from `infer.prompts_file` (format: samtune.inference.prompts_file).
  Every row is checked first (unknown case, slice or box outside the volume → PromptsFileError
  naming the file, row and problem, before any prediction; each prompted volume is read once
  for this check and once more to predict). Each key slice's boxes are propagated through the
  volume along the prompt's axis (SAM2 family: sam2's video predictor; others: box to box,
  `infer.propagate_margin`); the key slices' results are united on the source grid, the first
  key slice in file order winning where two disagree. Cases the file does not name are skipped.
  A 3D model (SAM-Med3D) clicks each row's box centre instead (`samtune.inference.infer3d`).
- automatic: segment-anything's automatic mask generator on every slice along convert.axis
  (samtune.inference.automatic); the union of the kept masks is label `infer.automatic_label`.

Outputs under `out_dir`: inference/<case_id>.nii.gz (.nrrd for NRRD inputs; uint8, int16 when a
label exceeds 255) with the source affine, inference/overlays/<case_id>_<axis><index>.png, and
inference.json: per case the output path, voxels and volume (mL) per label, mode, slices
predicted and overlays, or the error (its file named) or why it was skipped. A case that fails
(unreadable volume, …) does not stop the others; when every attempted case fails, InferenceError
(after inference.json is written), so the CLI exits non-zero.
"""
from __future__ import annotations

import dataclasses
import logging
from collections import defaultdict
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from tqdm import tqdm

from samtune.config import ConvertConfig, DataConfig, InferConfig
from samtune.data import io as data_io
from samtune.data.cases import Case, DataError
from samtune.data.layouts.common import by_stem, list_volumes
from samtune.data.render import SliceGrid
from samtune.inference.automatic import predict_automatic
from samtune.inference.infer3d import predict_prompts_3d
from samtune.inference.model_source import LoadedModel
from samtune.inference.outputs import (
    label_stats,
    prediction_path,
    write_json,
    write_overlays,
)
from samtune.inference.predictor import SlicePredictor
from samtune.inference.prompts_file import (
    BoxPrompt,
    PromptsFileError,
    box_on_grid,
    check_prompt,
    convert_axis_for,
    read_prompts,
)
from samtune.inference.propagate import propagate_boxes, propagate_video
from samtune.inference.reassemble import reassemble

__all__ = ["InferenceError", "find_inputs", "output_path", "check_prompts", "infer_volumes",
           "finish_summary"]
log = logging.getLogger(__name__)


class InferenceError(DataError):
    """Every attempted case failed (their errors are in inference.json)."""


def find_inputs(infer_cfg: InferConfig, data_cfg: DataConfig) -> list[Case]:
    """The volumes to infer on, by case id (see module docstring); DataError naming the folder
    when there are none."""
    if infer_cfg.input is not None:
        folder = Path(infer_cfg.input).absolute()
        if not folder.is_dir():
            raise DataError(folder, "infer.input is not a folder of volumes")
        skipped: dict[str, str] = {}
        files = by_stem(list_volumes(folder, skipped), "volume")
        cases = [Case(stem, stem, (str(p),), None, modality=data_cfg.modality or "CT",
                      split="infer") for stem, p in files.items()]
        where = folder
    else:
        from samtune.data.layouts import ingest

        collection = ingest(data_cfg.model_copy(update={"include_unlabelled": True}))
        cases = [c for c in collection.cases
                 if infer_cfg.cases == "all" or c.label_path is None]
        where = Path(collection.root)
    if not cases:
        hint = ("" if infer_cfg.input else f" (infer.cases={infer_cfg.cases}; set infer.cases=all "
                "or infer.input=<folder of volumes>)")
        raise DataError(where, f"no volumes to infer on{hint}")
    log.info("%s: %d volume(s) to infer on", where, len(cases))
    return sorted((dataclasses.replace(c, label_path=None) for c in cases),
                  key=lambda c: c.case_id)


def output_path(out_dir: Path, case: Case) -> Path:
    """inference/<case_id>.nrrd for NRRD inputs, else .nii.gz."""
    return Path(out_dir) / "inference" / prediction_path(Path(out_dir), case).name


def check_prompts(prompts: Sequence[BoxPrompt], cases: Sequence[Case], path: Path
                  ) -> tuple[dict[str, list[BoxPrompt]], dict[str, str]]:
    """Check every prompt against its volume (read once, then dropped) → (case id → its
    prompts, case id → read error of a volume that could not be read). PromptsFileError for an
    unknown case, a slice or a box outside the volume."""
    by_id = {c.case_id: c for c in cases}
    grouped: dict[str, list[BoxPrompt]] = defaultdict(list)
    for p in prompts:
        if p.case_id not in by_id:
            known = ", ".join(sorted(by_id)[:10]) + (", …" if len(by_id) > 10 else "")
            raise PromptsFileError(path, f"unknown case_id '{p.case_id}' (input cases: {known})",
                                   p.row)
        grouped[p.case_id].append(p)
    failed = {}
    for case_id, rows in grouped.items():
        try:
            shape = data_io.load_volume(by_id[case_id]).shape
        except DataError as exc:
            failed[case_id] = str(exc)
            continue
        for p in rows:
            check_prompt(p, shape, path, by_id[case_id].image_paths[0])
    return dict(grouped), failed


def _predict_prompts(predictor: SlicePredictor, first: SliceGrid, rows: list[BoxPrompt],
                     family: str, margin: int) -> tuple[np.ndarray, int]:
    """One case's key-slice boxes, propagated → (I×J×K int32 labels, slices predicted).
    `first`: the volume's grid along convert.axis (other axes get their own grid)."""
    vol, convert_cfg = first.volume, first.cfg
    grids = {convert_cfg.axis: first}
    keys: dict[tuple[int, int], list[BoxPrompt]] = defaultdict(list)
    for p in rows:
        keys[(p.axis, p.index)].append(p)
    out = np.zeros(vol.shape, np.int32)
    reached: set[tuple[str, int]] = set()
    for (axis, _), group in keys.items():
        name = convert_axis_for(first.ornt, axis)
        if name not in grids:
            grids[name] = SliceGrid.build(vol, convert_cfg.model_copy(update={"axis": name}))
        grid = grids[name]
        mapped = [box_on_grid(p, grid) for p in group]
        key, boxes = mapped[0][0], np.stack([box for _, _, box in mapped])
        labels = np.array([p.label for p in group], np.int64)
        if family == "sam2":
            slices = propagate_video(predictor, grid, key, boxes, labels)
        else:
            slices = propagate_boxes(predictor, grid, key, boxes, labels, margin=margin)
        part = reassemble(grid, slices)
        out = np.where(out > 0, out, part)
        reached |= {(name, k) for k in slices}
    return out, len(reached)


def _predict_case(predictor: SlicePredictor, case: Case, convert_cfg: ConvertConfig,
                  infer_cfg: InferConfig, rows: list[BoxPrompt], family: str, out_dir: Path
                  ) -> dict[str, Any]:
    vol = data_io.load_volume(case)
    grid = SliceGrid.build(vol, convert_cfg)
    if family == "sam_med3d":  # a 3D model: one click per row, in its own crop
        pred, n_slices = predict_prompts_3d(predictor.model, vol, rows, predictor.device)
        expected = {p.label for p in rows}
    elif infer_cfg.mode == "prompts":
        pred, n_slices = _predict_prompts(predictor, grid, rows, family,
                                          infer_cfg.propagate_margin)
        expected = {p.label for p in rows}
    else:
        pred = reassemble(grid, predict_automatic(predictor, grid, infer_cfg))
        n_slices, expected = grid.n_slices, {infer_cfg.automatic_label}
    path = data_io.write_volume(output_path(out_dir, case),
                                pred.astype(np.uint8 if pred.max() < 256 else np.int16),
                                vol.affine)
    overlays = write_overlays(grid, pred, out_dir / "inference" / "overlays",
                              infer_cfg.overlays)
    stats = label_stats(pred, vol.affine, expected)
    log.info("%s: %s → %s", case.case_id, ", ".join(f"label {k} {v:.3f} mL" for k, v in
                                                   stats["volume_ml"].items()), path)
    counted = "crops_predicted" if family == "sam_med3d" else "slices_predicted"
    return {"source": case.image_paths[0], "path": str(path), "mode": infer_cfg.mode,
            counted: int(n_slices), **stats,
            "overlays": [str(p) for p in overlays]}


def infer_volumes(loaded: LoadedModel, cases: Sequence[Case], convert_cfg: ConvertConfig,
                  infer_cfg: InferConfig, out_dir: Path) -> dict[str, Any]:
    """Predict `cases` with `loaded` under infer_cfg.mode and write the outputs (module
    docstring) → the summary written to out_dir/inference.json."""
    out_dir = Path(out_dir)
    if loaded.family == "oracle":
        raise ValueError("the oracle model answers from ground truth; it cannot infer on "
                         "unlabelled volumes (choose a model or eval.model_uri)")
    if loaded.family == "sam_med3d" and infer_cfg.mode != "prompts":
        raise ValueError("infer.mode automatic: SAM-Med3D has no automatic mask generator; "
                         "use infer.mode prompts (a click per prompts-file row)")
    rows: dict[str, list[BoxPrompt]] = {}
    results: dict[str, dict[str, Any]] = {}
    todo = list(cases)
    if infer_cfg.mode == "prompts":
        path = Path(infer_cfg.prompts_file)
        rows, failed = check_prompts(read_prompts(path), cases, path)
        for c in cases:
            if c.case_id in failed or c.case_id not in rows:
                results[c.case_id] = {"source": c.image_paths[0]} | (
                    {"error": failed[c.case_id]} if c.case_id in failed
                    else {"skipped": f"no prompts in {path}"})
        todo = [c for c in cases if c.case_id in rows and c.case_id not in failed]
    predictor = SlicePredictor(loaded.model.to(loaded.device).eval(), convert_cfg.img_size,
                               loaded.stats, loaded.device)
    for case in tqdm(todo, desc="infer", unit="vol"):
        try:
            results[case.case_id] = _predict_case(predictor, case, convert_cfg, infer_cfg,
                                                  rows.get(case.case_id, []), loaded.family,
                                                  out_dir)
        except (DataError, ValueError, OSError) as exc:
            log.error("%s failed: %s", case.case_id, exc)
            results[case.case_id] = {"source": case.image_paths[0], "error": str(exc)}
    errors = [c for c, r in results.items() if "error" in r]
    summary = {"mode": infer_cfg.mode, "model": loaded.description,
               "prompts_file": str(infer_cfg.prompts_file) if infer_cfg.mode == "prompts"
               else None, "output": str(out_dir / "inference"),
               "done": sum("path" in r for r in results.values()), "failed": len(errors),
               "skipped": sum("skipped" in r for r in results.values()),
               "cases": dict(sorted(results.items()))}
    return finish_summary(out_dir, summary, results, "case")


def finish_summary(out_dir: Path, summary: dict[str, Any], results: dict[str, dict[str, Any]],
                   noun: str) -> dict[str, Any]:
    """Write `summary` (with "done", "failed", "skipped") to out_dir/inference.json; → it, or
    InferenceError when every `noun` (case, picture) failed."""
    json_path = write_json(out_dir / "inference.json", summary)
    errors = [k for k, r in results.items() if "error" in r]
    if errors and summary["done"] == 0:
        raise InferenceError(json_path, f"every {noun} failed ({len(errors)}); first: "
                                        f"{results[errors[0]]['error']}")
    log.info("inference: %d %ss done, %d failed, %d skipped → %s", summary["done"], noun,
             len(errors), summary["skipped"], json_path)
    return summary
