"""Training slices from an export: `<dataset>/{train,val,test}/images/*.png` + `annotations.json`.

One item per image record (COCO, written by `samtune.data.export`):

    image     3×S×S float32 on the 0–255 scale: the slice's content (the record's
              transform.resized_shape, without convert's padding; grey PNGs replicated to 3
              channels) resized to S = the model's img_size exactly as the family's official
              inference resizes it (`samtune.models.preprocess.resize_to_model`; SAM: longest
              side + padding that normalises to 0), so `model.normalize` of it is upstream's input
    masks     K×S×S bool, one per annotation (connected component of one class), decoded from
              RLE (or polygons) with pycocotools; taken to the model grid alike (nearest; an
              instance left with no pixel on the model's grid is dropped)
    labels    K int64 category ids
    image_id  int; case_id str; key str: the slice's identity for the embedding cache
              (dataset fingerprint, split, image id and sha256 of the PNG bytes)

Images without instances are kept with K = 0 (empty-slice negatives matter for validation; the
loop skips prompting and mask decoding for them). Images stay on the 0–255 scale here;
normalisation happens on the batch: `model.normalize` (the family's own rule) by default, or
(mean, std) from `train.normalization: imagenet | dataset` (the train-split statistics of
dataset.json).
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from torch.utils.data import DataLoader, Dataset

from samtune.config import AugmentConfig
from samtune.data.cases import DataError
from samtune.data.datasets import read_coco_json
from samtune.models.base import Embeddings, PromptableModel
from samtune.models.normalization import (
    Triple,
    dataset_normalization,
    normalize,
    resolve_normalization,
    triples,
)
from samtune.models.preprocess import get_preprocessing, masks_to_model, resize_to_model
from samtune.train.augment import augment_slice, slice_generator

__all__ = ["SliceDataset", "collate", "make_loader", "dataset_normalization",
           "resolve_normalization", "normalize", "load_training_data"]
logger = logging.getLogger(__name__)



class SliceDataset(Dataset):
    """The slices of one split folder; see the module docstring for an item's fields.

    split_dir: folder holding `annotations.json` and `images/`. Raises DataError naming the file
    when annotations.json is missing or malformed, or an image file is missing.
    augment: training augmentation (`samtune.train.augment`, drawn per slice and epoch from
    `seed`; `set_epoch` is called by the loop), None or disabled: none.
    normalization_stats: optional (mean, std) on the 0–255 scale, or dataset.json's `stats` dict
    (mean_255/std_255), kept as `self.normalization` = (mean, std) triples for the loop (items
    are never normalised here); None: the model's own.
    """

    def __init__(self, split_dir: Path, img_size: int, *,
                 normalization_stats: tuple[Triple, Triple] | dict | None = None,
                 preprocess: str = "sam", augment: AugmentConfig | None = None,
                 seed: int = 0):
        self.split_dir = Path(split_dir)
        self.img_size = int(img_size)
        self.preprocessing = get_preprocessing(preprocess)
        self.augment = augment if augment is not None and augment.enabled else None
        self.seed, self.epoch = int(seed), 0
        self.normalization = triples(normalization_stats, self.split_dir)
        self.split = self.split_dir.name
        path = self.split_dir / "annotations.json"
        self.records, self.annotations, self.categories = _read_annotations(path)
        marker = self.split_dir.parent / "dataset.json"
        self.fingerprint = _fingerprint(marker)
        missing = [r["file_name"] for r in self.records
                   if not (self.split_dir / "images" / r["file_name"]).is_file()]
        if missing:
            raise DataError(self.split_dir / "images" / missing[0],
                            f"image file not found ({len(missing)} of {len(self.records)} missing)")

    @property
    def n_instances(self) -> int:
        return sum(len(a) for a in self.annotations)

    @property
    def n_positive(self) -> int:
        """Images with at least one instance."""
        return sum(1 for a in self.annotations if a)

    def __len__(self) -> int:
        return len(self.records)

    def set_epoch(self, epoch: int) -> None:
        """Augmentation of this epoch (`augment.slice_generator(seed, epoch, index)`)."""
        self.epoch = int(epoch)

    def key(self, index: int, raw: bytes | None = None) -> str:
        """Slice identity for the embedding cache: fingerprint/split/image id/sha256 of the PNG."""
        rec = self.records[index]
        if raw is None:
            raw = (self.split_dir / "images" / rec["file_name"]).read_bytes()
        return f"{self.fingerprint}/{self.split}/{rec['id']}/{hashlib.sha256(raw).hexdigest()[:32]}"

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.item(index)

    def item(self, index: int, pixels: bool = True) -> dict[str, Any]:
        """One slice: image 3×S×S (0–255), masks K×S×S bool, labels K, ids and its cache key.
        pixels=False leaves the image out (no decode, no resize): for a slice whose embedding
        is cached, only the targets are needed. Not with augmentation, which moves the masks
        with the pixels."""
        if not pixels and self.augment is not None:
            raise ValueError("SliceDataset.item(pixels=False) with augmentation: the masks "
                             "move with the pixels, so the image must be decoded")
        rec, anns = self.records[index], self.annotations[index]
        path = self.split_dir / "images" / rec["file_name"]
        raw = path.read_bytes()
        with Image.open(io.BytesIO(raw)) as img:
            w, h = img.size  # the header only; the pixels are decoded next if wanted
            if pixels:
                image = np.asarray(img if img.mode in ("L", "RGB") else img.convert("RGB"))
        masks = _decode_masks(anns, h, w, path)
        nh, nw = (rec.get("transform") or {}).get("resized_shape", (h, w))
        masks = masks[:, :nh, :nw]  # convert's padding is not content
        if pixels:
            image = image[:nh, :nw]
            if image.ndim == 2:
                image = np.repeat(image[..., None], 3, axis=2)
            if self.augment is not None:
                gen = slice_generator(self.seed, self.epoch, index)
                image, masks, kept = augment_slice(image, masks, self.augment, gen)
                anns = [a for a, k in zip(anns, kept.tolist()) if k]
            image = resize_to_model(self.preprocessing, np.ascontiguousarray(image),
                                    self.img_size)
        masks = masks_to_model(self.preprocessing, masks, self.img_size)
        kept = masks.flatten(1).any(1)  # a component too small for the model grid is gone
        if not bool(kept.all()):
            masks, anns = masks[kept], [a for a, k in zip(anns, kept.tolist()) if k]
        labels = torch.tensor([a["category_id"] for a in anns], dtype=torch.int64)
        out = {"masks": masks, "labels": labels, "image_id": int(rec["id"]),
               "case_id": str(rec.get("case_id", "")), "key": self.key(index, raw)}
        return {"image": image, **out} if pixels else out


def _read_annotations(path: Path) -> tuple[list[dict], list[list[dict]], dict[int, str]]:
    """annotations.json → image records sorted by id, per record its annotations (by id), and
    category id → name."""
    coco = read_coco_json(path)
    anns = coco.get("annotations", [])
    if not isinstance(anns, list):
        raise DataError(path, "malformed annotations.json: 'annotations' is not a list")
    by_id: dict[int, list[dict]] = {}
    for rec in coco["images"]:
        if not isinstance(rec, dict) or not {"id", "file_name"} <= rec.keys():
            raise DataError(path, f"malformed image record (needs id, file_name): {str(rec)[:120]}")
        if rec["id"] in by_id:
            raise DataError(path, f"duplicate image id {rec['id']}")
        by_id[rec["id"]] = []
    for ann in anns:
        needed = {"image_id", "category_id", "segmentation"}
        if not isinstance(ann, dict) or not needed <= ann.keys():
            raise DataError(path, "malformed annotation (needs image_id, category_id, "
                                  f"segmentation): {str(ann)[:120]}")
        if ann["image_id"] not in by_id:
            raise DataError(path, f"annotation {ann.get('id')} refers to unknown image "
                                  f"{ann['image_id']}")
        by_id[ann["image_id"]].append(ann)
    records = sorted(coco["images"], key=lambda r: r["id"])
    return (records, [sorted(by_id[r["id"]], key=lambda a: a.get("id", 0)) for r in records],
            _categories(path, coco.get("categories") or []))


def _categories(path: Path, cats: list[dict[str, Any]]) -> dict[int, str]:
    try:
        return {int(c["id"]): str(c.get("name", c["id"])) for c in cats}
    except (TypeError, KeyError, ValueError):
        raise DataError(path, "malformed 'categories' (needs id per category)") from None


def _fingerprint(marker: Path) -> str:
    """The export's fingerprint from dataset.json ('' when absent: content hashes still key)."""
    try:
        return str(json.loads(marker.read_text()).get("fingerprint", ""))[:16]
    except (OSError, ValueError, AttributeError):
        return ""


def _decode_masks(anns: list[dict], h: int, w: int, image_path: Path) -> torch.Tensor:
    """COCO segmentations (compressed/uncompressed RLE or polygons) → K×h×w bool."""
    if not anns:
        return torch.zeros(0, h, w, dtype=torch.bool)
    rles = []
    for ann in anns:
        seg = ann["segmentation"]
        if isinstance(seg, list):  # polygons
            rles.append(mask_utils.merge(mask_utils.frPyObjects(seg, h, w)))
        elif isinstance(seg, dict) and isinstance(seg.get("counts"), list):
            rles.append(mask_utils.frPyObjects(seg, *seg["size"]))
        elif isinstance(seg, dict) and "counts" in seg and "size" in seg:
            counts = seg["counts"]
            rles.append({"size": seg["size"],
                         "counts": counts.encode() if isinstance(counts, str) else counts})
        else:
            raise DataError(image_path, f"annotation {ann.get('id')}: unknown segmentation format")
        if list(rles[-1]["size"]) != [h, w]:
            raise DataError(image_path, f"annotation {ann.get('id')}: mask size "
                                        f"{list(rles[-1]['size'])} ≠ image size {[h, w]}")
    masks = mask_utils.decode(rles)  # h×w×K uint8, Fortran order
    return torch.from_numpy(np.ascontiguousarray(masks.transpose(2, 0, 1))).bool()


def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Items → the loop's batch: images B×3×S×S (absent when the items carry none: cached
    embeddings stand in), masks (list of K_b×S×S bool), labels (list of K_b), image_ids,
    case_ids, keys, and `embeddings` (Embeddings, batch B) when items have them."""
    batch: dict[str, Any] = {
        "masks": [it["masks"] for it in items],
        "labels": [it["labels"] for it in items],
        "image_ids": [it["image_id"] for it in items],
        "case_ids": [it["case_id"] for it in items],
        "keys": [it["key"] for it in items],
    }
    if all("image" in it for it in items):
        batch["images"] = torch.stack([it["image"] for it in items])
    if all("embeddings" in it for it in items):
        embs: list[Embeddings] = [it["embeddings"] for it in items]
        batch["embeddings"] = Embeddings(torch.cat([e.image for e in embs]),
                                         [torch.cat(level) for level in
                                          zip(*(e.high_res for e in embs))], embs[0].raw)
    return batch


def make_loader(dataset: Dataset, batch_size: int, *, shuffle: bool,
                generator: torch.Generator | None = None, num_workers: int = 0) -> DataLoader:
    """DataLoader with `collate`. The shuffle order (and the workers' base seed) is drawn from
    `generator` when an epoch's iteration starts: save `generator.get_state()` before iterating
    and restore it (then skip the batches already done) for an exact resume."""
    if shuffle and generator is None:
        raise ValueError("make_loader(shuffle=True) needs an explicit torch.Generator")
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator,
                      num_workers=num_workers, collate_fn=collate, drop_last=False,
                      persistent_workers=False)


def load_training_data(dataset_dir: Path, img_size: int, normalization: str,
                       model: PromptableModel, augment: AugmentConfig | None = None,
                       seed: int = 0) -> tuple[SliceDataset, SliceDataset | None]:
    """(train, val) datasets of an export folder, both carrying `.normalization` ((mean, std),
    or None for the model's own) and the model's preprocessing.

    Raises DataError naming the folder when the train split has no slices or no instance at all;
    val is None (with a warning) when the export has no val slices.
    """
    dataset_dir = Path(dataset_dir)
    stats = resolve_normalization(normalization, model, dataset_dir / "dataset.json")
    pre = getattr(model, "preprocess", "sam")
    train = SliceDataset(dataset_dir / "train", img_size, normalization_stats=stats,
                         preprocess=pre, augment=augment, seed=seed)  # val: never augmented
    if len(train) == 0:
        raise DataError(train.split_dir, "no training slices: check split ratios / empty_slices")
    if train.n_instances == 0:
        raise DataError(train.split_dir, f"no positive training slices: {len(train)} slices but "
                                         "no annotation (labels empty or all below "
                                         "min_component_area?)")
    val_dir = dataset_dir / "val"
    val = SliceDataset(val_dir, img_size, normalization_stats=stats, preprocess=pre) \
        if (val_dir / "annotations.json").is_file() else None
    if val is None or len(val) == 0:
        logger.warning("%s: no validation slices; validation is skipped", val_dir)
        val = None
    return train, val
