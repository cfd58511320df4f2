"""HQ-SAM (SysCV/sam-hq, package `segment_anything_hq`) behind `PromptableModel`.

HQ-SAM is SAM plus a High-Quality output token: its image encoder also returns the ViT features
after the first global-attention block (Light HQ-SAM's TinyViT: after its second layer), and
`MaskDecoderHQ` fuses them with the image embedding into an HQ feature map that the extra token
(`hf_token` → `hf_mlp`) reads. The parts are segment_anything_hq's own modules, so
`state_dict()` has the official key layout of `sam_hq_vit_b.pth` etc. (the SAM keys plus
`mask_decoder.{hf_token, hf_mlp, compress_vit_feat, embedding_encoder, embedding_maskfeature}`).

Embeddings: `image` B×256×S/16×S/16 as SAM; `high_res[0]` the early ViT feature,
B×C_vit×S/16×S/16 (channel first; upstream keeps it B×H×W×C). It is part of the image encoder's
output, so the frozen-encoder embedding cache stores and reloads it with the image embedding.

Masks, as upstream's `SamPredictor.predict(..., hq_token_only=False)`: the SAM mask logits plus
the HQ token's logits (`hq_token_only=True`: the HQ logits alone). Upstream's multimask output is
the best of SAM's three masks by predicted IoU, plus the HQ mask; here `multimask=True` returns
all three (each plus the HQ mask) with their IoU, so `select_best` gives upstream's answer.
"""
from __future__ import annotations

import warnings
from functools import partial
from types import ModuleType

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from samtune.models.base import Embeddings, Prompts
from samtune.models.sam import SamWrapper

HQ_URL = "https://huggingface.co/lkeab/hq-sam/resolve/main/"
# What HQ-SAM adds to SAM's mask decoder (and what upstream trains, the rest frozen).
HQ_MODULES = ("hf_token", "hf_mlp", "compress_vit_feat", "embedding_encoder",
              "embedding_maskfeature")


def _modeling() -> ModuleType:
    with warnings.catch_warnings():  # its TinyViT re-registers timm models on import
        warnings.simplefilter("ignore")
        from segment_anything_hq import modeling
    return modeling


class HqSamWrapper(SamWrapper):
    """segment_anything_hq's `ImageEncoderViT` (or `TinyViT`) + `PromptEncoder` +
    `MaskDecoderHQ`. hq_token_only: decode to the HQ token's mask alone (upstream's option;
    default False, upstream's default)."""

    def __init__(self, image_encoder: nn.Module, prompt_encoder: nn.Module,
                 mask_decoder: nn.Module, img_size: int, family: str = "sam",
                 hq_token_only: bool = False):
        super().__init__(image_encoder, prompt_encoder, mask_decoder, img_size, family)
        self.hq_token_only = hq_token_only

    # MaskDecoderHQ repeats its per-image HQ features by the instance count (hq_features.repeat),
    # so instances of several images cannot share a call: `decode_many` decodes per image.
    decode_pooled = None  # type: ignore[assignment]

    def encode(self, images: torch.Tensor) -> Embeddings:
        """B×3×S×S normalised → Embeddings(image=B×C×S/16×S/16, high_res=[B×C_vit×S/16×S/16])."""
        enc = self.image_encoder
        if hasattr(enc, "layers"):
            image, early = self._encode_tiny_vit_hq(images)
        elif not (self.grad_checkpointing and self.training):
            image, interm = enc(images)
            early = interm[0]
        else:  # ImageEncoderViT.forward, each block recomputed in the backward pass
            x = enc.patch_embed(images)
            if enc.pos_embed is not None:
                x = x + enc.pos_embed
            interm = []
            for blk in enc.blocks:
                x = checkpoint(blk, x, use_reentrant=False)
                if blk.window_size == 0:
                    interm.append(x)
            image, early = enc.neck(x.permute(0, 3, 1, 2)), interm[0]
        return Embeddings(image, [early.permute(0, 3, 1, 2)])

    def _encode_tiny_vit_hq(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # TinyViT.forward_features (segment_anything_hq) hard-codes a 64×64 grid (1024 input);
        # the same steps on the S/16 grid. → (B×256×g×g, B×g×g×C_vit after layer 1).
        enc = self.image_encoder
        grid = images.shape[-1] // 16
        x = enc.layers[0](enc.patch_embed(images))
        early = x  # replaced after layer 1
        for i, layer in enumerate(enc.layers[1:], start=1):
            x = layer(x)
            if i == 1:
                early = x.view(x.shape[0], grid, grid, -1)
        image = enc.neck(x.view(x.shape[0], grid, grid, x.shape[-1]).permute(0, 3, 1, 2))
        return image, early

    def decode(self, emb: Embeddings, b: int, prompts: Prompts,
               multimask: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompts of image `b` → (logits N×M×S/4×S/4, IoU N×M); M = 3 if multimask else 1."""
        dec = self.mask_decoder
        dtype = dec.iou_token.weight.dtype
        image = emb.image[b:b + 1].to(dtype)
        early = emb.high_res[0][b:b + 1].to(dtype)  # 1×C_vit×h×w
        m = 3 if multimask else 1
        if len(prompts) == 0:
            h, w = image.shape[-2:]
            return image.new_zeros(0, m, 4 * h, 4 * w), image.new_zeros(0, m)
        sparse, dense = self._encode_prompts(prompts)
        # MaskDecoderHQ.forward up to its mask selection (which keeps one multimask output).
        hq_features = dec.embedding_encoder(image) + dec.compress_vit_feat(early)
        masks, iou = dec.predict_masks(image_embeddings=image,
                                       image_pe=self.prompt_encoder.get_dense_pe(),
                                       sparse_prompt_embeddings=sparse.to(dtype),
                                       dense_prompt_embeddings=dense.to(dtype),
                                       hq_features=hq_features)
        # masks N×5×s×s: SAM's single-mask token, its 3 multimask tokens, the HQ token.
        pick = slice(1, 4) if multimask else slice(0, 1)
        sam_masks, hq_mask = masks[:, pick], masks[:, -1:]
        logits = hq_mask.expand_as(sam_masks) if self.hq_token_only else sam_masks + hq_mask
        return logits, iou[:, pick]

    def _encode_prompts(self, prompts: Prompts) -> tuple[torch.Tensor, torch.Tensor]:
        """→ (sparse N×T×C, dense N×C×h×w) prompt embeddings, as SamWrapper.decode makes them."""
        dtype = self.prompt_encoder.no_mask_embed.weight.dtype
        points = None
        if prompts.points is not None:
            if prompts.point_labels is None:
                raise ValueError("Prompts.points needs point_labels (N×P: 1, 0 or -1)")
            points = (prompts.points.to(dtype), prompts.point_labels)
        boxes = None if prompts.boxes is None else prompts.boxes.to(dtype)
        masks = None if prompts.mask_inputs is None else prompts.mask_inputs.to(dtype)
        return self.prompt_encoder(points=points, boxes=boxes, masks=masks)


# ------------------------------------------------------------------------------- builders
def _hq_heads(img_size: int, prompt_dim: int, mlp_dim: int, heads: int, iou_hidden: int,
              vit_dim: int) -> tuple[nn.Module, nn.Module]:
    m = _modeling()
    grid = img_size // 16
    prompt_encoder = m.PromptEncoder(embed_dim=prompt_dim, image_embedding_size=(grid, grid),
                                     input_image_size=(img_size, img_size), mask_in_chans=16)
    mask_decoder = m.MaskDecoderHQ(
        num_multimask_outputs=3,
        transformer=m.TwoWayTransformer(depth=2, embedding_dim=prompt_dim, mlp_dim=mlp_dim,
                                        num_heads=heads),
        transformer_dim=prompt_dim, iou_head_depth=3, iou_head_hidden_dim=iou_hidden,
        vit_dim=vit_dim)
    return prompt_encoder, mask_decoder


def _build_hq_sam(img_size: int, *, embed_dim: int, depth: int, num_heads: int,
                  global_attn: tuple[int, ...], window_size: int = 14, prompt_dim: int = 256,
                  mlp_dim: int = 2048, decoder_heads: int = 8, iou_hidden: int = 256
                  ) -> HqSamWrapper:
    """segment_anything_hq's `_build_sam` with the input size (and, for the tiny model, the
    widths) as arguments; the decoder's vit_dim is the encoder width, as upstream."""
    encoder = _modeling().ImageEncoderViT(
        depth=depth, embed_dim=embed_dim, img_size=img_size, mlp_ratio=4,
        norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), num_heads=num_heads, patch_size=16,
        qkv_bias=True, use_rel_pos=True, global_attn_indexes=global_attn,
        window_size=window_size, out_chans=prompt_dim)
    prompt_encoder, mask_decoder = _hq_heads(img_size, prompt_dim, mlp_dim, decoder_heads,
                                             iou_hidden, embed_dim)
    return HqSamWrapper(encoder, prompt_encoder, mask_decoder, img_size, "sam")


def build_hq_sam_vit_tiny(img_size: int) -> HqSamWrapper:
    """segment_anything_hq's `build_sam_vit_t` (Light HQ-SAM): MobileSAM's TinyViT, vit_dim 160.
    Family `mobile_sam`, so encoder LoRA targets name TinyViT's layers."""
    encoder = _modeling().TinyViT(
        img_size=img_size, in_chans=3, num_classes=1000, embed_dims=[64, 128, 160, 320],
        depths=[2, 2, 6, 2], num_heads=[2, 4, 5, 10], window_sizes=[7, 7, 14, 7],
        mlp_ratio=4.0, drop_rate=0.0, drop_path_rate=0.0, use_checkpoint=False,
        mbconv_expand_ratio=4.0, local_conv_size=3, layer_lr_decay=0.8)
    prompt_encoder, mask_decoder = _hq_heads(img_size, 256, 2048, 8, 256, 160)
    return HqSamWrapper(encoder, prompt_encoder, mask_decoder, img_size, "mobile_sam")


build_hq_sam_vit_b = partial(_build_hq_sam, embed_dim=768, depth=12, num_heads=12,
                             global_attn=(2, 5, 8, 11))
build_hq_sam_vit_l = partial(_build_hq_sam, embed_dim=1024, depth=24, num_heads=16,
                             global_attn=(5, 11, 17, 23))
build_hq_sam_vit_h = partial(_build_hq_sam, embed_dim=1280, depth=32, num_heads=16,
                             global_attn=(7, 15, 23, 31))
# sam_tiny's widths (registry.build_sam_tiny) with the HQ decoder: for CPU tests and demos.
build_hq_sam_tiny = partial(_build_hq_sam, embed_dim=64, depth=2, num_heads=2, global_attn=(1,),
                            window_size=8, prompt_dim=64, mlp_dim=256, decoder_heads=4,
                            iou_hidden=64)
