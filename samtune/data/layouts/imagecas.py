"""Layout `imagecas`: the ImageCAS coronary CTA dataset (NIfTI pairs `<n>.img` / `<n>.label`)."""
from __future__ import annotations

import re
from pathlib import Path

from samtune.config import DataConfig
from samtune.data.cases import Case, CaseCollection, LayoutError
from samtune.data.layouts.common import (
    CORONARY,
    list_volumes,
    require_root,
    skip,
)

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
