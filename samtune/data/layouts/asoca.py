"""Layout `asoca`: the ASOCA coronary CTA challenge as it is downloaded (NRRD)."""
from __future__ import annotations

from samtune.config import DataConfig
from samtune.data.cases import Case, CaseCollection, LayoutError
from samtune.data.layouts.common import (
    CORONARY,
    by_stem,
    list_volumes,
    require_root,
    skip,
    strip_ext,
)


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
