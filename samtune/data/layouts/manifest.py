"""Layout `csv`: a manifest CSV naming each image, its label, patient, group and split."""
from __future__ import annotations

import os
import re
from pathlib import Path

from samtune.config import DataConfig
from samtune.data.cases import Case, CaseCollection, LayoutError
from samtune.data.layouts.common import (
    read_table,
    require_root,
    skip,
    strip_ext,
)

_SPLITS = {"train": "train", "training": "train", "val": "val", "valid": "val",
           "validation": "val", "test": "test", "infer": "infer", "": None}


def _manifest_path(cfg: DataConfig, root: Path) -> Path:
    if cfg.manifest is None:
        return root / "manifest.csv"
    m = Path(cfg.manifest)
    return m if m.is_absolute() or m.exists() else root / m


def csv_manifest(cfg: DataConfig) -> CaseCollection:
    """A manifest CSV (data.manifest, default root/manifest.csv): image, label, patient_id,
    optional group, case_id (default: image stem), split and `map_<name>` columns (quantitative
    maps, samtune.data.maps; an empty cell: none, or data.maps' pattern); relative paths resolve
    against the manifest's folder; an empty label cell is an unlabelled case. Modality:
    data.modality or MR (percentile normalisation is the safe default when it is unknown)."""
    root = require_root(cfg)
    manifest = Path(os.path.abspath(_manifest_path(cfg, root)))
    base = manifest.parent
    skipped: dict[str, str] = {}
    cases = []
    rows = read_table(manifest, ("image", "label", "patient_id"))
    for col in (c for c in (rows[0] if rows else {}) if c.startswith("map_")):
        if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", col[4:]):
            raise LayoutError(manifest, f"column '{col}': a map name takes letters, digits, _")
    for n, row in enumerate(rows, start=2):
        if not row["image"]:
            raise LayoutError(manifest, f"line {n}: empty image path")
        img = Path(os.path.normpath(base / row["image"]))
        if not img.is_file():
            skip(skipped, img, f"image listed on line {n} of {manifest} does not exist")
            continue
        lab = Path(os.path.normpath(base / row["label"])) if row["label"] else None
        if lab is not None and not lab.is_file():
            skip(skipped, img, f"label missing: {lab} (line {n} of {manifest}) does not exist")
            continue
        maps = {k[4:]: Path(os.path.normpath(base / v)) for k, v in row.items()
                if k.startswith("map_") and v}
        absent = [f"map '{k}' missing: {m} (line {n} of {manifest}) does not exist"
                  for k, m in maps.items() if not m.is_file()]
        if absent:
            skip(skipped, img, "; ".join(absent))
            continue
        case_id = row.get("case_id") or strip_ext(img.name)
        if not row["patient_id"]:
            raise LayoutError(manifest, f"line {n}: empty patient_id for case '{case_id}'")
        split = row.get("split", "").lower()
        if split not in _SPLITS:
            raise LayoutError(manifest, f"line {n}: unknown split '{row['split']}' "
                                        f"(use train, val, test or infer)")
        cases.append(Case(case_id, row["patient_id"], (str(img),),
                          None if lab is None else str(lab), group=row.get("group") or None,
                          modality=cfg.modality or "MR", split=_SPLITS[split],
                          meta={"maps": {k: str(m) for k, m in sorted(maps.items())}} if maps
                          else {}))
    return CaseCollection("csv", str(root), cases, {}, skipped=skipped)
