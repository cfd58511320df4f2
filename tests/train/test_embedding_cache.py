"""EmbeddingCache: hits/misses per key part, fp16 round trip, SAM2 high-res levels, wrappers."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from samtune.models.base import PromptableModel, Prompts
from samtune.models.registry import build_architecture
from samtune.train.data import SliceDataset, collate, make_loader, normalize
from samtune.train.embedding_cache import (CachedEmbeddingDataset, EmbeddingCache,
                                           EmbeddingStore, cache_embeddings, encoder_is_frozen,
                                           encoder_state, preprocess_key, weights_hash,
                                           with_embeddings)
from tests.train.test_data import make_slices, write_split

S = 64
IMAGENET = ((123.675, 116.28, 103.53), (58.395, 57.12, 57.375))


def tiny(seed: int = 0, size: int = S) -> PromptableModel:
    torch.manual_seed(seed)
    return build_architecture("sam_tiny", size).eval()


def count_files(cache: EmbeddingCache) -> int:
    """Slices stored (in the shards on disk: a fresh store reads the folder)."""
    return len(EmbeddingStore(cache.folder))


def test_weights_hash_is_deterministic_and_sensitive():
    a, b = tiny(0), tiny(0)
    assert weights_hash(a.image_encoder) == weights_hash(b.image_encoder)
    assert weights_hash(a.image_encoder) != weights_hash(tiny(1).image_encoder)
    h = weights_hash(a.image_encoder)
    assert len(h) == 64 and int(h, 16) >= 0
    with torch.no_grad():
        next(b.image_encoder.parameters()).view(-1)[0] += 1e-6
    assert weights_hash(b.image_encoder) != h
    assert weights_hash(a.image_encoder.half()) != h  # dtype is part of the hash


def test_get_or_compute_misses_then_hits_with_identical_values(tmp_path):
    model = tiny()
    images = normalize(torch.rand(3, 3, S, S) * 255, *IMAGENET)
    cache = EmbeddingCache(tmp_path, model, preprocess_key(S, *IMAGENET))
    first = cache.get_or_compute(images, ["a", "b", "c"])
    assert (cache.misses, cache.hits, count_files(cache)) == (3, 0, 3)
    with torch.no_grad():
        exact = model.encode(images).image
    assert first.image.dtype == torch.float32 and first.image.shape == exact.shape
    assert torch.equal(first.image, exact.half().float())  # fp16-rounded, as stored
    again = cache.get_or_compute(images[[2, 0]], ["c", "a"])
    assert (cache.misses, cache.hits) == (3, 2)
    assert torch.equal(again.image, first.image[[2, 0]])  # read == computed, bit for bit
    shard = cache.store.shard_of("a")
    stored = torch.load(shard, map_location="cpu", weights_only=True)["entries"]
    assert len(stored) == 3 and shard == cache.store.shard_of("c")  # one shard for the batch
    (entry,) = [e for e in stored.values() if torch.equal(e["image"].float(), first.image[0])]
    assert entry["image"].dtype == torch.float16 and entry["high_res"] == []
    mixed = cache.get_or_compute(images[[1, 0]], ["b", "new"])  # only "new" is encoded
    assert (cache.misses, cache.hits) == (4, 3) and torch.equal(mixed.image[0], first.image[1])
    assert torch.allclose(mixed.image[1], first.image[0], atol=1e-2)  # batch 1 vs 3: ~1 ulp


@pytest.mark.parametrize("change", ["weights", "img_size", "mean", "std"])
def test_each_key_part_changes_the_folder(tmp_path, change):
    model = tiny()
    base = EmbeddingCache(tmp_path, model, preprocess_key(S, *IMAGENET))
    base.get_or_compute(torch.zeros(1, 3, S, S), ["k"])
    mean, std, size = list(IMAGENET[0]), list(IMAGENET[1]), S
    if change == "weights":
        with torch.no_grad():
            model.image_encoder.patch_embed.proj.bias[0] += 0.5
    elif change == "img_size":
        size = 2 * S
    elif change == "mean":
        mean[1] += 0.01
    else:
        std[2] *= 2
    other = EmbeddingCache(tmp_path, model, preprocess_key(size, mean, std))
    assert other.folder != base.folder and other.store.load("k") is None
    other.get_or_compute(torch.zeros(1, 3, S, S), ["k"])
    assert other.misses == 1
    same = EmbeddingCache(tmp_path, tiny() if change != "weights" else model,
                          preprocess_key(size, mean, std))
    assert same.store.load("k") is not None  # the same key parts → the same folder → a hit


def test_image_content_changes_the_slice_key(tmp_path):
    write_split(tmp_path / "s", make_slices(2))
    ds = SliceDataset(tmp_path / "s", S)
    cache = EmbeddingCache(tmp_path / "cache", tiny(), preprocess_key(S, *IMAGENET))
    assert cache.build(ds, 2, lambda x: normalize(x, *IMAGENET))["computed"] == 2
    assert cache.build(ds, 2, lambda x: normalize(x, *IMAGENET))["computed"] == 0
    old_key = ds.key(0)
    path = tmp_path / "s" / "images" / ds.records[0]["file_name"]
    Image.fromarray(np.full((32, 32), 7, np.uint8)).save(path)  # same id and name, new pixels
    assert ds.key(0) != old_key and ds.key(0).split("/")[:3] == old_key.split("/")[:3]
    assert cache.build(ds, 2, lambda x: normalize(x, *IMAGENET))["computed"] == 1


def test_sam2_raw_levels_are_cached_and_projected_at_decode(tmp_path):
    torch.manual_seed(0)
    model = build_architecture("sam2_tiny", S).eval()
    model.requires_grad_(False)
    key = preprocess_key(S, *IMAGENET)
    cache = EmbeddingCache(tmp_path, model, key)
    images = torch.randn(2, 3, S, S)
    first = cache.get_or_compute(images, ["x", "y"])
    again = cache.get_or_compute(images, ["x", "y"])
    assert (cache.misses, cache.hits) == (2, 2) and again.raw
    with torch.no_grad():  # the cache holds the neck's levels, before conv_s0 / conv_s1
        raw = model.encode_backbone(images)
        exact = model.encode(images)
    assert [h.shape for h in again.high_res] == [h.shape for h in raw.high_res]
    for a, b in zip(again.high_res, raw.high_res):
        assert torch.allclose(a, b, atol=1e-2, rtol=1e-2)
    finished = model.finish(again)
    for a, c in zip(finished.high_res, exact.high_res):
        assert torch.allclose(a, c, atol=2e-2, rtol=2e-2)
    box = Prompts(boxes=torch.tensor([[4.0, 4.0, 40.0, 40.0]]))
    with torch.no_grad():  # decoding raw cached embeddings = decoding encode()'s output
        from_cache, _ = model.decode(again, 1, box)
        direct, _ = model.decode(exact, 1, box)
    assert torch.allclose(from_cache, direct, atol=5e-2, rtol=5e-2)
    # conv_s0 and no_mem_embed are applied after the cache: not key parts (they may train)
    assert not {"mask_decoder.conv_s0.weight", "no_mem_embed"} & encoder_state(model).keys()
    with torch.no_grad():
        model.mask_decoder.conv_s0.bias[0] += 1.0
        model.no_mem_embed += 1.0
    assert EmbeddingCache(tmp_path, model, key).folder == cache.folder
    with torch.no_grad():
        next(model.image_encoder.parameters()).add_(1.0)  # the encoder is: a new folder
    assert EmbeddingCache(tmp_path, model, key).folder != cache.folder


def test_sam2_frozen_encoder_with_training_decoder_gets_the_cache():
    model = build_architecture("sam2_tiny", S)
    model.image_encoder.requires_grad_(False)  # method frozen: the decoder (conv_s0/s1) trains
    assert encoder_is_frozen(model)
    model.image_encoder.requires_grad_(True)
    assert not encoder_is_frozen(model)


def test_cached_dataset_and_with_embeddings(tmp_path):
    write_split(tmp_path / "s", make_slices(5))
    ds = SliceDataset(tmp_path / "s", S)
    model = tiny()
    model.train()
    norm = lambda x: normalize(x, *IMAGENET)  # noqa: E731
    cache = EmbeddingCache(tmp_path / "cache", model, preprocess_key(S, *IMAGENET))
    with pytest.raises(KeyError, match="not in the embedding cache"):
        CachedEmbeddingDataset(ds, cache)[0]
    stats = cache.build(ds, 2, norm)
    assert stats["slices"] == 5 and stats["computed"] == 5 and model.training  # mode restored
    assert len(list(cache.store.shard_dir.glob("*.pt"))) == 1  # three encode batches, one file
    loader = make_loader(CachedEmbeddingDataset(ds, cache), 3, shuffle=False)
    batch = next(iter(loader))
    plain = collate([ds[i] for i in range(3)])
    assert batch["embeddings"].image.shape == (3, 64, 4, 4)
    assert "images" not in batch  # the embeddings stand in: no pixels decoded or collated
    assert all(torch.equal(a, b) for a, b in zip(batch["masks"], plain["masks"]))
    assert batch["keys"] == plain["keys"] and batch["labels"][0].tolist() == \
        plain["labels"][0].tolist()
    with torch.no_grad():
        model.eval()
        exact = model.encode(norm(plain["images"])).image
    assert torch.allclose(batch["embeddings"].image, exact, atol=2e-2, rtol=1e-2)
    plain = with_embeddings(plain, cache, norm)
    assert torch.equal(plain["embeddings"].image, batch["embeddings"].image)


def test_corrupt_file_is_recomputed(tmp_path):
    cache = EmbeddingCache(tmp_path, tiny(), preprocess_key(S, *IMAGENET))
    images = torch.randn(1, 3, S, S)
    good = cache.get_or_compute(images, ["k"])
    cache.store.shard_of("k").write_bytes(b"truncated")
    again = EmbeddingCache(tmp_path, tiny(), preprocess_key(S, *IMAGENET))  # a later run
    assert torch.equal(again.get_or_compute(images, ["k"]).image, good.image)
    assert again.misses == 1 and not list(cache.folder.rglob("*.tmp"))
    assert EmbeddingStore(cache.folder).load("k") is not None  # the shard was written anew


def test_encoder_is_frozen():
    model = tiny()
    assert not encoder_is_frozen(model)
    model.image_encoder.requires_grad_(False)
    assert encoder_is_frozen(model)
    model.image_encoder.blocks[0].attn.qkv.register_parameter(
        "lora_a", torch.nn.Parameter(torch.zeros(2, 64)))  # an adapter inside the encoder
    assert not encoder_is_frozen(model)


def test_cache_embeddings_only_when_enabled_and_frozen(tmp_path):
    write_split(tmp_path / "s", make_slices(3))
    ds = SliceDataset(tmp_path / "s", S, normalization_stats=((10.0,) * 3, (20.0,) * 3))
    model = tiny()
    assert cache_embeddings(ds, model, tmp_path / "c") is ds  # encoder trains
    model.image_encoder.requires_grad_(False)
    assert cache_embeddings(ds, model, tmp_path / "c", enabled=False) is ds
    cached = cache_embeddings(ds, model, tmp_path / "c", batch_size=2)
    assert isinstance(cached, CachedEmbeddingDataset) and cached.normalization == ds.normalization
    item = cached[1]
    assert "image" not in item and torch.equal(item["masks"], ds[1]["masks"])
    with torch.no_grad():
        exact = model.encode(normalize(ds[1]["image"][None], (10.0,) * 3, (20.0,) * 3)).image
    assert torch.allclose(item["embeddings"].image, exact, atol=1e-2, rtol=1e-2)
    folder = next(p for p in (tmp_path / "c").iterdir())
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["preprocess"] == {"img_size": S, "preprocess": "sam", "mean": [10.0] * 3,
                                  "std": [20.0] * 3}
