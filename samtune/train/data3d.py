"""Training and validation crops of the 3D export (`samtune.data.export3d`) for SAM-Med3D.

One item per crop, S = the model's img_size (128 for the released weights):

    image     1×S×S×S float32 raw intensities of the model grid (1.5 mm RAS); CT clamped to
              [-1000, 1000] HU as upstream's training loader does (`tio.Clamp` for CT); never
              normalised here: `model.normalize` (per-crop z-score over voxels > 0) runs on
              the batch, as at inference
    masks     K×S×S×S bool, one per class with at least `min_voxels` voxels in the crop
    labels    K int64 class ids
    image_id  int (the item index); case_id str; key str (case/epoch/index of the crop)

How crops are cut (uni-medical/SAM-Med3D `utils/data_loader.py`, torchio `CropOrPad`, windows
from `samtune.data.grid3d`, voxels outside the volume padded with 0 as CropOrPad pads):

- train, foreground (probability `foreground_fraction`): a class present in the case, then a
  uniformly drawn voxel of it; the window CropOrPad cuts around that one voxel (upstream's
  "pcc" crop: random click point), so the structure is seen off-centre too.
- train, background: a uniform voxel of the whole grid as the window's centre (the model must
  learn to answer "nothing here" only through the prompts: a crop where no class reaches
  `min_voxels` has K = 0 and trains nothing but is counted, as empty 2D slices are).
- val (and `deterministic=True`): one crop per (case, class present), `mask_window` of that
  class — exactly upstream's `CropOrPad(mask_name="label")` — holding that class only.

`min_voxels` defaults to upstream's threshold (a crop whose label sum is ≤ 500 voxels at 128³ is
redrawn) scaled to S³. Augmentation (train only, `train.augment`): MONAI's `Affine` (rotation
about every axis, isotropic scale, shift as a fraction of S; image bilinear, masks nearest, 0
outside), flips per axis where enabled (flip_x → axis 0, flip_y → axis 1; upstream flips all
three, off here by default because laterality matters), gamma on the crop's [min, max] range
and Gaussian noise of noise_std × that range. Brightness and contrast are not applied: the
per-crop z-score cancels any affine change of intensity. Every draw comes from
`slice_generator(seed, epoch, index)`, so a seed gives the same crops on every run and resume.
"""
from __future__ import annotations

import logging
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from samtune.config import AugmentConfig
from samtune.data.cases import DataError
from samtune.data.export3d import FOLDER, INDEX, load_index, read_case3d
from samtune.data.grid3d import CropWindow, crop, mask_window, point_window
from samtune.train.augment import slice_generator

__all__ = ["CropDataset", "load_crop_data", "upstream_min_voxels"]
log = logging.getLogger(__name__)
CT_CLAMP = (-1000.0, 1000.0)  # upstream's tio.Clamp for CT cases


def upstream_min_voxels(size: int) -> int:
    """Upstream's 500-voxel threshold at 128³, scaled to an S³ crop (at least 1)."""
    return max(1, int(round(500 * (int(size) / 128) ** 3)))


@lru_cache(maxsize=8)
def _read(folder: str, case_id: str) -> tuple[np.ndarray, np.ndarray]:
    image, label, _ = read_case3d(folder, case_id)
    return image, np.asarray(label)


class CropDataset(Dataset):
    """Crops of one split of `<root>/volumes3d` (see the module docstring).

    samples_per_case: train crops per labelled case and epoch. foreground_fraction: share of
    them centred on a class voxel. classes: the class ids to train (None: every class of the
    index, else every non-zero label value). Raises DataError naming index.json when the split
    holds no labelled case or no foreground at all."""

    normalization = None  # the model's own (per-crop z-score)

    def __init__(self, root: str | Path, split: str, crop_size: int, *,
                 samples_per_case: int = 4, foreground_fraction: float = 0.75,
                 augment: AugmentConfig | None = None, seed: int = 0,
                 classes: list[int] | None = None, deterministic: bool = False,
                 min_voxels: int | None = None):
        root = Path(root)
        self.folder = root if (root / INDEX).is_file() else root / FOLDER
        index = load_index(self.folder)
        self.split, self.size, self.seed, self.epoch = split, int(crop_size), int(seed), 0
        self.deterministic = deterministic
        self.augment = augment if augment is not None and augment.enabled and not deterministic \
            else None
        self.foreground_fraction = float(foreground_fraction)
        self.min_voxels = upstream_min_voxels(self.size) if min_voxels is None else min_voxels
        named = index.get("classes") or {}
        self.categories = {int(k): str(v) for k, v in named.items()}
        self.records = {cid: rec for cid, rec in sorted(index["cases"].items())
                        if rec.get("split") == split and rec.get("label")}
        self.case_ids = list(self.records)
        wanted = set(classes) if classes is not None else (set(self.categories) or None)
        self.present = {cid: self._classes_of(cid, wanted) for cid in self.case_ids}
        if not any(self.present.values()):
            raise DataError(self.folder / INDEX, f"split '{split}': no labelled case with "
                                                 f"foreground ({len(self.case_ids)} case(s))")
        if deterministic:
            self.items = [(cid, c) for cid in self.case_ids for c in self.present[cid]]
        else:
            self.items = [(cid, None) for cid in self.case_ids if self.present[cid]
                          for _ in range(int(samples_per_case))]

    def _classes_of(self, case_id: str, wanted: set[int] | None) -> list[int]:
        _, label = _read(str(self.folder), case_id)
        values = [int(v) for v in np.unique(label) if v != 0]
        return [v for v in values if wanted is None or v in wanted]

    def __len__(self) -> int:
        return len(self.items)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def window(self, index: int) -> tuple[str, CropWindow, list[int]]:
        """(case id, crop window on its model grid, classes kept) of item `index`."""
        case_id, cls = self.items[index]
        _, label = _read(str(self.folder), case_id)
        if cls is not None:
            return case_id, mask_window(label == cls, self.size), [cls]
        gen = slice_generator(self.seed, self.epoch, index)
        u = torch.rand(2, generator=gen, dtype=torch.float64).tolist()
        if u[0] < self.foreground_fraction:
            classes = self.present[case_id]
            c = classes[min(int(u[1] * len(classes)), len(classes) - 1)]
            where = np.argwhere(label == c)
            voxel = where[int(torch.randint(len(where), (1,), generator=gen))]
        else:
            voxel = [int(torch.randint(n, (1,), generator=gen)) for n in label.shape]
        return case_id, point_window(tuple(float(v) for v in voxel), self.size), \
            self.present[case_id]

    def __getitem__(self, index: int) -> dict[str, Any]:
        case_id, window, classes = self.window(index)
        image, label = _read(str(self.folder), case_id)
        x = crop(image, window, fill=0).astype(np.float32)
        if self.records[case_id].get("modality") == "CT":
            x = np.clip(x, *CT_CLAMP)
        lab = crop(label, window, fill=0)
        masks = torch.from_numpy(np.stack([lab == c for c in classes]))
        image_t = torch.from_numpy(x)[None]
        if self.augment is not None:
            from samtune.train.augment3d import augment_crop

            gen = slice_generator(self.seed + 1, self.epoch, index)
            image_t, masks = augment_crop(image_t, masks, self.augment, gen)
        keep = masks.flatten(1).sum(1) >= self.min_voxels
        labels = torch.tensor(classes, dtype=torch.int64)[keep]
        return {"image": image_t.float(), "masks": masks[keep].bool(), "labels": labels,
                "image_id": int(index), "case_id": case_id,
                "key": f"{self.split}/{case_id}/{self.epoch}/{index}"}


def load_crop_data(root: str | Path, crop_size: int, augment: AugmentConfig | None = None,
                   seed: int = 0, *, samples_per_case: int = 4,
                   foreground_fraction: float = 0.75) -> tuple[CropDataset, CropDataset | None]:
    """(train crops, deterministic val crops or None when the export has no labelled val case)
    of a 3D export (`root`: the dataset root or its volumes3d folder)."""
    train = CropDataset(root, "train", crop_size, samples_per_case=samples_per_case,
                        foreground_fraction=foreground_fraction, augment=augment, seed=seed)
    try:
        val = CropDataset(root, "val", crop_size, deterministic=True, seed=seed, min_voxels=1)
    except DataError as exc:
        log.warning("%s; validation is skipped", exc)
        val = None
    return train, val
