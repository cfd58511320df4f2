"""nnU-Net raw datasets (v2 `channel_names` form and Decathlon / v1 `modality` + `training` form).

`imagesTr/<case>_0000<ending>` (+ `_0001`, … one file per channel), `labelsTr/<case><ending>`,
`imagesTs/` (split "infer"). A Decathlon training entry whose file exists as listed (e.g. a 4D
multi-modal `imagesTr/BRATS_001.nii.gz`) is one file whose 4th axis holds the channels.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from samtune.config import DataConfig
from samtune.data.cases import Case, CaseCollection, LayoutError
from samtune.data.layouts.common import inside, logger, require_root, skip


def _load_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise LayoutError(path, "dataset.json not found (nnU-Net layout)")
    try:
        data = json.loads(path.read_text())
    except (ValueError, OSError) as exc:
        raise LayoutError(path, f"not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise LayoutError(path, "top level must be a JSON object")
    return data


def _label_names(raw: Any, path: Path) -> dict[int, str]:
    """v1 {"0": "background", "1": "liver"} or v2 {"background": 0, "liver": 1} → {1: "liver"}.
    Region-based entries (lists) and the nnU-Net "ignore" label are not classes here."""
    if not isinstance(raw, dict):
        raise LayoutError(path, "'labels' must be an object")
    out: dict[int, str] = {}
    v1 = all(re.fullmatch(r"\d+", str(k)) for k in raw)
    for k, v in raw.items():
        value, name = (int(k), str(v)) if v1 else (v, str(k))
        if not v1 and (isinstance(value, bool) or not isinstance(value, int)):
            logger.warning("%s: label '%s' = %s is region-based; not used as a class", path, k, v)
        elif name.lower() == "ignore":
            logger.warning("%s: label %d is nnU-Net's 'ignore' label; not used as a class",
                           path, value)
        elif value != 0:
            out[value] = name
    return out


def _scan(folder: Path, ending: str, skipped: dict[str, str]) -> dict[str, dict[int, Path]]:
    """case → {channel index: file} for `<case>_XXXX<ending>` files in folder."""
    pattern = re.compile(rf"^(?P<case>.+)_(?P<ch>\d{{4}}){re.escape(ending)}$")
    out: dict[str, dict[int, Path]] = {}
    if not folder.is_dir():
        return out
    for p in sorted(folder.iterdir()):
        if p.name.startswith(".") or p.is_dir():
            continue
        m = pattern.match(p.name)
        if m is None:
            skip(skipped, p, f"not named <case>_XXXX{ending} (nnU-Net channel file)")
            continue
        out.setdefault(m["case"], {})[int(m["ch"])] = p
    return out


def _channel_files(case: str, found: dict[int, Path], expected: list[int],
                   dataset_json: Path) -> tuple[str, ...]:
    if sorted(found) != expected:
        raise LayoutError(found[min(found)] if found else dataset_json,
                          f"case '{case}' has channels {sorted(found)} but dataset.json lists "
                          f"channels {expected}; every case needs the same channels")
    return tuple(str(found[c]) for c in expected)


def _v1_entry(root: Path, rel: str, ending: str, expected: list[int], dj: Path,
              skipped: dict[str, str]) -> tuple[str, tuple[str, ...], bool] | None:
    """A Decathlon entry './imagesTr/x.nii.gz' → (case, files, channels_in_4th_axis)."""
    listed = inside(root, rel, dj)
    case = listed.name[: -len(ending)] if listed.name.endswith(ending) else listed.stem
    if listed.is_file():
        return case, (str(listed),), len(expected) > 1
    found = {c: listed.parent / f"{case}_{c:04d}{ending}" for c in expected}
    found = {c: p for c, p in found.items() if p.is_file()}
    if not found:
        skip(skipped, listed, f"image listed in {dj} not found (nor {case}_0000{ending})")
        return None
    return case, _channel_files(case, found, expected, dj), False


def nnunet(cfg: DataConfig) -> CaseCollection:
    """nnU-Net v2 / Decathlon raw dataset; modality CT when channel 0 is named CT, else MR."""
    root = require_root(cfg)
    dj_path = root / "dataset.json"
    dj = _load_json(dj_path)
    channels = dj.get("channel_names", dj.get("modality"))
    if not isinstance(channels, dict) or not channels:
        raise LayoutError(dj_path, "needs 'channel_names' (nnU-Net v2) or 'modality' (Decathlon)")
    try:
        names = {int(k): str(v) for k, v in channels.items()}
    except ValueError:
        raise LayoutError(dj_path, f"channel keys must be 0, 1, …; got {list(channels)}") \
            from None
    expected = sorted(names)
    ending = str(dj.get("file_ending", ".nii.gz"))
    modality = "CT" if names[expected[0]].strip().upper() == "CT" else "MR"
    labels = _label_names(dj.get("labels", {}), dj_path)
    skipped: dict[str, str] = {}
    cases: list[Case] = []

    def add(case: str, files: tuple[str, ...], label: Path | None, split: str | None,
            four_d: bool = False) -> None:
        meta = {"channels_in_4th_axis": True} if four_d else {}
        cases.append(Case(case, case, files, None if label is None else str(label),
                          modality=modality, split=split, meta=meta))

    if "channel_names" not in dj and isinstance(dj.get("training"), list):  # Decathlon form
        for entry in dj["training"]:
            if not isinstance(entry, dict) or "image" not in entry or "label" not in entry:
                raise LayoutError(dj_path, f"training entry {entry!r} needs 'image' and 'label'")
            got = _v1_entry(root, entry["image"], ending, expected, dj_path, skipped)
            if got is None:
                continue
            label = inside(root, entry["label"], dj_path)
            if not label.is_file():
                skip(skipped, got[1][0], f"label missing: expected {label}")
                continue
            add(got[0], got[1], label, None, got[2])
        for entry in dj.get("test", []):
            rel = entry.get("image") if isinstance(entry, dict) else entry
            got = _v1_entry(root, str(rel), ending, expected, dj_path, skipped)
            if got is not None:
                add(got[0], got[1], None, "infer", got[2])
    else:
        train = _scan(root / "imagesTr", ending, skipped)
        label_dir = root / "labelsTr"
        for case, found in train.items():
            files = _channel_files(case, found, expected, dj_path)
            label = label_dir / f"{case}{ending}"
            if not label.is_file():
                skip(skipped, files[0], f"label missing: expected {label}")
                continue
            add(case, files, label, None)
        if label_dir.is_dir():
            for p in sorted(label_dir.iterdir()):
                case = p.name[: -len(ending)]
                if not p.name.startswith(".") and p.name.endswith(ending) and case not in train:
                    expected_image = root / "imagesTr" / f"{case}_0000{ending}"
                    skip(skipped, p, f"label without image: expected {expected_image}")
        for case, found in _scan(root / "imagesTs", ending, skipped).items():
            add(case, _channel_files(case, found, expected, dj_path), None, "infer")
    n_train = sum(c.split is None for c in cases)
    if isinstance(dj.get("numTraining"), int) and dj["numTraining"] != n_train:
        logger.warning("%s: numTraining is %d but %d labelled cases were found",
                       dj_path, dj["numTraining"], n_train)
    return CaseCollection("nnunet", str(root), cases, labels, skipped=skipped)
