"""Frozen-encoder embedding cache: encode each slice once, store fp16 on disk, reuse every epoch.

With a frozen image encoder (method `frozen`, or `full` with image_encoder in `freeze`, or LoRA
targeting only the decoder) a slice's embedding never changes during training, so it is computed
once. What that saves depends on where the step's time goes (bench/train.py, SAM ViT-B at 1024²,
frozen encoder): on 16 CPU cores the encoder is ~4.6 s of a ~5 s slice and cached epochs are ~15×
faster; on an H100 the encoder (~50 ms) is about as long as the decoder's launch-bound training
step (~45 ms), so ~1.7×; for the tiny test models it saves nothing. An entry is ~2 MB (ViT-B
256×64×64 fp16). The cache key has three parts, and changing any of them is a miss:

    weights     sha256 over every tensor `encode` uses (`encoder_state`, `weights_hash`)
    preprocess  img_size + normalisation mean/std (`preprocess_key`)
    slice       the dataset's key: fingerprint / split / image id / sha256 of the PNG bytes

Layout: `root/<weights[:16]>-<preprocess[:16]>/meta.json` (what the folder holds) and
`…/shards/*.pt`, many slices per file in fp16, memory-mapped (`samtune.train.embedding_store`).
Embeddings handed out are always the fp16-rounded values cast back to float32, so the first
epoch (computed) and later ones (read) see identical inputs.
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn
from torch.utils.data import Dataset

from samtune.atomic import atomic_write_text
from samtune.models.base import Embeddings, PromptableModel
from samtune.models.normalization import normalize
from samtune.train.embedding_store import EmbeddingStore

__all__ = ["EmbeddingCache", "EmbeddingStore", "CachedEmbeddingDataset", "weights_hash",
           "preprocess_key", "encoder_state", "encoder_is_frozen", "with_embeddings",
           "cache_embeddings"]
logger = logging.getLogger(__name__)


def weights_hash(weights: nn.Module | Mapping[str, torch.Tensor]) -> str:
    """sha256 over a module's state dict (or a name → tensor mapping): each entry's name, dtype,
    shape and raw bytes, in name order. Deterministic across runs and devices; any changed value,
    shape or dtype changes it."""
    state = weights.state_dict() if isinstance(weights, nn.Module) else weights
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name]
        h.update(f"{name}:".encode())
        if not isinstance(t, torch.Tensor):  # e.g. a quantisation config object
            h.update(repr(t).encode())
            continue
        t = t.detach().to("cpu").contiguous()
        h.update(f"{t.dtype}:{tuple(t.shape)}:".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().data)
    return h.hexdigest()


def preprocess_key(img_size: int, mean: Sequence[float] | None, std: Sequence[float] | None,
                   preprocess: str = "sam") -> dict[str, Any]:
    """The preprocessing part of the key: input size, the family's input path
    (`samtune.models.preprocess`) and the normalisation (0–255 units; None: the family's)."""
    key: dict[str, Any] = {"img_size": int(img_size), "preprocess": preprocess}
    if mean is not None and std is not None:
        key.update(mean=[round(float(m), 6) for m in mean], std=[round(float(s), 6) for s in std])
    return key


def encoder_state(model: PromptableModel) -> dict[str, torch.Tensor]:
    """Every tensor `model.encode_backbone` (what the cache stores) depends on, by name: the
    image encoder's state. SAM2's conv_s0/conv_s1 and no_mem_embed come after, in
    `Sam2Wrapper.finish`, so they may train over cached embeddings. A wrapper may list its own
    with `encode_modules()` → {prefix: module}."""
    custom = getattr(model, "encode_modules", None)
    modules = dict(custom()) if callable(custom) else {"image_encoder": model.image_encoder}
    return {f"{prefix}.{k}": v for prefix, mod in modules.items()
            for k, v in mod.state_dict(keep_vars=True).items()}


def encoder_is_frozen(model: PromptableModel) -> bool:
    """True when nothing `encode_backbone` depends on is trainable (`encoder_state`): a
    LoRA-adapted encoder is not frozen."""
    return not any(getattr(t, "requires_grad", False) for t in encoder_state(model).values())


class EmbeddingCache:
    """Cache of `model.encode` outputs for one model's encoder weights and one preprocessing.

    root: the cache root (e.g. `<stack.home>/embeddings`); preprocess_key: `preprocess_key(…)`.
    The weights hash is taken once, here: build the cache after loading the checkpoint and
    applying the fine-tuning method.
    """

    def __init__(self, root: Path, model: PromptableModel, preprocess_key: dict[str, Any]):
        self.model = model
        self.weights = weights_hash(encoder_state(model))
        self.preprocess = dict(preprocess_key)
        prep = hashlib.sha256(json.dumps(self.preprocess, sort_keys=True).encode()).hexdigest()
        self.store = EmbeddingStore(Path(root) / f"{self.weights[:16]}-{prep[:16]}")
        self.hits = self.misses = 0
        meta = self.store.folder / "meta.json"
        if not meta.is_file():
            self.store.folder.mkdir(parents=True, exist_ok=True)
            text = json.dumps({"weights_sha256": self.weights, "preprocess": self.preprocess,
                               "family": getattr(model, "family", ""), "dtype": "float16"},
                              indent=1)
            atomic_write_text(meta, text)

    @property
    def folder(self) -> Path:
        return self.store.folder

    def get_or_compute(self, images: torch.Tensor, keys: Sequence[str],
                       flush: bool = True) -> Embeddings:
        """images B×3×S×S (normalised, on the model's device) + B slice keys → Embeddings
        (batch B, float32, on images' device). Misses are encoded together in one batch under
        no_grad with the model in eval mode and stored (written now if `flush`, else with the
        next full shard or `store.flush()`); hits are read."""
        if len(keys) != images.shape[0]:
            raise ValueError(f"{len(keys)} keys for {images.shape[0]} images")
        found = [self.store.load(k) for k in keys]
        missing = [i for i, e in enumerate(found) if e is None]
        self.hits += len(keys) - len(missing)
        self.misses += len(missing)
        if missing:
            was_training = self.model.training
            self.model.eval()
            try:
                with torch.no_grad():
                    emb = self.model.encode_backbone(images[missing])
            finally:
                self.model.train(was_training)
            for j, i in enumerate(missing):
                self.store.save(keys[i], emb.select(j), flush=False)
                found[i] = self.store.load(keys[i])  # the stored fp16 values, as a hit reads
            if flush:
                self.store.flush()
        out = _cat(found)  # type: ignore[arg-type]
        return out.to(images.device, torch.float32)

    def build(self, dataset: Dataset, batch_size: int,
              normalize: Callable[[torch.Tensor], torch.Tensor],
              device: torch.device | str | None = None) -> dict[str, float]:
        """Encode every slice of `dataset` not yet cached (a SliceDataset: items with "image"
        0–255 and "key") with the model on `device` (it is moved there; None: where it is);
        returns {"slices", "computed", "seconds"}. A hit costs hashing its PNG; the shards are
        written as they fill, and the last one before returning."""
        if device is not None:
            self.model.to(device)
        t0, computed = time.perf_counter(), 0
        key_of = getattr(dataset, "key", None)  # SliceDataset.key: hash the PNG, decode nothing
        batch: list[dict[str, Any]] = []
        try:
            for i in range(len(dataset)):  # type: ignore[arg-type]
                item = None if callable(key_of) else dataset[i]
                if (key_of(i) if item is None else item["key"]) in self.store:
                    continue
                batch.append(dataset[i] if item is None else item)
                if len(batch) == batch_size:
                    computed += self._encode_items(batch, normalize)
                    batch = []
            if batch:
                computed += self._encode_items(batch, normalize)
        finally:
            self.store.flush()
        seconds = time.perf_counter() - t0
        logger.info("embedding cache %s: %d slices, %d computed in %.1f s", self.folder,
                    len(dataset), computed, seconds)  # type: ignore[arg-type]
        return {"slices": len(dataset), "computed": computed,  # type: ignore[arg-type]
                "seconds": seconds}

    def _encode_items(self, items: list[dict[str, Any]], normalize: Callable) -> int:
        param = next(self.model.parameters())
        images = normalize(torch.stack([it["image"] for it in items]).to(param.device))
        images = images.to(param.dtype)
        self.get_or_compute(images, [it["key"] for it in items], flush=False)
        return len(items)


def _cat(embs: Sequence[Embeddings]) -> Embeddings:
    return Embeddings(torch.cat([e.image for e in embs]),
                      [torch.cat(level) for level in zip(*(e.high_res for e in embs))],
                      embs[0].raw)


class CachedEmbeddingDataset(Dataset):
    """A slice dataset whose items carry `embeddings` (Embeddings, batch 1, float32) read from
    the cache instead of the image (a SliceDataset's pixels are not decoded), so `collate` adds
    `batch["embeddings"]` and the loop runs only the prompt encoder and decoder. Build the cache
    first (`EmbeddingCache.build`); a slice that is not cached raises KeyError. Holds only the
    store, so it is safe in DataLoader workers."""

    def __init__(self, dataset: Dataset, cache: EmbeddingCache | EmbeddingStore):
        self.dataset = dataset
        self.store = cache.store if isinstance(cache, EmbeddingCache) else cache
        self.normalization = getattr(dataset, "normalization", None)

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> dict[str, Any]:
        item_of = getattr(self.dataset, "item", None)  # SliceDataset: targets, no pixels
        pixel_free = callable(item_of) and getattr(self.dataset, "augment", None) is None
        item = item_of(index, pixels=False) if pixel_free else self.dataset[index]
        emb = self.store.load(item["key"])
        if emb is None:  # written by another process since this one indexed the folder?
            self.store.refresh()
            emb = self.store.load(item["key"])
        if emb is None:
            raise KeyError(f"slice {item['key']} is not in the embedding cache {self.store.folder};"
                           " run EmbeddingCache.build(dataset, …) first")
        return {**item, "embeddings": emb}


def with_embeddings(batch: dict[str, Any], cache: EmbeddingCache,
                    normalize: Callable[[torch.Tensor], torch.Tensor]) -> dict[str, Any]:
    """Add `batch["embeddings"]` (from the cache, computing misses) to a collated batch whose
    `images` are on the model's device; returns the same dict."""
    if "embeddings" not in batch:
        batch["embeddings"] = cache.get_or_compute(normalize(batch["images"]), batch["keys"])
    return batch


def cache_embeddings(dataset: Dataset, model: PromptableModel, root: Path, *, enabled: bool = True,
                     batch_size: int = 8, device: torch.device | str | None = None) -> Dataset:
    """`dataset` with cached embeddings (`CachedEmbeddingDataset`, cache built now) when
    `enabled` and the encoder is frozen (`encoder_is_frozen`); else `dataset` unchanged. The
    normalisation is the dataset's `normalization` (mean, std) if set, else the model's own
    (`model.normalize`, keyed by its preprocessing)."""
    if not enabled or not encoder_is_frozen(model):
        logger.info("embedding cache off (%s)", "disabled" if not enabled else "encoder trains")
        return dataset
    stats = getattr(dataset, "normalization", None)
    mean, std = stats if stats is not None else (None, None)
    norm = model.normalize if stats is None else (lambda x: normalize(x, mean, std))
    cache = EmbeddingCache(root, model, preprocess_key(model.img_size, mean, std,
                                                       model.preprocess))
    cache.build(dataset, batch_size, norm, device)
    return CachedEmbeddingDataset(dataset, cache)
