"""Layout `dicom`: DICOM series anywhere under data.root, label volumes in `labels/`.

data.root holds patient/study/series folders (any depth) or one flat folder with several series.
Files are grouped by SeriesInstanceUID (GDCM through SimpleITK, across folders); each series is
checked and sorted along its slice normal (`samtune.data.io_dicom`); a bad series (multi-frame,
4D, localiser mixed in, mixed orientations, missing slices, uneven spacing, …) is skipped with
its reason. A case's `image_paths` are its slice files in slice order; `meta` keeps what the
biomarkers need (pixel spacing, slice thickness and spacing, rows, columns, modality 0008,0060).

Label keys tried, in order, as `labels/<key>.nii.gz` (or any volume format): the
SeriesInstanceUID, the series folder path relative to data.root with '/' → '_' (e.g.
`P001_study1_CT`), the series folder name (`CT`), the PatientID. A key more than one series
answers to is not used for any of them. patient_id = PatientID (0010,0020) as stored.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from samtune.config import DataConfig
from samtune.data.cases import Case, CaseCollection, VolumeReadError
from samtune.data.io_dicom import SeriesGeometry, check_series, read_header
from samtune.data.layouts.common import by_stem, list_volumes, logger, require_root, skip

_NOTES = (".json", ".txt", ".md", ".csv", ".xlsx", ".pdf", ".xml")


def _find_series(root: Path, label_dir: Path, skipped: dict[str, str]) -> dict[str, list[Path]]:
    """SeriesInstanceUID → its files, over every folder under root except labels/ and hidden
    ones. Files GDCM finds in no series, in a folder that holds one, are recorded as skipped."""
    import SimpleITK as sitk

    found: dict[str, list[Path]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        dirnames[:] = sorted(d for d in dirnames
                             if not d.startswith(".") and here / d != label_dir)
        if not filenames:
            continue
        used: set[str] = set()
        for uid in sitk.ImageSeriesReader.GetGDCMSeriesIDs(dirpath):
            files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(dirpath, uid)
            found.setdefault(uid, []).extend(Path(f) for f in files)
            used.update(os.path.basename(f) for f in files)
        if used:
            for name in sorted(set(filenames) - used):
                if not name.startswith(".") and not name.lower().endswith(_NOTES):
                    skip(skipped, here / name, "not a DICOM image (GDCM finds no series in it)")
    return found


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")


def _case_ids(series: dict[str, SeriesGeometry], root: Path) -> dict[str, str]:
    """uid → case id: the series folder path ('/' → '_'), plus `_s<SeriesNumber>` (or the UID)
    where one folder holds several series; the PatientID for a series in data.root itself."""
    folders = {uid: g.slices[0].path.parent for uid, g in series.items()}
    out = {}
    for uid, geometry in series.items():
        rel = folders[uid].relative_to(root)
        base = _safe("_".join(rel.parts)) or _safe(geometry.slices[0].patient_id) or "series"
        siblings = [u for u, f in folders.items() if f == folders[uid]]
        if len(siblings) > 1:
            numbers = [series[u].slices[0].series_number for u in siblings]
            number = geometry.slices[0].series_number
            unique = number and numbers.count(number) == 1
            base = f"{base}_s{_safe(number)}" if unique else f"{base}_{_safe(uid)}"
        out[uid] = base
    return out


def _label_keys(uid: str, geometry: SeriesGeometry, root: Path) -> list[str]:
    folder = geometry.slices[0].path.parent
    rel = folder.relative_to(root)
    keys = [uid, "_".join(rel.parts), folder.name if rel.parts else "",
            geometry.slices[0].patient_id]
    return [k for n, k in enumerate(keys) if k and k not in keys[:n]]


def _meta(uid: str, geometry: SeriesGeometry, root: Path) -> dict:
    h = geometry.slices[0]
    return {"dicom_series_uid": uid, "series_folder": str(h.path.parent.relative_to(root)),
            "modality": h.modality, "rows": h.rows, "columns": h.columns,
            "pixel_spacing_mm": [float(v) for v in h.pixel_spacing],
            "slice_thickness_mm": h.thickness, "slice_spacing_mm": geometry.slice_spacing,
            "n_slices": len(geometry.slices), "series_number": h.series_number,
            "series_description": h.tags.get("series_description", ""),
            "study_uid": h.tags.get("study_uid", "")}


def dicom(cfg: DataConfig) -> CaseCollection:
    """DICOM series under data.root (see the module docstring); modality CT when (0008,0060) is
    CT, else MR (data.modality overrides). Without a labels/ folder every case is unlabelled."""
    root = require_root(cfg)
    label_dir = root / "labels"
    skipped: dict[str, str] = {}
    labels = by_stem(list_volumes(label_dir, skipped), "label") if label_dir.is_dir() else {}
    found = _find_series(root, label_dir, skipped)
    series: dict[str, SeriesGeometry] = {}
    for uid, files in sorted(found.items()):
        try:
            series[uid] = check_series([read_header(f) for f in files])
        except VolumeReadError as exc:
            skip(skipped, f"{files[0].parent} (series {uid})", exc.problem if exc.path is None
                 else f"{exc.problem} [{Path(exc.path).name}]")
    keys = {uid: _label_keys(uid, g, root) for uid, g in series.items()}
    answers: dict[str, list[str]] = {}
    for uid, ks in keys.items():
        for k in ks:
            answers.setdefault(k, []).append(uid)
    used: set[str] = set()
    cases = []
    for uid, case_id in _case_ids(series, root).items():
        geometry = series[uid]
        match = next((k for k in keys[uid] if k in labels and len(answers[k]) == 1), None)
        for k in keys[uid]:
            if k in labels and len(answers[k]) > 1:
                logger.warning("%s: label key '%s' matches %d series; not used", root, k,
                               len(answers[k]))
        if label_dir.is_dir() and match is None:
            skip(skipped, f"{geometry.slices[0].path.parent} (series {uid})",
                 f"label missing for series {uid}: tried labels/<key>.nii.gz for keys "
                 f"{', '.join(keys[uid])}")
            continue
        used.add(match or "")
        h = geometry.slices[0]
        patient = h.patient_id or case_id
        if not h.patient_id:
            logger.warning("%s: series %s has no PatientID; patient_id = case id", root, uid)
        meta = _meta(uid, geometry, root) | ({"label_key": match} if match else {})
        cases.append(Case(case_id, patient, tuple(str(s.path) for s in geometry.slices),
                          None if match is None else str(labels[match]),
                          modality=cfg.modality or ("CT" if h.modality == "CT" else "MR"),
                          meta=meta))
    for stem, lab in labels.items():
        if stem not in used:
            skip(skipped, lab, "label without a usable series (its series was skipped, or "
                               "no series or several answer to this key)")
    return CaseCollection("dicom", str(root), cases, {}, skipped=skipped)
