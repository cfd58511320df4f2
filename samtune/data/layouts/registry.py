"""Dataset layouts: a registry from layout name to a small function that finds the cases.

`ingest(cfg)` is what the prepare pipeline calls: look up the layout, find its cases, apply the
config (include_unlabelled, maps, labels, modality), check case ids, and fingerprint every file
by its content (sha256) so that ZenML caching follows the data rather than paths or mtimes.
Adding a layout is one module in this package and one entry in `LAYOUTS` and `_DESCRIPTIONS`.
"""
from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

from samtune.config import DataConfig
from samtune.data.cases import CaseCollection, LayoutError
from samtune.data.io import file_sha256
from samtune.data.layouts.asoca import asoca
from samtune.data.layouts.coco import coco2d
from samtune.data.layouts.dicom import dicom
from samtune.data.layouts.folder import folder
from samtune.data.layouts.imagecas import imagecas
from samtune.data.layouts.manifest import csv_manifest
from samtune.data.layouts.nnunet import nnunet
from samtune.data.layouts.npz import npz
from samtune.data.layouts.phantoms import phantoms
from samtune.data.maps import attach_maps

__all__ = ["LAYOUTS", "list_layouts", "ingest"]

logger = logging.getLogger(__name__)

DEFAULT_LABELS = {1: "foreground"}


LAYOUTS: dict[str, Callable[[DataConfig], CaseCollection]] = {
    "asoca": asoca,
    "imagecas": imagecas,
    "nnunet": nnunet,
    "folder": folder,
    "dicom": dicom,
    "csv": csv_manifest,
    "coco2d": coco2d,
    "phantoms": phantoms,
    "npz": npz,
}

_DESCRIPTIONS = {
    "asoca": "ASOCA coronary CTA: {Normal,Diseased}/CTCA/*.nrrd + Annotations/, "
             "Testset_* unlabelled",
    "imagecas": "ImageCAS coronary CTA: Data/<n>.img.nii.gz + Data/<n>.label.nii.gz",
    "nnunet": "nnU-Net v2 / Medical Segmentation Decathlon raw: dataset.json, imagesTr, labelsTr, "
              "imagesTs",
    "folder": "images/<case>.<ext> + labels/<case>.<ext> (NIfTI/NRRD/MHA), optional patients.csv",
    "dicom": "DICOM series (patient/study/series folders or one flat folder), grouped by "
             "SeriesInstanceUID + labels/<series uid|folder path|folder name|patient id>.<ext>",
    "csv": "manifest CSV (data.manifest, default root/manifest.csv): image, label, patient_id, "
           "[group, case_id, split]",
    "coco2d": "2D pictures: Roboflow COCO export (train/valid/test with _annotations.coco.json), "
              "COCO annotations.json + images/ (finestSAM, samtune's export; split folders "
              "kept) or images/ + masks/",
    "phantoms": "synthetic coronary CTA volumes (data.phantoms) written into data.root",
    "npz": "MedSAM/MedSAM2 .npz (imgs, gts, spacing[, direction, origin]) under root, "
           "one case each; train/ val/ test/ folders keep their split",
}


def list_layouts() -> dict[str, str]:
    """Layout name → one-line description (for `run.py --list-datasets`)."""
    return {name: _DESCRIPTIONS.get(name, (fn.__doc__ or "").strip().split("\n")[0])
            for name, fn in LAYOUTS.items()}


def _check_unique(collection: CaseCollection) -> None:
    seen: dict[str, str] = {}
    for case in collection.cases:
        first = case.image_paths[0] if case.image_paths else case.case_id
        if case.case_id in seen:
            raise LayoutError(first, f"duplicate case id '{case.case_id}': also "
                                     f"{seen[case.case_id]}")
        seen[case.case_id] = first


def _fingerprints(collection: CaseCollection) -> dict[str, str]:
    files = sorted({f for case in collection.cases for f in case.files})
    with ThreadPoolExecutor(max_workers=4) as pool:  # hashing releases the GIL; disk-bound
        return dict(zip(files, pool.map(file_sha256, files)))


def ingest(cfg: DataConfig) -> CaseCollection:
    """Find the cases of the dataset at `cfg.root` with layout `cfg.layout`.

    Cases come sorted by case_id; `fingerprints` holds the sha256 of every file; files the
    layout cannot use are in `skipped` with the reason. Label names: the dataset's (or the
    layout's), overridden by `cfg.labels`; {1: "foreground"} when nothing names them.
    Raises LayoutError for an unknown layout, a missing root, duplicate case ids or no cases.
    """
    if cfg.layout not in LAYOUTS:
        raise LayoutError(None, f"unknown dataset layout '{cfg.layout}'; valid layouts: "
                                f"{', '.join(LAYOUTS)}")
    collection = LAYOUTS[cfg.layout](cfg)
    _check_unique(collection)
    found = len(collection.cases)
    if not cfg.include_unlabelled:
        collection.cases = [c for c in collection.cases if c.label_path is not None]
        if len(collection.cases) < found:
            logger.info("%s: left out %d unlabelled case(s) (data.include_unlabelled=false)",
                        collection.root, found - len(collection.cases))
    labelled = len(collection.cases)
    attach_maps(collection, cfg.maps)  # data.maps: cases missing a map file are skipped
    if not collection.cases:
        hint = (" (all unlabelled; set data.include_unlabelled=true)" if found and not labelled
                else " (every case lacks a data.maps file)" if labelled else "")
        raise LayoutError(collection.root, f"no cases found for layout '{cfg.layout}'{hint}; "
                                           f"{len(collection.skipped)} file(s) skipped")
    if cfg.modality is not None:
        for case in collection.cases:
            case.modality = cfg.modality
    collection.cases.sort(key=lambda c: c.case_id)
    labels = {**collection.labels, **cfg.labels}
    if not labels:
        logger.warning("%s: no label names in the dataset or data.labels; using %s",
                       collection.root, DEFAULT_LABELS)
        labels = dict(DEFAULT_LABELS)
    collection.labels = dict(sorted(labels.items()))
    collection.fingerprints = _fingerprints(collection)
    logger.info("%s: %d case(s) with layout %s, labels %s, %d file(s) skipped",
                collection.root, len(collection.cases), collection.layout, collection.labels,
                len(collection.skipped))
    return collection
