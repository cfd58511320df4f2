"""Layout `npz`: MedSAM / MedSAM2 .npz files, one case per file (samtune.data.io_npz reads them).

Any `*.npz` under `data.root` (recursively); one inside a `train/ val/ valid/ test/` folder keeps
that split (`split.method: layout`), others have none. The case id is the file stem; the image is
the file's `imgs`, the label its `gts` (a file without `gts` is an unlabelled case, one without
`imgs` or unreadable is skipped with the reason). Patient: DeepLesion sub-volumes named
`<prefix><patient:6 digits>_<study>_<series>_<first>-<last>` share the patient
`<prefix><patient>`, so a patient's sub-volumes land in one split; otherwise the case id.
Modality: `data.modality`, else MedSAM's file-name prefix (`MR_…` → MR, else CT).

MedSAM's preprocessing has already windowed `imgs` to uint8 0–255: convert them with the identity
window (`convert.window_level: 127.5`, `window_width: 255`, as configs/npz.yaml does) rather than a
CT preset in HU.
"""
from __future__ import annotations

import re
from pathlib import Path

from samtune.config import DataConfig
from samtune.data.cases import Case, CaseCollection, VolumeReadError
from samtune.data.io_npz import IMAGE_KEY, LABEL_KEY, npz_keys
from samtune.data.layouts.coco import SPLIT_FOLDERS
from samtune.data.layouts.common import require_root, skip

_DEEPLESION = re.compile(r"^(.*\d{6})_\d{2}_\d{2}_\d{3}-\d{3}$")


def patient_of(stem: str) -> str:
    """'CT_Lesion_000015_01_01_081-093' → 'CT_Lesion_000015'; any other stem → itself."""
    match = _DEEPLESION.match(stem)
    return match.group(1) if match else stem


def _split_of(path: Path, root: Path) -> str | None:
    folders = [p.lower() for p in path.relative_to(root).parts[:-1]]
    return next((SPLIT_FOLDERS[f] for f in folders if f in SPLIT_FOLDERS), None)


def npz(cfg: DataConfig) -> CaseCollection:
    """MedSAM .npz files under data.root (see the module docstring)."""
    root = require_root(cfg)
    skipped: dict[str, str] = {}
    cases = []
    for path in sorted(root.rglob("*.npz")):
        if any(part.startswith(".") for part in path.relative_to(root).parts) or \
                not path.is_file():
            continue
        try:
            keys = npz_keys(path)
        except VolumeReadError as exc:
            skip(skipped, path, exc.problem)
            continue
        if IMAGE_KEY not in keys:
            skip(skipped, path, f"no '{IMAGE_KEY}' array (arrays: {', '.join(keys) or 'none'})")
            continue
        stem = path.stem
        modality = cfg.modality or ("MR" if stem.upper().startswith("MR") else "CT")
        cases.append(Case(stem, patient_of(stem), (str(path),),
                          str(path) if LABEL_KEY in keys else None, modality=modality,
                          split=_split_of(path, root)))
    return CaseCollection("npz", str(root), cases, {}, skipped=skipped)
