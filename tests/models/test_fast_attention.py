"""SDPA attention (samtune.models.fast_attention) against upstream's explicit softmax."""
from __future__ import annotations

import pytest
import torch

from samtune.models import fast_attention
from samtune.models.adapters import apply_lora
from samtune.models.base import PromptableModel, Prompts
from samtune.models.fast_attention import attention_kind, use_sdpa
from samtune.models.registry import build_architecture

SIZE = 128
PROMPTS = Prompts(boxes=torch.tensor([[10.0, 12.0, 60.0, 70.0], [40.0, 30.0, 110.0, 120.0]]))


def random_model(name: str, seed: int = 0) -> PromptableModel:
    """Random weights, with the zero-initialised relative-position tables and TinyViT
    attention biases made non-zero so that the attention mask path matters."""
    torch.manual_seed(seed)
    model = build_architecture(name, SIZE)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "rel_pos" in n or "attention_biases" in n:
                p.normal_(0, 0.5)
    return model


def run(model: PromptableModel, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """→ (image embedding 1×C×h×w, low-res logits of image 0, N×3×s×s)."""
    emb = model.encode(model.normalize(images))
    logits, _ = model.decode(emb, 0, PROMPTS, multimask=True)
    return emb.image, logits


@pytest.mark.parametrize("name,modules", [("sam_tiny", 2 + 7), ("hq_sam_tiny", 2 + 7),
                                          ("mobile_sam", 10 + 7)])
def test_sdpa_equals_eager_in_fp32(name: str, modules: int) -> None:
    model = random_model(name).eval()
    images = torch.rand(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1)) * 255
    keys = list(model.state_dict())
    with torch.no_grad():
        eager = run(model, images)
        assert use_sdpa(model) == modules  # encoder blocks + 2×3 + 1 decoder attentions
        sdpa = run(model, images)
    assert list(model.state_dict()) == keys  # official key layout, nothing renamed
    assert eager[1].abs().max() > 0.05  # a real signal to compare
    for a, b in zip(eager, sdpa):
        torch.testing.assert_close(b, a, atol=1e-4, rtol=1e-4)
    assert use_sdpa(model, False) == modules  # back to upstream's forward
    assert all("forward" not in m.__dict__ for m in model.modules() if attention_kind(m))


@pytest.mark.parametrize("fused_everywhere", [False, True])
def test_sdpa_gradients_equal_eager(fused_everywhere: bool, monkeypatch: pytest.MonkeyPatch
                                    ) -> None:
    """fused_everywhere: SDPA (bias mask with its gradient) also where CPU training runs
    upstream's forward, as on CUDA; else the CPU training path."""
    if fused_everywhere:
        monkeypatch.setattr(fast_attention, "_cpu_training", lambda x: False)
    model = random_model("sam_tiny").train()
    images = torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(2)) * 255
    grads = []
    for sdpa in (False, True):
        use_sdpa(model, sdpa)
        model.zero_grad()
        emb, logits = run(model, images)
        (logits.sigmoid().mean() + emb.square().mean()).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()
                      if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    rel = [n for n in grads[0] if "rel_pos" in n]
    assert rel and all(grads[0][n].abs().sum() > 0 for n in rel)  # the mask carries gradient
    for n in grads[0]:
        torch.testing.assert_close(grads[1][n], grads[0][n], atol=1e-5, rtol=1e-4)


def test_sdpa_under_bf16_autocast_stays_close() -> None:
    """bf16 (8-bit mantissa): SDPA and eager differ from fp32 by rounding alone; SDPA's error
    stays within 2× eager's plus 0.005 (measured: both ≈ 0.003 on logits up to 0.24), and the
    two bf16 results within 0.02."""
    model = random_model("sam_tiny").eval()
    images = torch.rand(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(3)) * 255
    with torch.no_grad():
        ref = run(model, images)[1]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            eager = run(model, images)[1].float()
            use_sdpa(model)
            sdpa = run(model, images)[1].float()
    err_eager, err_sdpa = (t.sub(ref).abs().max().item() for t in (eager, sdpa))
    assert 0 < err_eager and err_sdpa <= 2 * err_eager + 0.005
    torch.testing.assert_close(sdpa, eager, atol=0.02, rtol=0.02)


def test_lora_wraps_qkv_after_the_patch() -> None:
    from peft.tuners.lora import Linear as LoraLinear

    model = random_model("sam_tiny").eval()
    images = torch.rand(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(4)) * 255
    use_sdpa(model)
    names = apply_lora(model, r=4, alpha=8, dropout=0.0, targets=["encoder_qkv",
                                                                 "decoder_attention"])
    assert "image_encoder.blocks.0.attn.qkv" in names
    assert isinstance(model.image_encoder.blocks[0].attn.qkv, LoraLinear)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:  # peft starts B at 0; make the adapters change the output
                p.normal_(0, 0.2)
        sdpa = run(model, images)
        use_sdpa(model, False)
        eager = run(model, images)
    for a, b in zip(eager, sdpa):
        torch.testing.assert_close(b, a, atol=1e-4, rtol=1e-4)
    qkv = model.image_encoder.blocks[0].attn.qkv
    x = torch.randn(3, 64)
    assert not torch.allclose(qkv(x), qkv.base_layer(x))  # the LoRA path is live
