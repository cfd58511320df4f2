"""EmbeddingStore: many slices per shard, shards rolled at a size, memory-mapped reads equal to
what was stored, pending entries readable, other processes' shards found, workers, old layout."""
from __future__ import annotations

import logging
import pickle

import pytest
import torch

from samtune.models.base import Embeddings
from samtune.train.embedding_store import EmbeddingStore

ENTRY_BYTES = (8 * 4 * 4 + 4 * 8 * 8) * 2  # image 8×4×4 + one high-res level 4×8×8, fp16


def emb(seed: int) -> Embeddings:
    g = torch.Generator().manual_seed(seed)
    return Embeddings(torch.randn(1, 8, 4, 4, generator=g), [torch.randn(1, 4, 8, 8, generator=g)])


def shards(store: EmbeddingStore) -> list:
    return sorted(store.shard_dir.glob("*.pt"))


def test_slices_share_a_shard_and_read_back_as_fp16_values(tmp_path):
    store = EmbeddingStore(tmp_path)
    store.save_many([(f"slice/{i}", emb(i)) for i in range(5)])
    assert len(shards(store)) == 1 and len(store) == 5
    again = EmbeddingStore(tmp_path)  # a later process: scans the folder, maps the shard
    for i in range(5):
        got, want = again.load(f"slice/{i}"), emb(i)
        assert got.image.dtype == torch.float32 and got.image.shape == (1, 8, 4, 4)
        assert torch.equal(got.image, want.image.half().float())
        assert torch.equal(got.high_res[0], want.high_res[0].half().float())
    assert again.load("slice/9") is None and "slice/9" not in again and "slice/0" in again
    assert again.load("slice/1", torch.float16).image.dtype == torch.float16
    assert again.nbytes() == shards(store)[0].stat().st_size > 5 * ENTRY_BYTES


def test_shards_roll_at_shard_bytes_and_pending_entries_are_readable(tmp_path):
    store = EmbeddingStore(tmp_path, shard_bytes=3 * ENTRY_BYTES)
    for i in range(7):
        store.save(f"k{i}", emb(i), flush=False)
        assert store.load(f"k{i}") is not None  # pending: served from memory
    assert len(shards(store)) == 2 and len(EmbeddingStore(tmp_path)) == 6  # k6 not yet written
    assert store.shard_of("k6") is None and store.shard_of("k0") != store.shard_of("k3")
    store.flush()
    assert len(shards(store)) == 3 and len(EmbeddingStore(tmp_path)) == 7
    assert store.flush() is None  # nothing pending


def test_shard_name_depends_only_on_its_slices(tmp_path):
    a, b = EmbeddingStore(tmp_path / "a"), EmbeddingStore(tmp_path / "b")
    a.save_many([("x", emb(0)), ("y", emb(1))])
    b.save_many([("y", emb(1)), ("x", emb(0))])  # another rank, other order, same slices
    assert [p.name for p in shards(a)] == [p.name for p in shards(b)]
    assert shards(a)[0].read_bytes() == shards(b)[0].read_bytes()


def test_refresh_finds_shards_written_by_another_process(tmp_path):
    reader, writer = EmbeddingStore(tmp_path), EmbeddingStore(tmp_path)
    assert reader.load("late") is None
    writer.save("late", emb(3))
    assert reader.load("late") is None  # indexed before the write
    reader.refresh()
    assert torch.equal(reader.load("late").image, emb(3).image.half().float())


def test_pickles_for_workers_only_when_flushed(tmp_path):
    store = EmbeddingStore(tmp_path, shard_bytes=1 << 30)
    store.save("a", emb(0), flush=False)
    with pytest.raises(RuntimeError, match="flush"):
        pickle.dumps(store)
    store.flush()
    copy = pickle.loads(pickle.dumps(store))
    assert copy.shard_bytes == 1 << 30 and torch.equal(copy.load("a").image, store.load("a").image)


def test_bad_shard_is_skipped_and_old_layout_warned(tmp_path, caplog):
    store = EmbeddingStore(tmp_path)
    store.save("good", emb(0))
    (store.shard_dir / "broken.pt").write_bytes(b"not a zip")
    torch.save({"version": 99, "entries": {}}, store.shard_dir / "future.pt")
    (tmp_path / "ab").mkdir()
    torch.save({"image": torch.zeros(8, 4, 4)}, tmp_path / "ab" / "abcd.pt")
    with caplog.at_level(logging.WARNING, logger="samtune.train.embedding_store"):
        fresh = EmbeddingStore(tmp_path)
        assert fresh.load("good") is not None and len(fresh) == 1
    text = caplog.text
    assert "broken.pt: unreadable embedding shard" in text and "version 99" in text
    assert "older samtune" in text
