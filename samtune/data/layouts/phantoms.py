"""Layout `phantoms`: synthetic coronary CTA written as the ASOCA (NRRD) or ImageCAS (NIfTI)
layout, atomically, and read back through that layout.

A marker file holds the generating config and generator version: a folder with the same marker is
left untouched (same bytes, same mtimes, same downstream cache keys).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import uuid
from pathlib import Path

import numpy as np

from samtune.config import DataConfig, PhantomConfig
from samtune.data.cases import CaseCollection, DataError, LayoutError
from samtune.data.io import write_volume
from samtune.data.phantoms import GENERATOR_VERSION, make_phantom, phantom_affine

logger = logging.getLogger(__name__)

MARKER = ".samtune-phantoms.json"


def _plan(cfg: PhantomConfig) -> list[tuple[str, str, str | None, bool]]:
    """(case name, image path, label path or None, diseased), paths relative to the root."""
    if cfg.layout == "imagecas":
        return [(str(n), f"Data/{n}.img.nii.gz", f"Data/{n}.label.nii.gz", n > cfg.n_normal)
                for n in range(1, cfg.n_normal + cfg.n_diseased + 1)]
    return [(f"{g}_{n}", f"{g}/CTCA/{g}_{n}.nrrd", f"{g}/Annotations/{g}_{n}.nrrd", ill)
            if n <= count else (f"{g}_{n}", f"{g}/Testset_{g}/{g}_{n}.nrrd", None, ill)
            for g, count, ill in (("Normal", cfg.n_normal, False),
                                  ("Diseased", cfg.n_diseased, True))
            for n in range(1, count + cfg.n_test + 1)]


def _state(root: Path, wanted: dict) -> str:
    """'same' | 'stale' (our marker, other config) | 'free' (absent or empty); else DataError."""
    if root.is_dir() and (root / MARKER).is_file():
        try:
            return "same" if json.loads((root / MARKER).read_text()) == wanted else "stale"
        except (OSError, ValueError):
            return "stale"
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise DataError(root, f"not an empty folder and no {MARKER} marker: refusing to overwrite "
                              "data samtune did not write; empty it or choose another root")
    return "free"


def write_dataset(root: Path, cfg: PhantomConfig) -> Path:
    """Write phantoms in layout `cfg.layout` into `root` atomically; return `root`. A root with
    this config's marker is left untouched (same files and mtimes); another marker is replaced; a
    non-empty folder without marker raises DataError. Even-numbered cases are stored with a
    negative j direction (array flipped too, so the world anatomy is unchanged)."""
    root = Path(root).absolute()
    wanted = {"config": cfg.model_dump(mode="json"), "generator": GENERATOR_VERSION}
    if _state(root, wanted) == "same":
        logger.info("phantoms in %s are up to date", root)
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.", suffix=".tmp", dir=root.parent))
    try:
        for name, image_rel, label_rel, diseased in _plan(cfg):
            seed = int.from_bytes(hashlib.sha256(f"{cfg.seed}:{name}".encode()).digest()[:8])
            image, label = make_phantom(cfg.shape, cfg.spacing, seed=seed, diseased=diseased,
                                        lesions=cfg.lesions)
            flip = int(name.rsplit("_", 1)[-1]) % 2 == 0
            affine = phantom_affine(cfg.shape, cfg.spacing, negative_direction=flip)
            for rel, arr in ((image_rel, image), (label_rel, label)):
                if rel:
                    write_volume(tmp / rel, np.ascontiguousarray(arr[:, ::-1] if flip else arr),
                                 affine)
        (tmp / MARKER).write_text(json.dumps(wanted, indent=2, sort_keys=True))
        if _state(root, wanted) == "same":  # another process finished the same job meanwhile
            return root
        old = root.parent / f".{root.name}.old-{uuid.uuid4().hex[:8]}"
        if root.exists():
            os.rename(root, old)
        os.rename(tmp, root)
        shutil.rmtree(old, ignore_errors=True)
        logger.info("wrote %d %s phantoms into %s", len(_plan(cfg)), cfg.layout, root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root


def phantoms(cfg: DataConfig) -> CaseCollection:
    """Synthetic coronary CTA written into data.root (idempotent), read as ASOCA or ImageCAS."""
    if cfg.root is None:
        raise LayoutError(None, "data.root is not set: layout 'phantoms' needs a folder to "
                                "write the synthetic dataset into (--set data.root=/some/dir)")
    from samtune.data.layouts.registry import (
        LAYOUTS,  # the registry imports this module
    )

    pcfg = cfg.phantoms or PhantomConfig()
    written = write_dataset(Path(os.path.abspath(cfg.root)), pcfg)
    collection = LAYOUTS[pcfg.layout](cfg.model_copy(update={"root": Path(written)}))
    collection.layout = f"phantoms({pcfg.layout})"
    return collection
