"""3D volume layouts: ASOCA, ImageCAS, a plain images/ + labels/ folder, and a CSV manifest.

Each function takes the `data` config section and returns the cases it finds (unsorted, label
names as the dataset defines them; `samtune.data.layouts.ingest` does the rest).
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from samtune.config import DataConfig
from samtune.data.cases import Case, CaseCollection, LayoutError
from samtune.data.layouts_common import (
    by_stem,
    list_volumes,
    logger,
    read_table,
    require_root,
    skip,
    strip_ext,
)

CORONARY = {1: "coronary_artery"}
_SPLITS = {"train": "train", "training": "train", "val": "val", "valid": "val",
           "validation": "val", "test": "test", "infer": "infer", "": None}


def asoca(cfg: DataConfig) -> CaseCollection:
    """ASOCA: `{Normal,Diseased}/CTCA/*.nrrd`, labels in `Annotations/` under the same name,
    unlabelled `Testset_<group>/*.nrrd` (split "infer")."""
    root = require_root(cfg)
    groups = [g for g in ("Normal", "Diseased") if (root / g).is_dir()]
    if not groups:
        found = sorted(p.name for p in root.iterdir() if p.is_dir())
        raise LayoutError(root, f"expected Normal/ and Diseased/ folders (ASOCA layout); "
                                f"found folders: {found}")
    cases: list[Case] = []
    skipped: dict[str, str] = {}
    for g in groups:
        image_dir, label_dir = root / g / "CTCA", root / g / "Annotations"
        images = by_stem(list_volumes(image_dir, skipped), "image")
        labels = by_stem(list_volumes(label_dir, skipped), "label")
        for stem, img in images.items():
            if stem not in labels:
                skip(skipped, img, f"label missing: expected {label_dir / img.name}")
                continue
            cases.append(Case(stem, stem, (str(img),), str(labels[stem]), group=g, modality="CT"))
        for stem, lab in labels.items():
            if stem not in images:
                skip(skipped, lab, f"label without image: expected {image_dir / lab.name}")
        for img in list_volumes(root / g / f"Testset_{g}", skipped):
            stem = strip_ext(img.name)
            cases.append(Case(stem, stem, (str(img),), None, group=g, modality="CT",
                              split="infer"))
    return CaseCollection("asoca", str(root), cases, dict(CORONARY), skipped=skipped)


_IMAGECAS_NAME = re.compile(r"^(?P<n>.+)\.(?P<kind>img|label)\.nii(\.gz)?$", re.IGNORECASE)


def imagecas(cfg: DataConfig) -> CaseCollection:
    """ImageCAS: `Data/<n>.img.nii.gz` + `Data/<n>.label.nii.gz` (or both directly in root)."""
    root = require_root(cfg)
    folder = root / "Data" if (root / "Data").is_dir() else root
    skipped: dict[str, str] = {}
    found: dict[str, dict[str, Path]] = {"img": {}, "label": {}}
    for p in list_volumes(folder, skipped):
        m = _IMAGECAS_NAME.match(p.name)
        if m is None:
            skip(skipped, p, "not named <n>.img.nii.gz or <n>.label.nii.gz (ImageCAS layout)")
            continue
        kind, n = m["kind"].lower(), m["n"]
        if n in found[kind]:
            raise LayoutError(p, f"duplicate {kind} for case '{n}': also {found[kind][n]}")
        found[kind][n] = p
    cases = []
    for n, img in found["img"].items():
        lab = found["label"].get(n)
        if lab is None:
            skip(skipped, img, f"label missing: expected {folder / f'{n}.label.nii.gz'}")
            continue
        cases.append(Case(n, n, (str(img),), str(lab), modality="CT"))
    for n, lab in found["label"].items():
        if n not in found["img"]:
            skip(skipped, lab, f"label without image: expected {folder / f'{n}.img.nii.gz'}")
    return CaseCollection("imagecas", str(root), cases, dict(CORONARY), skipped=skipped)


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


def _manifest_path(cfg: DataConfig, root: Path) -> Path:
    if cfg.manifest is None:
        return root / "manifest.csv"
    m = Path(cfg.manifest)
    return m if m.is_absolute() or m.exists() else root / m


def csv_manifest(cfg: DataConfig) -> CaseCollection:
    """A manifest CSV (data.manifest, default root/manifest.csv): image, label, patient_id,
    optional group, case_id (default: image stem) and split; relative paths resolve against the
    manifest's folder; an empty label cell is an unlabelled case. Modality: data.modality or MR
    (percentile normalisation is the safe default when the modality is unknown)."""
    root = require_root(cfg)
    manifest = Path(os.path.abspath(_manifest_path(cfg, root)))
    base = manifest.parent
    skipped: dict[str, str] = {}
    cases = []
    for n, row in enumerate(read_table(manifest, ("image", "label", "patient_id")), start=2):
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
        case_id = row.get("case_id") or strip_ext(img.name)
        if not row["patient_id"]:
            raise LayoutError(manifest, f"line {n}: empty patient_id for case '{case_id}'")
        split = row.get("split", "").lower()
        if split not in _SPLITS:
            raise LayoutError(manifest, f"line {n}: unknown split '{row['split']}' "
                                        f"(use train, val, test or infer)")
        cases.append(Case(case_id, row["patient_id"], (str(img),),
                          None if lab is None else str(lab), group=row.get("group") or None,
                          modality=cfg.modality or "MR", split=_SPLITS[split]))
    return CaseCollection("csv", str(root), cases, {}, skipped=skipped)
