"""Helpers shared by the dataset layouts (see `samtune.data.layouts`)."""
from __future__ import annotations

import logging
import os
from pathlib import Path

from samtune.config import DataConfig
from samtune.data.cases import LayoutError
from samtune.data.io_formats import EXTENSIONS, VOLUME_EXTENSIONS, extension

logger = logging.getLogger("samtune.data.layouts")

CORONARY = {1: "coronary_artery"}  # label names of the coronary CTA layouts

# data files that sit beside a header (.mhd/.nhdr) and are not cases themselves
_COMPANIONS = (".raw", ".zraw", ".gz", ".bz2", ".json", ".txt", ".md", ".csv", ".xlsx")


def require_root(cfg: DataConfig) -> Path:
    """`cfg.root` as an absolute path (symlinks kept); LayoutError if unset or not a folder."""
    if cfg.root is None:
        raise LayoutError(None, f"data.root is not set for layout '{cfg.layout}'; set it in the "
                                f"config or with --set data.root=/path/to/dataset")
    root = Path(os.path.abspath(cfg.root))
    if not root.is_dir():
        problem = "is not a folder" if root.exists() else "dataset folder does not exist"
        raise LayoutError(root, f"{problem} (data.root for layout '{cfg.layout}')")
    return root


def skip(skipped: dict[str, str], path: str | Path, reason: str) -> None:
    """Record a file the layout cannot use, with a warning."""
    skipped[str(path)] = reason
    logger.warning("skipped %s: %s", path, reason)


def strip_ext(name: str) -> str:
    """'case_01.nii.gz' → 'case_01' (one known extension removed)."""
    ext = extension(name)
    return name[: -len(ext)] if ext in EXTENSIONS else Path(name).stem


def list_volumes(folder: Path, skipped: dict[str, str]) -> list[Path]:
    """Volume files in `folder` (sorted, not recursive). Other visible files are recorded as
    skipped, except companions of a header (.raw, …) and notes (.json, .txt, …)."""
    if not folder.is_dir():
        return []
    out = []
    for p in sorted(folder.iterdir()):
        if p.name.startswith(".") or p.is_dir():
            continue
        if extension(p) in VOLUME_EXTENSIONS:
            out.append(p)
        elif not p.name.lower().endswith(_COMPANIONS):
            skip(skipped, p, f"not a supported volume format ({', '.join(VOLUME_EXTENSIONS)})")
    return out


def by_stem(files: list[Path], what: str) -> dict[str, Path]:
    """stem → file; two files with one stem (a.nii.gz and a.nrrd) → LayoutError naming both."""
    out: dict[str, Path] = {}
    for p in files:
        stem = strip_ext(p.name)
        if stem in out:
            raise LayoutError(p, f"duplicate {what} '{stem}': also {out[stem]}")
        out[stem] = p
    return out


def inside(base: Path, relative: str, source: Path) -> Path:
    """`base/relative`, refusing absolute paths and `..` escapes (LayoutError naming `source`)."""
    rel = str(relative).replace("\\", "/")
    norm = os.path.normpath(rel)
    if os.path.isabs(rel) or norm == ".." or norm.startswith("../"):
        raise LayoutError(source, f"path '{relative}' points outside {base}")
    return base / norm


def read_table(path: Path, required: tuple[str, ...]) -> list[dict[str, str]]:
    """Rows of a CSV as {column: stripped text} ('' for empty cells); LayoutError naming the file
    when it cannot be parsed or lacks a required column (lists the columns found)."""
    import pandas as pd

    if not path.is_file():
        raise LayoutError(path, "table not found")
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except (ValueError, OSError, UnicodeDecodeError) as exc:
        raise LayoutError(path, f"cannot read CSV ({type(exc).__name__}: {exc})") from None
    df.columns = [str(c).strip() for c in df.columns]
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise LayoutError(path, f"missing column(s) {', '.join(missing)}; found columns: "
                                f"{', '.join(df.columns) or 'none'}")
    return [{k: str(v).strip() for k, v in row.items()} for row in df.to_dict("records")]
