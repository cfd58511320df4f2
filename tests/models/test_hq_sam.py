"""HQ-SAM: official key layout, checkpoint loading, agreement with segment_anything_hq's
SamPredictor, the embedding cache, and fine-tuning methods on the HQ decoder."""
from __future__ import annotations

import re
import warnings
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch

from samtune.config import LoraConfig, ModelConfig, TrainConfig
from samtune.models.adapters import apply_method, resolve_targets
from samtune.models.base import Prompts
from samtune.models.checkpoints import load_checkpoint
from samtune.models.hq_sam import HQ_MODULES, HqSamWrapper
from samtune.models.preprocess import (PREPROCESSING, coord_scale, postprocess_logits,
                                       prepare_image)
from samtune.models.prompts import select_best
from samtune.models.registry import MODELS, build_architecture, build_model, meta_device
from samtune.train.embedding_cache import EmbeddingStore, encoder_is_frozen
from samtune.train.loop import train

with warnings.catch_warnings():  # its TinyViT re-registers timm models on import
    warnings.simplefilter("ignore")
    import segment_anything_hq as hq_upstream
    from segment_anything_hq import modeling as hqm

OFFICIAL = {"hq_sam_vit_b": "vit_b", "hq_sam_vit_l": "vit_l", "hq_sam_vit_h": "vit_h",
            "hq_sam_vit_tiny": "vit_tiny"}
DECODER_TARGETS = ["decoder_attention", "decoder_mlp", "decoder_hypernetwork", "decoder_iou_head"]
SAM = PREPROCESSING["sam"]


def shapes(module: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def upstream_tiny(size: int = 256) -> torch.nn.Module:
    """segment_anything_hq's `Sam` with `hq_sam_tiny`'s widths (upstream's `_build_sam` with the
    numbers changed), in eval mode."""
    grid = size // 16
    return hqm.Sam(
        image_encoder=hqm.ImageEncoderViT(
            depth=2, embed_dim=64, img_size=size, mlp_ratio=4, num_heads=2, patch_size=16,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), qkv_bias=True, use_rel_pos=True,
            global_attn_indexes=[1], window_size=8, out_chans=64),
        prompt_encoder=hqm.PromptEncoder(embed_dim=64, image_embedding_size=(grid, grid),
                                         input_image_size=(size, size), mask_in_chans=16),
        mask_decoder=hqm.MaskDecoderHQ(
            num_multimask_outputs=3,
            transformer=hqm.TwoWayTransformer(depth=2, embedding_dim=64, mlp_dim=256, num_heads=4),
            transformer_dim=64, iou_head_depth=3, iou_head_hidden_dim=64, vit_dim=64)).eval()


@pytest.fixture(scope="module")
def upstream() -> torch.nn.Module:
    torch.manual_seed(0)
    return upstream_tiny()


def test_zoo_entries() -> None:
    for name, kind in OFFICIAL.items():
        spec = MODELS[name]
        assert spec.checkpoint == f"sam_hq_{kind}.pth" and spec.sha256 is None
        assert spec.url == f"https://huggingface.co/lkeab/hq-sam/resolve/main/sam_hq_{kind}.pth"
        assert spec.preprocess == "sam" and spec.img_size == 1024
    assert MODELS["hq_sam_vit_b"].family == "sam"
    assert MODELS["hq_sam_vit_tiny"].family == "mobile_sam"  # TinyViT LoRA target names
    assert MODELS["hq_sam_tiny"].checkpoint is None and MODELS["hq_sam_tiny"].img_size == 256


@pytest.mark.parametrize("name", OFFICIAL)
def test_state_dict_layout_equals_segment_anything_hq(name: str) -> None:
    """Keys and shapes equal those of upstream's `sam_model_registry[...]()`, so official
    sam_hq_*.pth files load strictly (the HQ decoder modules included)."""
    ours = build_architecture(name, meta=True)
    with meta_device():
        theirs = hq_upstream.sam_model_registry[OFFICIAL[name]]()
    assert shapes(ours) == shapes(theirs)
    assert all(any(k.startswith(f"mask_decoder.{m}.") for k in shapes(ours)) for m in HQ_MODULES)
    assert isinstance(ours, HqSamWrapper) and ours.family == MODELS[name].family


def box_prompt(size: int = 256) -> Prompts:
    return Prompts(boxes=torch.tensor([[0.2, 0.15, 0.7, 0.8]]) * size)


def test_official_layout_loads_and_gives_upstream_outputs(upstream: torch.nn.Module,
                                                         tmp_path: Path) -> None:
    """A random HQ-SAM saved in the official layout (bare state dict) loads with
    `load_checkpoint`; the loaded model gives upstream `Sam.forward`'s low-res logits and IoU."""
    path = tmp_path / "sam_hq_tiny.pth"
    torch.save(upstream.state_dict(), path)
    torch.manual_seed(1)
    model = build_architecture("hq_sam_tiny").eval()
    hf_token = upstream.mask_decoder.hf_token.weight
    assert not torch.equal(model.mask_decoder.hf_token.weight, hf_token)  # the test can fail
    load_checkpoint(model, path)
    ref = upstream.state_dict()
    assert all(torch.equal(v, ref[k]) for k, v in model.state_dict().items())
    images = torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(2)) * 255
    p = box_prompt()
    with torch.no_grad():
        theirs = upstream([{"image": images[0], "original_size": (256, 256), "boxes": p.boxes}],
                          multimask_output=False)[0]
        logits, iou = model.decode(model.encode(model.normalize(images)), 0, p)
    torch.testing.assert_close(logits, theirs["low_res_logits"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(iou, theirs["iou_predictions"], atol=1e-5, rtol=1e-5)


def samtune_predict(model: HqSamWrapper, image: np.ndarray, box: np.ndarray, multimask: bool
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """samtune's inference path: prepare_image → encode → decode (box × coord_scale) →
    postprocess_logits → (H×W logits, low-res 1×s×s)."""
    h, w = image.shape[:2]
    size = model.img_size
    x = prepare_image(SAM, image, size)[None]
    sx, sy = coord_scale(SAM, h, w, size)
    boxes = torch.as_tensor(box * np.array([sx, sy, sx, sy]), dtype=torch.float32)[None]
    with torch.no_grad():
        low, iou = model.decode(model.encode(x), 0, Prompts(boxes=boxes), multimask)
    if multimask:
        low, iou = select_best(low, iou)
    return postprocess_logits(SAM, low, h, w, size)[0, 0], low[0]


@pytest.mark.parametrize("hq_token_only", [False, True])
@pytest.mark.parametrize("multimask", [False, True])
def test_matches_segment_anything_hq_predictor(upstream: torch.nn.Module, multimask: bool,
                                               hq_token_only: bool) -> None:
    """Same weights in upstream's SamPredictor and in samtune's path on a 300×220 image with one
    box: equal masks (IoU ≥ 0.999) and logits (1e-4). Multimask: upstream keeps the best of
    SAM's 3 masks + the HQ mask, samtune returns all 3 and `select_best` picks the same."""
    model = build_architecture("hq_sam_tiny").eval()
    model.load_state_dict(upstream.state_dict())
    model.hq_token_only = hq_token_only
    image = np.random.default_rng(0).integers(0, 256, (220, 300, 3), dtype=np.uint8)
    box = np.array([40.0, 30.0, 230.0, 190.0])
    predictor = hq_upstream.SamPredictor(upstream)
    predictor.set_image(image)
    ref, _, ref_low = predictor.predict(box=box, multimask_output=multimask, return_logits=True,
                                        hq_token_only=hq_token_only)
    logits, low = samtune_predict(model, image, box, multimask)
    ref_t = torch.from_numpy(ref[0])
    assert ref_t.shape == logits.shape == (220, 300)
    torch.testing.assert_close(low, torch.from_numpy(ref_low), atol=1e-4, rtol=0)
    torch.testing.assert_close(logits, ref_t, atol=1e-4, rtol=0)
    a, b = logits > 0, ref_t > 0
    assert 0.05 < b.float().mean() < 0.95  # a real mask, so the comparison can fail
    assert (a & b).sum() / (a | b).sum() >= 0.999


@pytest.mark.slow  # a 1024² TinyViT forward twice: 3–15 s on 2 shared cores
def test_light_hq_sam_encoder_matches_upstream_at_1024() -> None:
    """TinyViT path (upstream hard-codes the 1024 grid): encode gives upstream's embedding and
    its interm feature (channel first)."""
    torch.manual_seed(0)
    model = build_architecture("hq_sam_vit_tiny").eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = hq_upstream.sam_model_registry["vit_tiny"]().eval()
    theirs.load_state_dict(model.state_dict())
    x = torch.randn(1, 3, 1024, 1024, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        emb = model.encode(x)
        image, interm = theirs.image_encoder(x)
    torch.testing.assert_close(emb.image, image)
    torch.testing.assert_close(emb.high_res[0], interm[0].permute(0, 3, 1, 2))
    assert emb.high_res[0].shape == (1, 160, 64, 64)


def test_grad_checkpointing_encodes_the_same() -> None:
    torch.manual_seed(0)
    model = build_architecture("hq_sam_tiny").train()
    x = torch.randn(2, 3, 256, 256, generator=torch.Generator().manual_seed(5))
    plain = model.encode(x)
    model.set_grad_checkpointing(True)
    recomputed = model.encode(x)
    torch.testing.assert_close(recomputed.image, plain.image)
    torch.testing.assert_close(recomputed.high_res[0], plain.high_res[0])
    recomputed.high_res[0].sum().backward()
    assert model.image_encoder.blocks[0].attn.qkv.weight.grad is not None


def test_embeddings_round_trip_the_cache(upstream: torch.nn.Module, tmp_path: Path) -> None:
    """The frozen-encoder cache stores high_res (the interm feature) with the image embedding;
    decoding from the fp16 copy is close to decoding from the original."""
    model = build_architecture("hq_sam_tiny").eval()
    model.load_state_dict(upstream.state_dict())
    images = torch.rand(2, 3, 256, 256, generator=torch.Generator().manual_seed(4)) * 255
    with torch.no_grad():
        emb = model.encode(model.normalize(images))
        store = EmbeddingStore(tmp_path)
        store.save("slice/1", emb.select(1))
        back = store.load("slice/1")
        assert back is not None and [h.shape for h in back.high_res] == [(1, 64, 16, 16)]
        torch.testing.assert_close(back.high_res[0], emb.high_res[0][1:2], atol=2e-2, rtol=2e-3)
        ref, _ = model.decode(emb, 1, box_prompt())
        low, _ = model.decode(back, 0, box_prompt())
    assert (low - ref).abs().max() < 0.02 * ref.abs().max()


def trainable(model: torch.nn.Module, prefix: str) -> set[bool]:
    return {p.requires_grad for n, p in model.named_parameters() if n.startswith(prefix)}


@pytest.mark.parametrize("method", ["full", "frozen"])
def test_full_and_frozen_train_the_hq_modules(method: str) -> None:
    model = apply_method(build_architecture("hq_sam_tiny"), ModelConfig(name="hq_sam_tiny",
                                                                        method=method))
    for m in HQ_MODULES:
        assert trainable(model, f"mask_decoder.{m}") == {True}
    assert trainable(model, "image_encoder") == {method == "full"}
    assert encoder_is_frozen(model) == (method == "frozen")


def test_lora_targets_resolve_on_the_hq_decoder() -> None:
    """Decoder targets name SAM's decoder layers (hf_mlp is not a hypernetwork target);
    encoder targets name the ViT (hq_sam_tiny) or TinyViT (Light HQ-SAM) layers."""
    model = build_architecture("hq_sam_tiny")
    resolved = resolve_targets(model, DECODER_TARGETS + ["encoder_qkv"])
    assert all(resolved.values())
    assert len(resolved["decoder_hypernetwork"]) == 4 * 3  # 4 SAM mask tokens × 3 layers
    assert not any("hf_mlp" in n for names in resolved.values() for n in names)
    light = resolve_targets(build_architecture("hq_sam_vit_tiny", meta=True), ["encoder_qkv"])
    assert all(n.startswith("image_encoder.layers.") for n in light["encoder_qkv"])


def test_lora_on_the_decoder_trains_in_a_training_step(tmp_path: Path) -> None:
    """One step of samtune's training loop with LoRA on every decoder target: the LoRA weights
    move, the frozen base (encoder, decoder, HQ modules) does not; the prompt encoder trains."""
    from tests.train.test_loop import Blobs

    cfg = ModelConfig(name="hq_sam_tiny", img_size=64, method="lora",
                      lora=LoraConfig(r=4, targets=DECODER_TARGETS))
    torch.manual_seed(0)
    model = apply_method(build_model(cfg), cfg)
    assert trainable(model, "mask_decoder.hf_mlp") == {False}
    assert trainable(model, "prompt_encoder") == {True}
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    result = train(model, Blobs(4, instances=1), None,
                   TrainConfig(epochs=1, batch_size=4, device="cpu",
                               optimizer_kwargs={"lr": 1e-3}), tmp_path)
    assert result.steps == 1 and np.isfinite(result.history[0]["loss"])
    after = dict(model.named_parameters())
    # single-mask training: the multimask tokens' hypernetworks (1–3) get no gradient
    lora_b = [n for n in after if "lora_B" in n
              and not re.search(r"output_hypernetworks_mlps\.[123]\.", n)]
    assert len(lora_b) > 20 and all(not torch.equal(after[n], before[n]) for n in lora_b)
    frozen = [n for n, p in after.items() if not p.requires_grad]
    assert any(".hf_mlp." in n for n in frozen) and any("base_layer" in n for n in frozen)
    assert all(torch.equal(after[n], before[n]) for n in frozen)
