"""SAM-Med3D (uni-medical/SAM-Med3D; architecture from the `medim` package) behind
`PromptableModel`: a fully 3D SAM on S×S×S crops (S = 128 for the released weights).

The wrapper holds medim's `ImageEncoderViT3D`, `PromptEncoder3D` and `MaskDecoder3D` as they
are, and its pixel mean/std are non-persistent buffers (as in medim's `SAM_Med3D`, whose
inference never uses them), so `state_dict()` has exactly the keys of medim's
`build_sam3D_vit_b_ori()`; the official `{"model_state_dict": …}` files load as they are.

Input path, as upstream's `utils/infer_utils.py` (`sam_model_infer`): a crop of raw intensities
→ torchio `ZNormalization(masking_method=lambda x: x > 0)` (`z_normalize` here, in torch) →
image encoder → B×C×(S/16)³. Prompts: points N×P×3 are voxel indices of the crop in the
tensor's own dimension order (`torch.argwhere` order), passed as they are; the mask prompt is
the previous round's low-res logits N×1×(S/4)³, zeros on the first click (never "no mask").
`PromptEncoder3D` has two point embeddings (positive, negative), so boxes cannot be embedded.
Masks: low-res logits → trilinear to S³ (align_corners=False) → sigmoid > 0.5 (⇔ logit > 0).

Upstream's training (`train.py`) z-normalises a whole batch of crops as one tensor (its
`squeeze(dim=1)` makes the batch torchio's channel axis); its inference, reproduced here,
normalises each crop on its own.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from samtune.models.base import Embeddings, PromptableModel, Prompts

log = logging.getLogger(__name__)

HF_URL = "https://huggingface.co/blueyo0/SAM-Med3D/resolve/main/"
# medim's build_sam3D_vit_b_ori passes SAM's ImageNet values; upstream inference ignores them.
PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)
BOX_ERROR = ("SAM-Med3D has no box embedding (its PromptEncoder3D holds only the positive and "
             "negative point embeddings); prompt it with points (N×P×3 voxel indices)")


@dataclass(frozen=True)
class SamMed3DSizes:
    """The widths of one SAM-Med3D architecture (what `_build_sam_med3d` takes besides S)."""

    embed_dim: int
    depth: int
    num_heads: int
    global_attn: tuple[int, ...]
    prompt_dim: int
    window_size: int = 14
    iou_hidden: int = 256
    patch_size: int = 16


VIT_B_ORI = SamMed3DSizes(embed_dim=768, depth=12, num_heads=12, global_attn=(2, 5, 8, 11),
                          prompt_dim=384)


def z_normalize(crops: torch.Tensor) -> torch.Tensor:
    """B×1×S×S×S raw intensities → float32, each crop as torchio's
    `ZNormalization(masking_method=lambda x: x > 0)`: (x − mean) / std with mean and the
    unbiased std taken over the crop's voxels > 0 and applied to every voxel of it.

    Empty cases, as torchio: a crop whose voxels > 0 all have one value (std 0) →
    RuntimeError; a crop with fewer than two voxels > 0 → all NaN (torchio's mean/std of an
    empty or one-element selection), with a warning logged here."""
    out = crops.clone().float()
    for b in range(out.shape[0]):
        values = out[b][out[b] > 0]
        if values.numel() < 2:
            log.warning("crop %d has %d voxels > 0: its z-normalisation is NaN (as torchio)", b,
                        values.numel())
            out[b] = float("nan")
            continue
        mean, std = values.mean(), values.std()
        if std == 0:
            raise RuntimeError(f"Standard deviation is 0 for the voxels > 0 of crop {b} "
                               "(torchio's ZNormalization refuses it too)")
        out[b] -= mean
        out[b] /= std
    return out


class SamMed3DWrapper(PromptableModel):
    """medim's `ImageEncoderViT3D` + `PromptEncoder3D` + `MaskDecoder3D`.

    img_size: the edge S of the S×S×S crop (a multiple of the patch size P, 16 for every
    released model); the image embedding is C×(S/P)³ and the low-res logits and mask prompts
    (4S/P)³, (S/4)³ at P = 16. sizes: the widths it was built
    with (for rebuilding it in medim's own classes, see `samtune.inference.fidelity3d`).
    """

    family = "sam_med3d"
    spatial_dims = 3
    preprocess = "sam_med3d"

    def __init__(self, image_encoder: nn.Module, prompt_encoder: nn.Module,
                 mask_decoder: nn.Module, img_size: int, sizes: SamMed3DSizes):
        super().__init__(img_size, PIXEL_MEAN, PIXEL_STD)
        self.image_encoder = image_encoder
        self.prompt_encoder = prompt_encoder
        self.mask_decoder = mask_decoder
        self.sizes = sizes
        self.grad_checkpointing = False

    @property
    def low_res_size(self) -> tuple[int, int, int]:
        """The low-res logits / mask prompt grid: 4× the embedding grid, (S/4)³ at patch 16."""
        return (4 * self.img_size // self.sizes.patch_size,) * 3

    def set_grad_checkpointing(self, enabled: bool = True) -> None:
        """Recompute the encoder's ViT blocks in the backward pass."""
        self.grad_checkpointing = enabled

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """B×1×S×S×S raw intensities → the model input (`z_normalize`, upstream's inference)."""
        return z_normalize(images)

    def encode(self, images: torch.Tensor) -> Embeddings:
        """B×1×S×S×S normalised → Embeddings(image=B×C×(S/16)³)."""
        enc = self.image_encoder
        if not (self.grad_checkpointing and self.training):
            return Embeddings(enc(images))
        # ImageEncoderViT3D.forward, with each block recomputed in the backward pass.
        x = enc.patch_embed(images)
        if enc.pos_embed is not None:
            x = x + enc.pos_embed
        for blk in enc.blocks:
            x = checkpoint(blk, x, use_reentrant=False)
        return Embeddings(enc.neck(x.permute(0, 4, 1, 2, 3)))

    def decode(self, emb: Embeddings, b: int, prompts: Prompts,
               multimask: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompts of crop `b` → (low-res logits N×M×(S/4)³, IoU N×M); M = 3 if multimask
        (MaskDecoder3D's three multimask tokens) else 1.

        prompts.points N×P×3 voxel indices (crop tensor order) with point_labels N×P (1, 0, -1
        padding); mask_inputs N×1×(S/4)³ low-res logits, or None for zeros (upstream's first
        click feeds zeros, not the no-mask embedding). boxes → ValueError (`BOX_ERROR`)."""
        if prompts.boxes is not None:
            raise ValueError(BOX_ERROR)
        image = emb.image[b:b + 1].to(self.mask_decoder.iou_token.weight.dtype)
        dtype = self.prompt_encoder.no_mask_embed.weight.dtype
        m, n = (3 if multimask else 1), len(prompts)
        low_size = tuple(4 * g for g in image.shape[-3:])
        if n == 0:
            return image.new_zeros(0, m, *low_size), image.new_zeros(0, m)
        points = None
        if prompts.points is not None:
            if prompts.point_labels is None:
                raise ValueError("Prompts.points needs point_labels (N×P: 1, 0 or -1)")
            if prompts.points.shape[-1] != 3:
                raise ValueError(f"SAM-Med3D points are N×P×3 voxel indices, got "
                                 f"{tuple(prompts.points.shape)}")
            points = (prompts.points.to(dtype), prompts.point_labels)
        masks = prompts.mask_inputs
        if masks is None:
            masks = image.new_zeros(n, 1, *low_size, dtype=dtype)
        elif tuple(masks.shape) != (n, 1, *low_size):
            raise ValueError(f"mask_inputs must be N×1×(S/4)³ = {(n, 1, *low_size)}, got "
                             f"{tuple(masks.shape)}")
        sparse, dense = self.prompt_encoder(points=points, boxes=None, masks=masks.to(dtype))
        # MaskDecoder3D repeats the one image embedding per prompt itself.
        return self.mask_decoder(image_embeddings=image,
                                 image_pe=self.prompt_encoder.get_dense_pe().to(image.dtype),
                                 sparse_prompt_embeddings=sparse.to(image.dtype),
                                 dense_prompt_embeddings=dense.to(image.dtype),
                                 multimask_output=multimask)

    def upscale(self, low_res: torch.Tensor) -> torch.Tensor:
        """N×M×(S/4)³ logits → N×M×S×S×S on the crop (trilinear, align_corners=False)."""
        return F.interpolate(low_res, (self.img_size,) * 3, mode="trilinear",
                             align_corners=False)


def _build_sam_med3d(img_size: int, *, embed_dim: int, depth: int, num_heads: int,
                     global_attn: tuple[int, ...], prompt_dim: int, window_size: int = 14,
                     iou_hidden: int = 256, patch_size: int = 16) -> SamMed3DWrapper:
    """medim's `build_sam3D_vit_b_ori` with the crop size S (and, for tiny models, the widths)
    as arguments. MaskDecoder3D fixes its transformer at 8 heads on prompt_dim/2 channels and
    the 3D position encoding uses prompt_dim/3 frequencies: prompt_dim must be a multiple of 48."""
    from medim.models.sam_med3d import ImageEncoderViT3D, MaskDecoder3D, PromptEncoder3D

    if img_size <= 0 or img_size % patch_size:
        raise ValueError(f"SAM-Med3D img_size {img_size} must be a positive multiple of the "
                         f"patch size {patch_size}")
    if prompt_dim % 48:
        raise ValueError(f"SAM-Med3D prompt_dim {prompt_dim} must be a multiple of 48")
    sizes = SamMed3DSizes(embed_dim, depth, num_heads, tuple(global_attn), prompt_dim,
                          window_size, iou_hidden, patch_size)
    grid = img_size // patch_size
    encoder = ImageEncoderViT3D(
        depth=depth, embed_dim=embed_dim, img_size=img_size, mlp_ratio=4,
        norm_layer=partial(nn.LayerNorm, eps=1e-6), num_heads=num_heads, patch_size=patch_size,
        qkv_bias=True, use_rel_pos=True, global_attn_indexes=list(global_attn),
        window_size=window_size, out_chans=prompt_dim)
    prompt_encoder = PromptEncoder3D(embed_dim=prompt_dim, image_embedding_size=(grid,) * 3,
                                     input_image_size=(img_size,) * 3, mask_in_chans=16)
    mask_decoder = MaskDecoder3D(num_multimask_outputs=3, transformer_dim=prompt_dim,
                                 iou_head_depth=3, iou_head_hidden_dim=iou_hidden)
    return SamMed3DWrapper(encoder, prompt_encoder, mask_decoder, img_size, sizes)


build_sam_med3d = partial(_build_sam_med3d, embed_dim=768, depth=12, num_heads=12,
                          global_attn=(2, 5, 8, 11), prompt_dim=384)
# CPU tests and the demo: 32³ crops in patches of 4 voxels (an 8³ embedding, low-res logits at
# the crop's own 32³: thin vessels survive; a patch-16 model would see 2³ tokens).
build_sam_med3d_tiny = partial(_build_sam_med3d, embed_dim=48, depth=2, num_heads=2,
                               global_attn=(1,), prompt_dim=48, window_size=4, iou_hidden=64,
                               patch_size=4)
