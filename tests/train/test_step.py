"""step: loader worker counts, and batches of cached slices (no pixels) through the loss."""
from __future__ import annotations

import pytest
import torch

from samtune.config import TrainConfig
from samtune.models.registry import build_architecture
from samtune.train.data import SliceDataset, collate
from samtune.train.embedding_cache import cache_embeddings
from samtune.train.step import batch_loss, loader_workers
from tests.train.test_data import make_slices, write_split

S = 64


def test_loader_workers(monkeypatch):
    monkeypatch.setattr("os.cpu_count", lambda: 16)
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert loader_workers(3, cpu) == 3 and loader_workers(0, cuda) == 0  # as given
    assert loader_workers("auto", cpu) == 0  # the cores train
    assert loader_workers("auto", cuda) == 4 and loader_workers("auto", cuda, 4) == 2
    monkeypatch.setattr("os.cpu_count", lambda: 1)
    assert loader_workers("auto", cuda, 8) == 1
    assert TrainConfig().num_workers == "auto" and TrainConfig(num_workers=2).num_workers == 2
    with pytest.raises(ValueError):
        TrainConfig(num_workers="many")


def test_pixel_free_cached_batch_gives_the_loss_of_the_decoded_one(tmp_path):
    write_split(tmp_path / "s", make_slices(3, size=S))
    data = SliceDataset(tmp_path / "s", S)
    torch.manual_seed(0)
    model = build_architecture("sam_tiny", S)
    model.image_encoder.requires_grad_(False)
    cached = cache_embeddings(data, model, tmp_path / "cache")
    cfg = TrainConfig(prompts={"bbox_shift": 0})
    items = [0, 1]
    plain, fast = collate([data[i] for i in items]), collate([cached[i] for i in items])
    assert "images" not in fast and "embeddings" in fast
    fast_loss, n = batch_loss(model, fast, cfg, model.normalize, torch.Generator().manual_seed(1),
                              torch.device("cpu"))
    plain["embeddings"] = fast["embeddings"]  # the same fp16-rounded inputs, images alongside
    ref_loss, m = batch_loss(model, plain, cfg, model.normalize, torch.Generator().manual_seed(1),
                             torch.device("cpu"))
    assert n == m > 0 and torch.equal(fast_loss.total, ref_loss.total)
    model.image_encoder.requires_grad_(True)  # an encoder that trains needs the pixels
    with pytest.raises(ValueError, match="carries no images"):
        batch_loss(model, fast, cfg, model.normalize, torch.Generator(), torch.device("cpu"))
