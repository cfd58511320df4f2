"""SAM and SAM2 wrappers: shapes, batching, agreement with the upstream predictors, gradients."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from samtune.models.base import Prompts
from samtune.models.registry import build_architecture

TINY = ["sam_tiny", "sam2_tiny"]


def make_prompts(n: int = 3, size: int = 256, seed: int = 0) -> Prompts:
    """n boxes, 2 points each (one positive, one negative or padding), low-res mask logits."""
    g = torch.Generator().manual_seed(seed)
    xy0 = torch.rand(n, 2, generator=g) * size / 2
    boxes = torch.cat([xy0, xy0 + size / 4 + torch.rand(n, 2, generator=g) * size / 4], dim=1)
    points = torch.rand(n, 2, 2, generator=g) * size
    labels = torch.tensor([[1, 0], [1, -1], [0, 1]] * n)[:n]
    masks = torch.randn(n, 1, size // 4, size // 4, generator=g)
    return Prompts(boxes=boxes, points=points, point_labels=labels, mask_inputs=masks)


def subset(p: Prompts, i: int) -> Prompts:
    pick = lambda t: None if t is None else t[i:i + 1]  # noqa: E731
    return Prompts(pick(p.boxes), pick(p.points), pick(p.point_labels), pick(p.mask_inputs))


@pytest.fixture(scope="module", params=TINY)
def model(request: pytest.FixtureRequest) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_architecture(request.param).eval()


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.rand(2, 3, 256, 256, generator=torch.Generator().manual_seed(1)) * 255


def test_parts_point_at_upstream_modules(model: torch.nn.Module) -> None:
    from sam2.modeling.sam.mask_decoder import MaskDecoder as Sam2MaskDecoder
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder

    if model.family == "sam":
        assert isinstance(model.image_encoder, ImageEncoderViT)
        assert isinstance(model.prompt_encoder, PromptEncoder)
        assert isinstance(model.mask_decoder, MaskDecoder)
    else:
        assert model.prompt_encoder is model.sam_prompt_encoder
        assert isinstance(model.mask_decoder, Sam2MaskDecoder)
        keys = model.state_dict()
        assert not any(k.startswith(("prompt_encoder.", "mask_decoder.")) for k in keys)


@pytest.mark.parametrize("multimask", [False, True])
def test_encode_decode_shapes(model: torch.nn.Module, images: torch.Tensor,
                              multimask: bool) -> None:
    with torch.no_grad():
        emb = model.encode(model.normalize(images))
        assert emb.image.shape == (2, 64, 16, 16)
        assert [tuple(h.shape) for h in emb.high_res] == (
            [] if model.family == "sam" else [(2, 8, 64, 64), (2, 16, 32, 32)])
        m = 3 if multimask else 1
        prompts = make_prompts(3)
        for p in (prompts, Prompts(boxes=prompts.boxes),
                  Prompts(points=prompts.points, point_labels=prompts.point_labels),
                  Prompts(mask_inputs=prompts.mask_inputs)):
            logits, iou = model.decode(emb, 1, p, multimask)
            assert logits.shape == (3, m, 64, 64) and iou.shape == (3, m)
            assert torch.isfinite(logits).all()
        assert model.upscale(logits).shape == (3, m, 256, 256)
        empty, empty_iou = model.decode(emb, 0, Prompts(), multimask)
        assert empty.shape == (0, m, 64, 64) and empty_iou.shape == (0, m)
        outs = model(model.normalize(images), [Prompts(boxes=prompts.boxes[:1]), prompts],
                     multimask)
        assert [o[0].shape[0] for o in outs] == [1, 3]


def test_batched_prompts_equal_one_at_a_time(model: torch.nn.Module, images: torch.Tensor) -> None:
    prompts = make_prompts(3)
    with torch.no_grad():
        emb = model.encode(model.normalize(images))
        for multimask in (False, True):
            logits, iou = model.decode(emb, 1, prompts, multimask)
            singles = [model.decode(emb, 1, subset(prompts, i), multimask) for i in range(3)]
            tol = {"atol": 1e-4, "rtol": 1e-4}
            torch.testing.assert_close(logits, torch.cat([s[0] for s in singles]), **tol)
            torch.testing.assert_close(iou, torch.cat([s[1] for s in singles]), **tol)


def test_decode_uses_the_embedding_of_image_b(model: torch.nn.Module, images: torch.Tensor) -> None:
    prompts = make_prompts(2)
    with torch.no_grad():
        emb = model.encode(model.normalize(images))
        own = model.decode(emb, 1, prompts)[0]
        torch.testing.assert_close(own, model.decode(emb.select(1), 0, prompts)[0])
        assert not torch.allclose(own, model.decode(emb, 0, prompts)[0])


def test_low_precision_embeddings_decode_in_the_heads_dtype(model: torch.nn.Module,
                                                            images: torch.Tensor) -> None:
    """Embeddings cached in bf16 decode with fp32 heads, close to the fp32 result."""
    prompts = make_prompts(3)
    with torch.no_grad():
        emb = model.encode(model.normalize(images))
        ref, _ = model.decode(emb, 1, prompts)
        low, iou = model.decode(emb.to("cpu", torch.bfloat16), 1, prompts)
    assert low.dtype == torch.float32 and iou.dtype == torch.float32
    assert (low - ref).abs().max() < 0.05 * ref.abs().max()


def test_points_need_labels(model: torch.nn.Module, images: torch.Tensor) -> None:
    emb = model.encode(model.normalize(images[:1]))
    with pytest.raises(ValueError, match="point_labels"):
        model.decode(emb, 0, Prompts(points=torch.zeros(1, 1, 2)))


def test_sam_matches_segment_anything_forward(images: torch.Tensor) -> None:
    """Same parts in segment-anything's own `Sam.forward` give the same logits and IoU."""
    from segment_anything.modeling import Sam

    model = build_architecture("sam_tiny").eval()
    sam = Sam(model.image_encoder, model.prompt_encoder, model.mask_decoder).eval()
    p = make_prompts(3)
    with torch.no_grad():
        ref = sam([{"image": images[1], "original_size": (256, 256), "boxes": p.boxes,
                    "point_coords": p.points, "point_labels": p.point_labels,
                    "mask_inputs": p.mask_inputs}], multimask_output=True)[0]
        logits, iou = model.decode(model.encode(model.normalize(images)), 1, p, True)
    torch.testing.assert_close(logits, ref["low_res_logits"], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(iou, ref["iou_predictions"], atol=1e-4, rtol=1e-4)


def test_sam2_matches_sam2_image_predictor() -> None:
    """Same SAM2Base in sam2's SAM2ImagePredictor (set_image + _predict) gives the same output."""
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    from samtune.models.sam2 import TINY_OVERRIDES, Sam2Wrapper, build_sam2_base

    torch.manual_seed(0)
    base = build_sam2_base("configs/sam2.1/sam2.1_hiera_t.yaml", 256, TINY_OVERRIDES).eval()
    model = Sam2Wrapper(base, 256).eval()
    image = np.random.default_rng(0).integers(0, 256, (256, 256, 3), dtype=np.uint8)
    p = make_prompts(3, size=256)
    predictor = SAM2ImagePredictor(base)
    predictor._bb_feat_sizes = [(64, 64), (32, 32), (16, 16)]  # hard-coded there for 1024 px
    with torch.no_grad():
        predictor.set_image(image)
        x = torch.from_numpy(image).permute(2, 0, 1)[None].float()
        emb = model.encode(model.normalize(x))
        torch.testing.assert_close(emb.image, predictor._features["image_embed"],
                                   atol=1e-4, rtol=1e-4)
        for multimask in (False, True):
            _, ref_iou, ref_low = predictor._predict(p.points, p.point_labels, p.boxes,
                                                     p.mask_inputs, multimask_output=multimask)
            logits, iou = model.decode(emb, 0, p, multimask)
            torch.testing.assert_close(logits.clamp(-32, 32), ref_low, atol=1e-3, rtol=1e-3)
            torch.testing.assert_close(iou, ref_iou, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", TINY)
def test_grad_checkpointing_gives_the_same_gradients(name: str) -> None:
    torch.manual_seed(0)
    model = build_architecture(name, 128).train()
    images = torch.rand(1, 3, 128, 128) * 255
    prompts = make_prompts(3, size=128)
    grads = []
    for enabled in (False, True):
        model.zero_grad()
        model.set_grad_checkpointing(enabled)
        emb = model.encode(model.normalize(images))
        logits, iou = model.decode(emb, 0, prompts, multimask=False)
        (logits.sigmoid().mean() + iou.mean()).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    encoder = [n for n in grads[0] if n.startswith("image_encoder.")]
    assert encoder and any(grads[0][n].abs().sum() > 0 for n in encoder)  # differentiable
    for n in grads[0]:
        torch.testing.assert_close(grads[0][n], grads[1][n], atol=1e-5, rtol=1e-4)


def test_mobile_sam_at_256() -> None:
    torch.manual_seed(0)
    model = build_architecture("mobile_sam", 256).eval()
    with torch.no_grad():
        emb = model.encode(model.normalize(torch.rand(1, 3, 256, 256) * 255))
        logits, iou = model.decode(emb, 0, make_prompts(2), multimask=True)
    assert emb.image.shape == (1, 256, 16, 16)
    assert logits.shape == (2, 3, 64, 64) and iou.shape == (2, 3)


@pytest.mark.slow
def test_mobile_sam_encode_equals_tiny_vit_forward_at_1024() -> None:
    torch.manual_seed(0)
    model = build_architecture("mobile_sam").eval()
    x = torch.randn(1, 3, 1024, 1024)
    with torch.no_grad():
        torch.testing.assert_close(model.encode(x).image, model.image_encoder(x))
