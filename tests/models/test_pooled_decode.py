"""Every instance of a batch in one decoder call equals one upstream decode per image."""
from __future__ import annotations

import pytest
import torch

from samtune.models.base import Embeddings, Prompts
from samtune.models.pooled_decode import decode_many
from samtune.models.registry import build_architecture

SIZE = 128


def _prompts(n: int, seed: int, points: int = 0, mask: bool = False) -> Prompts:
    gen = torch.Generator().manual_seed(seed)
    xy0 = torch.rand(n, 2, generator=gen) * 60
    boxes = torch.cat([xy0, xy0 + 20 + torch.rand(n, 2, generator=gen) * 40], dim=1)
    pts = labels = None
    if points:
        pts = torch.rand(n, points, 2, generator=gen) * SIZE
        labels = torch.randint(0, 2, (n, points), generator=gen)
    masks = torch.randn(n, 1, SIZE // 4, SIZE // 4, generator=gen) if mask else None
    return Prompts(boxes=boxes, points=pts, point_labels=labels, mask_inputs=masks)


@pytest.mark.parametrize("name", ["sam_tiny", "mobile_sam", "sam2_tiny", "hq_sam_tiny"])
@pytest.mark.parametrize("multimask", [False, True])
def test_pooled_equals_per_image(name: str, multimask: bool) -> None:
    torch.manual_seed(0)
    model = build_architecture(name, SIZE).eval()
    images = torch.rand(3, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        emb = model.encode(images)
    # images 0 and 2 share a structure (pooled together); image 1 has clicks and a mask
    items = [(0, _prompts(2, 0)), (1, _prompts(3, 1, points=2, mask=True)),
             (2, _prompts(1, 2)), (2, Prompts(boxes=torch.zeros(0, 4)))]
    with torch.no_grad():
        pooled = decode_many(model, emb, items, multimask)
        alone = [model.decode(emb, b, p, multimask) for b, p in items]
    assert [low.shape for low, _ in pooled] == [low.shape for low, _ in alone]
    for (low, iou), (ref_low, ref_iou) in zip(pooled, alone):
        torch.testing.assert_close(low, ref_low, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(iou, ref_iou, atol=1e-5, rtol=1e-5)


def test_pooled_decode_is_one_call_and_gradients_agree() -> None:
    torch.manual_seed(0)
    model = build_architecture("sam_tiny", SIZE)
    emb = Embeddings(torch.randn(2, model.prompt_encoder.embed_dim, SIZE // 16, SIZE // 16))
    items = [(0, _prompts(2, 0, points=1)), (1, _prompts(2, 1, points=1))]
    calls = []
    handle = model.mask_decoder.register_forward_hook(lambda *a: calls.append(1))
    grads = []
    for pooled in (True, False):
        model.zero_grad()
        calls.clear()
        outs = decode_many(model, emb, items) if pooled else \
            [model.decode(emb, b, p) for b, p in items]
        assert len(calls) == (1 if pooled else 2)
        torch.cat([low for low, _ in outs]).square().mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.mask_decoder.parameters()
                                if p.grad is not None]))
    handle.remove()
    torch.testing.assert_close(grads[0], grads[1], atol=1e-6, rtol=1e-5)
