"""train.attention / train.grad_checkpointing / train.compile (samtune.train.speedups)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from samtune.models.fast_attention import attention_kind
from samtune.models.registry import build_architecture
from samtune.train.loop import train
from samtune.train.speedups import apply_speedups, compile_image_encoder, encoder_blocks
from samtune.train.step import batch_loss
from tests.train.test_loop import Blobs, tiny_cfg, tiny_model


def patched(model: nn.Module) -> int:
    return sum("forward" in m.__dict__ for m in model.modules() if attention_kind(m))


def compiled(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if "_compiled_call_impl" in m.__dict__]


def test_defaults_use_sdpa_for_the_run_only() -> None:
    model = tiny_model()
    undo = apply_speedups(model, tiny_cfg())
    assert patched(model) == 9 and not model.grad_checkpointing and not compiled(model)
    undo()
    assert patched(model) == 0
    apply_speedups(model, tiny_cfg(attention="eager"))
    assert patched(model) == 0


@pytest.mark.parametrize("name", ["sam_tiny", "sam2_tiny"])
def test_grad_checkpointing_gives_the_same_loss_and_gradients(name: str) -> None:
    item = Blobs(1, instances=2)[0]
    batch = {"images": item["image"][None], "masks": [item["masks"]]}
    results = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model = build_architecture(name, 64).train()
        cfg = tiny_cfg(grad_checkpointing=checkpointing)
        undo = apply_speedups(model, cfg)
        assert model.grad_checkpointing is checkpointing
        parts, n = batch_loss(model, batch, cfg, model.normalize,
                              torch.Generator().manual_seed(1), torch.device("cpu"))
        parts.total.backward()
        undo()
        assert not model.grad_checkpointing
        results.append((parts.total.detach(), {k: p.grad.clone() for k, p in
                                               model.named_parameters() if p.grad is not None}))
    (loss0, grads0), (loss1, grads1) = results
    assert n == 2 and loss0 > 0
    torch.testing.assert_close(loss1, loss0, atol=1e-5, rtol=0)
    encoder = [k for k in grads0 if k.startswith("image_encoder.")]
    assert grads0.keys() == grads1.keys() and any(grads0[k].abs().sum() > 0 for k in encoder)
    for k in grads0:
        torch.testing.assert_close(grads1[k], grads0[k], atol=1e-5, rtol=1e-4)


def test_compile_wiring(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """torch.compile takes minutes on the CPU: nn.Module.compile is replaced by a recorder
    that marks the module as upstream's does, and the loop must compile and un-compile."""
    calls: list[nn.Module] = []

    def fake_compile(self: nn.Module, *args: object, **kwargs: object) -> None:
        calls.append(self)
        self._compiled_call_impl = self._call_impl

    monkeypatch.setattr(nn.Module, "compile", fake_compile)
    model = tiny_model()
    undo = apply_speedups(model, tiny_cfg(compile=True))
    assert calls == [model.image_encoder] and compiled(model) == ["image_encoder"]
    undo()
    assert not compiled(model)
    calls.clear()
    undo = apply_speedups(model, tiny_cfg(compile=True, grad_checkpointing=True))
    assert calls == encoder_blocks(model) == list(model.image_encoder.blocks)  # checkpointed
    undo()
    calls.clear()
    result = train(model, Blobs(4, instances=1), None, tiny_cfg(epochs=1, compile=True),
                   tmp_path)
    assert result.steps == 1 and calls == [model.image_encoder] and not compiled(model)


def test_compiled_encoder_encodes_the_same() -> None:
    """A real torch.compile, with dynamo's "eager" backend (traces, no C++ codegen): same
    embeddings, and the state-dict keys keep no `_orig_mod.` prefix."""
    torch._dynamo.reset()
    model = tiny_model().eval()
    images = model.normalize(torch.rand(2, 3, 64, 64) * 255)
    keys = list(model.state_dict())
    with torch.no_grad():
        ref = model.encode(images).image
        assert compile_image_encoder(model, backend="eager") == [model.image_encoder]
        out = model.encode(images).image
    assert list(model.state_dict()) == keys
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=1e-6)


def test_one_epoch_with_sdpa_matches_eager(tmp_path: Path) -> None:
    """SGD: Adam's first steps are ≈ lr·sign(g), which turns rounding-size gradient
    differences on near-zero gradients into lr-size weight differences."""
    weights, losses = [], []
    for attention in ("eager", "sdpa"):
        model = tiny_model()
        cfg = tiny_cfg(epochs=1, attention=attention, optimizer="SGD",
                       optimizer_kwargs={"lr": 0.1, "momentum": 0.9})
        result = train(model, Blobs(8, instances=1), None, cfg, tmp_path / attention)
        assert patched(model) == 0  # undone after the run
        weights.append(model.state_dict())
        losses.append(result.history[0]["loss"])
    assert losses[0] == pytest.approx(losses[1], abs=1e-5)
    moved = [k for k in weights[0] if not torch.equal(weights[0][k], tiny_model().state_dict()[k])]
    assert moved
    for k in weights[0]:
        torch.testing.assert_close(weights[1][k], weights[0][k], atol=1e-5, rtol=1e-4)
