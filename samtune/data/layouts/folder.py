"""Layout `folder`: `images/` + `labels/` volumes of any readable format, optional patients.csv."""
from __future__ import annotations

from pathlib import Path

from samtune.config import DataConfig
from samtune.data.cases import Case, CaseCollection, LayoutError
from samtune.data.layouts.common import (
    by_stem,
    list_volumes,
    logger,
    read_table,
    require_root,
    skip,
)


def _patients(path: Path) -> dict[str, tuple[str, str | None]]:
    """patients.csv: case_id → (patient_id, group or None)."""
    out: dict[str, tuple[str, str | None]] = {}
    for n, row in enumerate(read_table(path, ("case_id", "patient_id")), start=2):
        if not row["case_id"] or not row["patient_id"]:
            raise LayoutError(path, f"line {n}: empty case_id or patient_id")
        out[row["case_id"]] = (row["patient_id"], row.get("group") or None)
    return out


def folder(cfg: DataConfig) -> CaseCollection:
    """`images/<case>.<ext>` + `labels/<case>.<ext>` (label extension may differ); optional
    `patients.csv` (case_id, patient_id[, group]). Without a labels/ folder every case is
    unlabelled; with one, an image without its label is skipped."""
    root = require_root(cfg)
    image_dir, label_dir = root / "images", root / "labels"
    if not image_dir.is_dir():
        raise LayoutError(root, "expected an images/ folder (and labels/) for layout 'folder'")
    skipped: dict[str, str] = {}
    images = by_stem(list_volumes(image_dir, skipped), "image")
    labelled = label_dir.is_dir()
    labels = by_stem(list_volumes(label_dir, skipped), "label") if labelled else {}
    patients = _patients(root / "patients.csv") if (root / "patients.csv").is_file() else {}
    cases = []
    for stem, img in images.items():
        lab = labels.get(stem)
        if labelled and lab is None:
            skip(skipped, img, f"label missing: expected {label_dir / img.name}")
            continue
        patient, group = patients.get(stem, (stem, None))
        if patients and stem not in patients:
            logger.warning("%s: case '%s' is not in patients.csv; patient_id = case id",
                           root, stem)
        cases.append(Case(stem, patient, (str(img),), None if lab is None else str(lab),
                          group=group, modality=cfg.modality or "MR"))
    for stem, lab in labels.items():
        if stem not in images:
            skip(skipped, lab, f"label without image: expected {image_dir / lab.name}")
    return CaseCollection("folder", str(root), cases, {}, skipped=skipped)
