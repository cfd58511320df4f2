"""Weight exports: merged = unmerged outputs, adapter round trip, upstream key layout, atomicity."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from samtune.config import ModelConfig
from samtune.models.adapters import (apply_lora, apply_method, parameter_report,
                                     quantize_image_encoder, resolve_targets)
from samtune.models.base import Prompts
from samtune.models.checkpoints import read_state_dict
from samtune.models.export import (KINDS, export_weights, load_lora_adapter,
                                   merged_state_dict)
from samtune.models.registry import build_architecture

SIZE = 128  # small inputs keep the CPU forward passes fast
FAMILIES = ["sam_tiny", "sam2_tiny"]


def fresh(name: str) -> torch.nn.Module:
    torch.manual_seed(0)  # the same base weights every time, as a pretrained checkpoint
    return build_architecture(name, SIZE).eval()


def outputs(model: torch.nn.Module) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    images = torch.randn(1, 3, SIZE, SIZE, generator=g)
    prompts = Prompts(boxes=torch.tensor([[5.0, 10.0, 60.0, 70.0], [30.0, 30.0, 100.0, 115.0]]),
                      points=torch.tensor([[[20.0, 30.0]], [[64.0, 64.0]]]),
                      point_labels=torch.tensor([[1], [0]]))
    with torch.no_grad():
        logits, iou = model.eval()(images, [prompts], multimask=True)[0]
    return torch.cat([logits.flatten(), iou.flatten()])


def trained_lora(name: str, **lora) -> torch.nn.Module:
    """A LoRA model whose adapters and fully trained prompt encoder moved away from the base."""
    model = apply_method(fresh(name), ModelConfig(
        name=name, method="lora",
        lora={"r": 4, "targets": ["encoder_qkv", "encoder_mlp", "decoder_attention"], **lora}))
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:  # LoRA A/B and the prompt encoder's own weights
                p.add_(0.05 * torch.randn(p.shape, generator=g))
    return model.eval()


@pytest.fixture(scope="module", params=FAMILIES)
def exported(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    name = request.param
    model = trained_lora(name)
    out = tmp_path_factory.mktemp(name)
    paths = export_weights(model, out, KINDS)
    return name, model, outputs(model), paths


def test_files_are_plain_and_complete(exported) -> None:
    name, model, _, paths = exported
    assert set(paths) == {*KINDS, "lora_adapter_config"}
    out = paths["full"].parent
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in paths.values())
    for kind in KINDS:
        obj = torch.load(paths[kind], map_location="cpu", weights_only=True)
        assert isinstance(obj, dict)
    full = torch.load(paths["full"], map_location="cpu", weights_only=True)
    merged = torch.load(paths["lora_merged"], map_location="cpu", weights_only=True)
    if name.startswith("sam2"):
        assert list(full) == ["model"]  # sam2's own checkpoint format
        full, merged = full["model"], merged["model"]
    assert full.keys() == merged.keys() and all(torch.equal(full[k], merged[k]) for k in full)
    assert not any("lora_" in k or "base_layer" in k for k in full)


def test_full_export_loads_strictly_and_reproduces_outputs(exported) -> None:
    name, _, reference, paths = exported
    base = fresh(name)
    assert outputs(base).sub(reference).abs().max() > 1e-3  # the training changed something
    base.load_state_dict(read_state_dict(paths["full"]), strict=True)
    assert torch.allclose(outputs(base), reference, atol=1e-5)


def test_adapter_reload_reproduces_outputs(exported) -> None:
    name, model, reference, paths = exported
    meta = json.loads(paths["lora_adapter_config"].read_text())
    assert meta["r"] == 4 and meta["alpha"] == 16.0 and meta["family"] == model.family
    assert meta["targets"] == ["encoder_qkv", "encoder_mlp", "decoder_attention"]
    assert meta["full_parts"] == ["prompt_encoder"]
    names = resolve_targets(fresh(name), meta["targets"])
    assert meta["target_modules"] == sorted(n for group in names.values() for n in group)
    state = torch.load(paths["lora_adapter"], map_location="cpu", weights_only=True)
    whole = [k for k in state if "lora_" not in k]  # the prompt encoder, trained in full
    assert whole and all(k.split(".")[0] in ("prompt_encoder", "sam_prompt_encoder")
                         for k in whole)
    assert len(whole) == len(model.prompt_encoder.state_dict())
    reloaded = load_lora_adapter(fresh(name), paths["lora_adapter"])
    assert torch.allclose(outputs(reloaded), reference, atol=1e-5)
    assert parameter_report(reloaded)["trainable"] == parameter_report(model)["trainable"]


def test_image_encoder_export(exported) -> None:
    _, model, _, paths = exported
    enc = torch.load(paths["image_encoder"], map_location="cpu", weights_only=True)
    merged = merged_state_dict(model)
    expected = {k for k in merged if k.startswith("image_encoder.")}
    assert enc and set(enc) == expected
    assert all(torch.equal(enc[k], merged[k]) for k in enc)
    fresh_encoder = fresh("sam_tiny" if "sam2" not in model.family else "sam2_tiny").image_encoder
    fresh_encoder.load_state_dict({k.removeprefix("image_encoder."): v for k, v in enc.items()},
                                  strict=True)


def test_sam_full_export_loads_in_segment_anything(tmp_path: Path) -> None:
    from segment_anything.modeling import Sam

    model = trained_lora("sam_tiny")
    path = export_weights(model, tmp_path, ["full"])["full"]
    base = fresh("sam_tiny")
    upstream = Sam(base.image_encoder, base.prompt_encoder, base.mask_decoder)
    # segment-anything's build_sam: torch.load(f) then sam.load_state_dict(state_dict) (strict)
    upstream.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    assert torch.equal(upstream.image_encoder.blocks[0].attn.qkv.weight,
                       merged_state_dict(model)["image_encoder.blocks.0.attn.qkv.weight"])


def test_sam2_full_export_loads_in_sam2(tmp_path: Path) -> None:
    from sam2.build_sam import build_sam2

    from samtune.models.sam2 import TINY_OVERRIDES

    model = trained_lora("sam2_tiny")
    path = export_weights(model, tmp_path, ["full"])["full"]
    grid = SIZE // 16
    size = [f"++model.image_size={SIZE}",
            f"++model.memory_attention.layer.self_attention.feat_sizes=[{grid},{grid}]",
            f"++model.memory_attention.layer.cross_attention.feat_sizes=[{grid},{grid}]"]
    # build_sam2 reads {"model": …} with weights_only=True and loads it strictly
    upstream = build_sam2("configs/sam2.1/sam2.1_hiera_t.yaml", str(path), device="cpu",
                          hydra_overrides_extra=[*size, *TINY_OVERRIDES])
    assert torch.equal(upstream.image_encoder.trunk.blocks[0].attn.qkv.weight,
                       merged_state_dict(model)["image_encoder.trunk.blocks.0.attn.qkv.weight"])


def test_full_export_of_a_plain_model_and_errors(tmp_path: Path) -> None:
    model = apply_method(fresh("sam_tiny"), ModelConfig(name="sam_tiny", method="frozen"))
    with pytest.raises(ValueError, match="no LoRA adapter"):
        export_weights(model, tmp_path / "a", ["full", "lora_adapter"])
    with pytest.raises(ValueError, match="unknown export kinds"):
        export_weights(model, tmp_path / "a", ["full", "tflite"])
    assert not (tmp_path / "a").exists()  # nothing written before the checks
    paths = export_weights(model, tmp_path / "b", ["full", "image_encoder"])
    state = torch.load(paths["full"], map_location="cpu", weights_only=True)
    assert state.keys() == model.state_dict().keys()
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["full.pt", "image_encoder.pt"]


def test_adapter_of_another_family_is_refused(exported, tmp_path: Path) -> None:
    name, _, _, paths = exported
    other = "sam2_tiny" if name == "sam_tiny" else "sam_tiny"
    with pytest.raises(ValueError, match="adapter of a"):
        load_lora_adapter(fresh(other), paths["lora_adapter"])


def test_quantized_lora_exports_dense_merged_weights(tmp_path: Path) -> None:
    """The qlora export path (4-bit base + LoRA) on bitsandbytes' CPU backend: `full` holds
    dequantised + merged weights in the upstream layout and reproduces the 4-bit model."""
    bnb = pytest.importorskip("bitsandbytes")
    try:
        bnb.functional.quantize_4bit(torch.randn(64, 64), quant_type="nf4")
    except Exception as exc:  # older bitsandbytes: 4-bit kernels on CUDA only
        pytest.skip(f"bitsandbytes has no CPU 4-bit support here ({exc})")
    model = fresh("sam_tiny")
    n = quantize_image_encoder(model, "cpu")
    assert n == sum(isinstance(m, bnb.nn.Linear4bit) for m in model.image_encoder.modules()) == 8
    model.is_loaded_in_4bit = True
    apply_lora(model, 4, 8.0, 0.0, ["encoder_qkv", "decoder_mlp"])
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.add_(0.05 * torch.randn(p.shape, generator=g))
    reference = outputs(model)
    paths = export_weights(model, tmp_path, ["full", "lora_adapter"])
    state = torch.load(paths["full"], map_location="cpu", weights_only=True)
    base = fresh("sam_tiny")
    assert state.keys() == base.state_dict().keys()  # no absmax/quant_map, no base_layer
    base.load_state_dict(state, strict=True)
    # bitsandbytes' CPU 4-bit kernels round differently per machine (seen: 1e-4 apart)
    assert torch.allclose(outputs(base), reference, atol=1e-3)
    assert json.loads(paths["lora_adapter_config"].read_text())["base_4bit"] is True
