"""Attention through `torch.nn.functional.scaled_dot_product_attention` (SDPA) for the
segment-anything family, applied to a built model: `use_sdpa(model)`.

segment-anything (and segment_anything_hq, mobile_sam) compute attention explicitly: q·kᵀ, a
softmax over the full N×N map, then ·v. SDPA computes the same function with fused kernels
(flash / memory-efficient on CUDA, a fused flash kernel on the CPU) that never keep the softmax
map for the backward pass. What changes per module, and nothing else:

- ViT image encoder `Attention` (SAM, MedSAM, HQ-SAM): the decomposed relative-position terms
  (q·R_h, q·R_w of `add_decomposed_rel_pos`, on the unscaled q as upstream) become an additive
  `attn_mask` B×heads×N×N; the scale is SDPA's default head_dim^-½, upstream's `self.scale`.
- two-way transformer `Attention` of the mask decoder: plain SDPA (scale 1/√c_per_head).
- TinyViT `Attention` (MobileSAM, Light HQ-SAM): the learned attention biases as the mask.

On the CPU, torch's fused kernel has no gradient for a mask, and SDPA with a bias mask under
autograd measured slower than upstream (ViT-B at 512², 2 cores: encoder fwd+bwd 13.6 s vs
11.9 s), so a CPU forward that records gradients runs upstream's own `forward`; SDPA serves the
no-grad CPU encodes (frozen encoder, cache build, inference) and every CUDA case
(memory-efficient kernel, mask gradient included).

Only `forward` is swapped (an instance attribute, removed again by `use_sdpa(model, False)`),
so parameters, buffers and the state-dict key layout stay the official ones, and peft LoRA
still finds and wraps `qkv` / `q_proj` …. SAM2's Hiera and decoder already call SDPA upstream;
SAM-Med3D's 3D ViT (medim) is left as it is.
"""
from __future__ import annotations

import logging
from types import MethodType
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ATTENTION_KINDS", "attention_kind", "rel_pos_bias", "use_sdpa"]
log = logging.getLogger(__name__)

# (defining module, class name) → kind; the classes are matched by name so that this module
# imports none of the three packages.
ATTENTION_KINDS: dict[tuple[str, str], str] = {
    ("segment_anything.modeling.image_encoder", "Attention"): "vit",
    ("segment_anything_hq.modeling.image_encoder", "Attention"): "vit",
    ("segment_anything.modeling.transformer", "Attention"): "decoder",
    ("segment_anything_hq.modeling.transformer", "Attention"): "decoder",
    ("mobile_sam.modeling.transformer", "Attention"): "decoder",
    ("mobile_sam.modeling.tiny_vit_sam", "Attention"): "tiny_vit",
    ("segment_anything_hq.modeling.tiny_vit_sam", "Attention"): "tiny_vit",
}


def attention_kind(module: nn.Module) -> str | None:
    """'vit', 'decoder' or 'tiny_vit' for an upstream attention module SDPA can replace."""
    cls = type(module)
    return ATTENTION_KINDS.get((cls.__module__, cls.__name__))


def _rel_pos(size: int, rel_pos: torch.Tensor) -> torch.Tensor:
    """segment-anything's `get_rel_pos` for equal query and key sizes: → size×size×C."""
    length = 2 * size - 1
    if rel_pos.shape[0] != length:  # interpolated as upstream
        rel_pos = F.interpolate(rel_pos.reshape(1, rel_pos.shape[0], -1).permute(0, 2, 1),
                                size=length, mode="linear").reshape(-1, length).permute(1, 0)
    coords = torch.arange(size, device=rel_pos.device)
    return rel_pos[(coords[:, None] - coords[None, :] + size - 1).long()]


def rel_pos_bias(q: torch.Tensor, rel_pos_h: torch.Tensor, rel_pos_w: torch.Tensor,
                 hw: tuple[int, int]) -> torch.Tensor:
    """Decomposed relative-position terms as an additive attention mask.

    q: B×heads×(H·W)×C (unscaled); rel_pos_h: (2H−1)×C; rel_pos_w: (2W−1)×C →
    B×heads×(H·W)×(H·W), the terms `add_decomposed_rel_pos` adds to q·kᵀ·scale."""
    h, w = hw
    b, heads, n, c = q.shape
    r_q = q.reshape(b * heads, h, w, c)
    rel_h = torch.einsum("bhwc,hkc->bhwk", r_q, _rel_pos(h, rel_pos_h).to(q.dtype))
    rel_w = torch.einsum("bhwc,wkc->bhwk", r_q, _rel_pos(w, rel_pos_w).to(q.dtype))
    return (rel_h[:, :, :, :, None] + rel_w[:, :, :, None, :]).reshape(b, heads, n, n)


def _attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
               mask: torch.Tensor | None) -> torch.Tensor:
    """SDPA with an optional additive mask (its default scale, head_dim^-½)."""
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def _cpu_training(x: torch.Tensor) -> bool:
    """A CPU forward that records gradients: measured on 2 cores (ViT-B at 512², fwd+bwd)
    upstream's explicit softmax is ~15% faster there than SDPA plus a bias mask, so it runs."""
    return x.device.type == "cpu" and torch.is_grad_enabled()


def _vit_forward(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """B×H×W×dim → B×H×W×dim, as segment-anything's `Attention.forward`."""
    if _cpu_training(x):
        return type(self).forward(self, x)
    b, h, w, _ = x.shape
    qkv = self.qkv(x).reshape(b, h * w, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)  # B×heads×N×C each
    mask = rel_pos_bias(q, self.rel_pos_h, self.rel_pos_w, (h, w)) if self.use_rel_pos else None
    out = _attention(q, k, v, mask)
    return self.proj(out.transpose(1, 2).reshape(b, h, w, -1))


def _decoder_forward(self: nn.Module, q: torch.Tensor, k: torch.Tensor,
                     v: torch.Tensor) -> torch.Tensor:
    """B×Nq×dim, B×Nk×dim, B×Nk×dim → B×Nq×dim, as the two-way transformer's `Attention`."""
    q = self._separate_heads(self.q_proj(q), self.num_heads)
    k = self._separate_heads(self.k_proj(k), self.num_heads)
    v = self._separate_heads(self.v_proj(v), self.num_heads)
    return self.out_proj(self._recombine_heads(F.scaled_dot_product_attention(q, k, v)))


def _tiny_vit_forward(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """B×N×dim → B×N×dim, as TinyViT's `Attention.forward` (biases as the mask)."""
    if _cpu_training(x):
        return type(self).forward(self, x)
    b, n, _ = x.shape
    qkv = self.qkv(self.norm(x)).view(b, n, self.num_heads, -1)
    q, k, v = (t.permute(0, 2, 1, 3) for t in qkv.split([self.key_dim, self.key_dim, self.d],
                                                         dim=3))
    bias = self.attention_biases[:, self.attention_bias_idxs] if self.training else self.ab
    out = _attention(q, k, v, bias.to(q.dtype))  # scale: key_dim^-½, q's last dim
    return self.proj(out.transpose(1, 2).reshape(b, n, self.dh))


_FORWARDS: dict[str, Callable[..., torch.Tensor]] = {
    "vit": _vit_forward, "decoder": _decoder_forward, "tiny_vit": _tiny_vit_forward}


def use_sdpa(model: nn.Module, enabled: bool = True) -> int:
    """Swap the forward of every upstream attention module of `model` to SDPA (enabled) or
    back to upstream's (not enabled), in place; → how many modules it switched."""
    count = 0
    for module in model.modules():
        kind = attention_kind(module)
        if kind is None:
            continue
        patched = "forward" in module.__dict__
        if enabled and not patched:
            module.forward = MethodType(_FORWARDS[kind], module)
        elif not enabled and patched:
            del module.forward
        else:
            continue
        count += 1
    log.debug("attention %s: %d modules switched", "sdpa" if enabled else "eager", count)
    return count
