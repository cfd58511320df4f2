"""Freezing, LoRA target mapping and QLoRA guards on the tiny models of the real registry."""
from __future__ import annotations

import pytest
import torch

from samtune.config import LORA_TARGETS, ModelConfig
from samtune.models import adapters
from samtune.models.adapters import (QLORA_ERROR, apply_method, parameter_report,
                                     resolve_targets)
from samtune.models.base import Prompts
from samtune.models.registry import build_architecture

FAMILIES = ["sam_tiny", "sam2_tiny"]
SIZE = 128  # small inputs keep the CPU forward passes fast


def model_of(name: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_architecture(name, SIZE)


def cfg(name: str, **kw) -> ModelConfig:
    return ModelConfig(name=name, **kw)


def run(model, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """One image, two box prompts → (logits, iou)."""
    g = torch.Generator().manual_seed(seed)
    s = model.img_size
    images = torch.randn(1, 3, s, s, generator=g)
    boxes = torch.tensor([[5.0, 10.0, 60.0, 70.0], [30.0, 30.0, 100.0, 115.0]])
    return model(images, [Prompts(boxes=boxes)])[0]


def test_target_mapping_sam() -> None:
    names = resolve_targets(model_of("sam_tiny"), list(LORA_TARGETS))
    assert names["encoder_qkv"] == [f"image_encoder.blocks.{i}.attn.qkv" for i in range(2)]
    assert names["encoder_proj"] == [f"image_encoder.blocks.{i}.attn.proj" for i in range(2)]
    assert names["encoder_mlp"] == [f"image_encoder.blocks.{i}.mlp.lin{j}"
                                    for i in range(2) for j in (1, 2)]
    assert names["decoder_mlp"] == [f"mask_decoder.transformer.layers.{i}.mlp.lin{j}"
                                    for i in range(2) for j in (1, 2)]
    # 2 layers × 3 attentions + the final one, 4 projections each
    assert len(names["decoder_attention"]) == 28
    assert "mask_decoder.transformer.final_attn_token_to_image.out_proj" in names[
        "decoder_attention"]
    assert len(names["decoder_hypernetwork"]) == 4 * 3  # 4 mask tokens × 3-layer MLP
    assert names["decoder_iou_head"] == [f"mask_decoder.iou_prediction_head.layers.{i}"
                                         for i in range(3)]


def test_target_mapping_sam2() -> None:
    names = resolve_targets(model_of("sam2_tiny"), list(LORA_TARGETS))
    assert names["encoder_qkv"] == [f"image_encoder.trunk.blocks.{i}.attn.qkv" for i in range(5)]
    assert names["encoder_mlp"] == [f"image_encoder.trunk.blocks.{i}.mlp.layers.{j}"
                                    for i in range(5) for j in (0, 1)]
    assert names["decoder_mlp"] == [f"sam_mask_decoder.transformer.layers.{i}.mlp.layers.{j}"
                                    for i in range(2) for j in (0, 1)]
    assert len(names["decoder_attention"]) == 28 and len(names["decoder_hypernetwork"]) == 12
    # the stage-transition projections (blocks.N.proj) are not attention projections
    assert not any(n.endswith(".proj") and ".attn." not in n for n in names["encoder_proj"])


def test_target_of_another_naming_is_a_clear_error() -> None:
    model = model_of("sam_tiny")
    model.family = "sam2"  # a SAM decoder (mlp.lin1/lin2) under SAM2's naming (mlp.layers.N)
    with pytest.raises(ValueError, match=r"'decoder_mlp'.*'sam2'"):
        apply_method(model, cfg("sam_tiny", method="lora", lora={"targets": ["decoder_mlp"]}))
    assert not any("lora_" in n for n, _ in model.named_parameters())  # untouched
    model.family = "medsam_unknown"
    with pytest.raises(ValueError, match="no LoRA target mapping"):
        resolve_targets(model, ["encoder_qkv"])


@pytest.mark.parametrize("name", FAMILIES)
def test_full_and_frozen(name: str) -> None:
    model = apply_method(model_of(name), cfg(name, freeze=["prompt_encoder"]))
    parts = parameter_report(model)["parts"]
    assert parts["prompt_encoder"]["trainable"] == 0
    for part in ("image_encoder", "mask_decoder", "other"):
        assert parts[part]["trainable"] == parts[part]["total"]
    model = apply_method(model_of(name), cfg(name, method="frozen"))
    report = parameter_report(model)
    parts = report["parts"]
    assert parts["image_encoder"]["trainable"] == 0 and parts["other"]["trainable"] == 0
    assert parts["mask_decoder"]["trainable"] == parts["mask_decoder"]["total"] > 0
    assert report["trainable"] == parts["mask_decoder"]["total"] + parts["prompt_encoder"]["total"]
    assert report["total"] == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("method,freeze", [("frozen", ["prompt_encoder", "mask_decoder"]),
                                           ("full", ["image_encoder", "prompt_encoder",
                                                     "mask_decoder"])])
def test_nothing_to_train_is_an_error(method: str, freeze: list[str]) -> None:
    with pytest.raises(ValueError, match="nothing to train"):
        apply_method(model_of("sam_tiny"), cfg("sam_tiny", method=method, freeze=freeze))


@pytest.mark.parametrize("name", FAMILIES)
def test_lora_trains_adapters_and_untargeted_parts(name: str) -> None:
    model = model_of(name)
    targets = ["encoder_qkv", "decoder_attention"]
    apply_method(model, cfg(name, method="lora", lora={"r": 4, "targets": targets}))
    report = parameter_report(model)
    names = resolve_targets(model_of(name), targets)
    modules = dict(model_of(name).named_modules())
    expected_lora = sum(4 * (modules[n].in_features + modules[n].out_features)
                        for group in names.values() for n in group)
    assert report["lora"] == expected_lora
    parts = report["parts"]
    # base weights of targeted parts frozen; the untargeted prompt encoder trains in full
    assert parts["prompt_encoder"]["trainable"] == parts["prompt_encoder"]["total"]
    assert report["trainable"] == expected_lora + parts["prompt_encoder"]["total"]
    assert parts["other"]["trainable"] == 0
    # the wrapper still works, and only trainable tensors receive gradients
    logits, iou = run(model)
    assert logits.shape[:2] == (2, 1)
    logits.sum().backward()
    grads = {n for n, p in model.named_parameters() if p.grad is not None}
    assert grads and all(model.get_parameter(n).requires_grad for n in grads)
    assert any("image_encoder" in n and "lora_A" in n for n in grads)


def test_lora_starts_as_the_base_model() -> None:
    base = model_of("sam_tiny")
    reference = run(base)[0]
    lora = apply_method(base, cfg("sam_tiny", method="lora",
                                  lora={"targets": list(LORA_TARGETS)}))
    assert torch.allclose(run(lora)[0], reference, atol=1e-6)  # lora_B starts at zero
    decoder = parameter_report(lora)["parts"]["mask_decoder"]
    assert decoder["trainable"] == sum(p.numel() for n, p in lora.mask_decoder.named_parameters()
                                       if "lora_" in n) > 0


def test_pure_lora_and_conflicts() -> None:
    model = apply_method(model_of("sam_tiny"), cfg(
        "sam_tiny", method="lora", freeze=["prompt_encoder", "mask_decoder"]))
    report = parameter_report(model)
    assert report["trainable"] == report["lora"] > 0
    with pytest.raises(ValueError, match="conflicting freeze \\+ LoRA settings"):
        apply_method(model_of("sam_tiny"), cfg("sam_tiny", method="lora",
                                               freeze=["image_encoder"]))
    with pytest.raises(ValueError, match="conflicting freeze \\+ LoRA settings.*mask_decoder"):
        apply_method(model_of("sam_tiny"), cfg("sam_tiny", method="lora", freeze=["mask_decoder"],
                                               lora={"targets": ["decoder_iou_head"]}))
    with pytest.raises(ValueError, match="already has a LoRA adapter"):
        apply_method(model, cfg("sam_tiny", method="lora"))


def test_qlora_on_cpu_fails_before_any_work(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    touched = []
    monkeypatch.setattr(adapters, "quantize_image_encoder", lambda *a, **k: touched.append(1))
    model = model_of("sam_tiny")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(RuntimeError) as err:
        apply_method(model, cfg("sam_tiny", method="qlora"))
    assert str(err.value) == QLORA_ERROR
    assert not touched
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.requires_grad for p in model.parameters())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="qlora needs a CUDA GPU")
@pytest.mark.parametrize("name", FAMILIES)
def test_qlora_on_cuda(name: str, tmp_path) -> None:
    bnb = pytest.importorskip("bitsandbytes")
    from samtune.models.checkpoints import read_state_dict
    from samtune.models.export import export_weights

    model = model_of(name)
    n_linear = sum(isinstance(m, torch.nn.Linear) for m in model.image_encoder.modules())
    apply_method(model, cfg(name, method="qlora", freeze=["prompt_encoder"],
                            lora={"targets": ["encoder_qkv", "decoder_mlp"]}))
    four_bit = [m for m in model.image_encoder.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(four_bit) == n_linear and all(m.weight.device.type == "cuda" for m in four_bit)
    report = parameter_report(model)
    assert report["trainable"] == report["lora"] > 0
    assert report["total"] == sum(p.numel() for p in model_of(name).parameters()) + report["lora"]
    logits, _ = run_cuda(model.train())
    logits.float().sum().backward()
    grads = {n for n, p in model.named_parameters() if p.grad is not None}
    assert grads and all("lora_" in n for n in grads)
    assert any(n.startswith("image_encoder") for n in grads)
    with torch.no_grad():  # move the adapters away from zero, then export merged + dequantised
        for n, p in model.named_parameters():
            if "lora_" in n:
                p.add_(0.05 * torch.randn_like(p))
    reference = run_cuda(model.eval())[0]
    path = export_weights(model, tmp_path, ["full"])["full"]
    dense = model_of(name)
    dense.load_state_dict(read_state_dict(path), strict=True)
    assert torch.allclose(run_cuda(dense.cuda().eval())[0], reference, atol=1e-3)


def run_cuda(model) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    images = torch.randn(1, 3, SIZE, SIZE, generator=g).cuda()
    boxes = torch.tensor([[5.0, 10.0, 60.0, 70.0]]).cuda()
    with torch.no_grad() if not model.training else torch.enable_grad():
        return model(images, [Prompts(boxes=boxes)])[0]
