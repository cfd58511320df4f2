"""SAM2, SAM2.1 and MedSAM2 behind `PromptableModel`, as sam2's `SAM2ImagePredictor` uses them.

The wrapper takes over every part of the upstream `SAM2Base` (image encoder, prompt encoder,
mask decoder, and the video-memory parts it does not use for single images) under the same
names, so `state_dict()` equals the official `{"model": …}` layout and a fine-tuned checkpoint
still loads in sam2's own video predictor. Differences from the predictor: batched,
differentiable, and coordinates are pixels on the model's S×S grid (the predictor rescales them
to 1024 itself).

Image size: Hiera's position embedding is interpolated at run time and the prompt encoder is
built for S, so no checkpoint tensor depends on S; S must be a multiple of 32 so that the first
stage's windowed position embedding (8×8 tiles over S/4×S/4) tiles exactly.
"""
from __future__ import annotations

from functools import partial
from typing import Sequence

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from samtune.models.base import Embeddings, PromptableModel, Prompts
from samtune.models.sam import PIXEL_MEAN, PIXEL_STD

# What sam2.build_sam.build_sam2 adds by default (apply_postprocessing=True).
POSTPROCESSING = (
    "++model.sam_mask_decoder_extra_args.dynamic_multimask_via_stability=true",
    "++model.sam_mask_decoder_extra_args.dynamic_multimask_stability_delta=0.05",
    "++model.sam_mask_decoder_extra_args.dynamic_multimask_stability_thresh=0.98",
)


class Sam2Wrapper(PromptableModel):
    """SAM2Base's parts under their own names; `prompt_encoder`/`mask_decoder` are aliases of
    `sam_prompt_encoder`/`sam_mask_decoder` (properties, so the state dict has no duplicates).

    Embeddings: image B×C×S/16×S/16 (no_mem_embed added, as the predictor does); high_res in the
    predictor's order [B×C/8×S/4×S/4, B×C/4×S/8×S/8] (conv_s0/conv_s1 already applied).
    """

    family = "sam2"
    # What single-image segmentation uses; the other parts only serve sam2's video predictor
    # and get no gradient here (DDP: freeze them or use find_unused_parameters).
    SINGLE_IMAGE_PARTS = ("image_encoder", "sam_prompt_encoder", "sam_mask_decoder", "no_mem_embed")

    def __init__(self, base: nn.Module, img_size: int):
        super().__init__(img_size, PIXEL_MEAN, PIXEL_STD)
        for name, child in base.named_children():
            self.add_module(name, child)
        for name, param in base.named_parameters(recurse=False):
            self.register_parameter(name, param)
        for name, buf in base.named_buffers(recurse=False):
            self.register_buffer(name, buf)
        self.directly_add_no_mem_embed = base.directly_add_no_mem_embed
        self.use_high_res_features = base.use_high_res_features_in_sam
        self.num_feature_levels = base.num_feature_levels
        self.grad_checkpointing = False

    @property
    def prompt_encoder(self) -> nn.Module:  # type: ignore[override]
        return self.sam_prompt_encoder

    @property
    def mask_decoder(self) -> nn.Module:  # type: ignore[override]
        return self.sam_mask_decoder

    def set_grad_checkpointing(self, enabled: bool = True) -> None:
        """Recompute Hiera blocks in the backward pass (training only)."""
        self.grad_checkpointing = enabled

    def _trunk(self, images: torch.Tensor) -> list[torch.Tensor]:
        trunk = self.image_encoder.trunk
        if not (self.grad_checkpointing and self.training):
            return trunk(images)
        # Hiera.forward, with each block recomputed in the backward pass.
        x = trunk.patch_embed(images)
        x = x + trunk._get_pos_embed(x.shape[1:3])
        outputs = []
        for i, blk in enumerate(trunk.blocks):
            x = checkpoint(blk, x, use_reentrant=False)
            if i == trunk.stage_ends[-1] or (i in trunk.stage_ends and trunk.return_interm_layers):
                outputs.append(x.permute(0, 3, 1, 2))
        return outputs

    def encode(self, images: torch.Tensor) -> Embeddings:
        """B×3×S×S normalised → Embeddings(image B×C×S/16×S/16, high_res: S/4 and S/8 levels)."""
        return self.finish(self.encode_backbone(images))

    def encode_backbone(self, images: torch.Tensor) -> Embeddings:
        """Hiera trunk + FPN neck only (the image encoder): raw levels, not yet projected."""
        enc = self.image_encoder
        features, _pos = enc.neck(self._trunk(images))
        if enc.scalp > 0:  # ImageEncoder.forward drops the lowest-resolution levels
            features = features[:-enc.scalp]
        levels = features[-self.num_feature_levels:]
        return Embeddings(levels[-1], list(levels[:-1]), raw=True)

    def finish(self, emb: Embeddings) -> Embeddings:
        """conv_s0/conv_s1 on the high-res levels (SAM2Base.forward_image) and no_mem_embed
        (SAM2ImagePredictor.set_image): they belong to the decoder side, so they train with it."""
        if not emb.raw:
            return emb
        dtype = self.sam_mask_decoder.conv_s0.weight.dtype if self.use_high_res_features \
            else emb.image.dtype
        high = [h.to(dtype) for h in emb.high_res]
        if self.use_high_res_features:
            high[0] = self.sam_mask_decoder.conv_s0(high[0])
            high[1] = self.sam_mask_decoder.conv_s1(high[1])
        image = emb.image
        if self.directly_add_no_mem_embed:
            image = image + self.no_mem_embed.view(1, -1, 1, 1).to(image.dtype)
        return Embeddings(image, high)

    def decode(self, emb: Embeddings, b: int, prompts: Prompts,
               multimask: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompts of image `b` → (logits N×M×S/4×S/4, IoU N×M), as the predictor's `_predict`
        (boxes become two points labelled 2 and 3, placed before the clicks)."""
        if emb.raw:  # from a frozen-encoder cache: project this image's levels now
            emb, b = self.finish(emb.select(b)), 0
        if len(prompts) == 0:
            m, (h, w) = 3 if multimask else 1, emb.image.shape[-2:]
            return emb.image.new_zeros(0, m, 4 * h, 4 * w), emb.image.new_zeros(0, m)
        return self._heads(emb.select(b), prompts, multimask, repeat_image=True)

    def decode_pooled(self, emb: Embeddings, index: torch.Tensor, prompts: Prompts,
                      multimask: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """N prompts of several images in one decoder call (instance i of image `index[i]`):
        sam2's MaskDecoder takes per-instance image and high-res features with
        repeat_image=False → as `decode`."""
        emb = self.finish(emb)
        per_instance = Embeddings(emb.image[index], [h[index] for h in emb.high_res])
        return self._heads(per_instance, prompts, multimask, repeat_image=False)

    def _heads(self, emb: Embeddings, prompts: Prompts, multimask: bool,
               repeat_image: bool) -> tuple[torch.Tensor, torch.Tensor]:
        # Run the heads in their own precision (cached embeddings may be bf16/fp16).
        dtype = self.sam_mask_decoder.iou_token.weight.dtype
        coords, labels = _concat_points(prompts, dtype)
        masks = None if prompts.mask_inputs is None else prompts.mask_inputs.to(dtype)
        sparse, dense = self.sam_prompt_encoder(
            points=None if coords is None else (coords, labels), boxes=None, masks=masks)
        low_res, iou, _tokens, obj = self.sam_mask_decoder(
            image_embeddings=emb.image.to(dtype),
            image_pe=self.sam_prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
            multimask_output=multimask, repeat_image=repeat_image,
            high_res_features=[h.to(dtype) for h in emb.high_res] or None)
        gate = self.preprocess == "medsam2" and self.sam_mask_decoder.pred_obj_scores
        if gate and not self.training:
            # MedSAM2 runs through sam2's video predictor, whose SAM heads blank the masks of an
            # object its score calls absent (SAM2Base._forward_sam_heads); training keeps them.
            low_res = torch.where(obj[:, :, None, None] > 0, low_res,
                                  torch.full_like(low_res, -1024.0))
        return low_res, iou


def _concat_points(prompts: Prompts, dtype: torch.dtype
                   ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Boxes N×4 + points N×P×2 → coords N×(2+P)×2, labels N×(2+P) (box corners: 2, 3)."""
    coords = labels = None
    if prompts.points is not None:
        if prompts.point_labels is None:
            raise ValueError("Prompts.points needs point_labels (N×P: 1, 0 or -1)")
        coords, labels = prompts.points.to(dtype), prompts.point_labels.to(torch.int)
    if prompts.boxes is not None:
        box = prompts.boxes.to(dtype).reshape(-1, 2, 2)
        box_labels = torch.tensor([[2, 3]], dtype=torch.int, device=box.device).repeat(len(box), 1)
        coords = box if coords is None else torch.cat([box, coords], dim=1)
        labels = box_labels if labels is None else torch.cat([box_labels, labels], dim=1)
    return coords, labels


def build_sam2_base(config: str, img_size: int = 1024, overrides: Sequence[str] = ()
                    ) -> nn.Module:
    """sam2's `build_sam2` (packaged hydra config + its default post-processing) at S = img_size:
    an upstream `SAM2Base` with random weights, on the current default device."""
    from hydra import compose
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    import sam2  # noqa: F401  (initialises hydra with the package's configs)

    if img_size % 32:
        raise ValueError(f"SAM2 img_size must be a multiple of 32, got {img_size}")
    grid = img_size // 16
    size = [
        f"++model.image_size={img_size}",
        f"++model.memory_attention.layer.self_attention.feat_sizes=[{grid},{grid}]",
        f"++model.memory_attention.layer.cross_attention.feat_sizes=[{grid},{grid}]",
    ]
    cfg = compose(config_name=config, overrides=[*POSTPROCESSING, *size, *overrides])
    OmegaConf.resolve(cfg)
    return instantiate(cfg.model, _recursive_=True)


def _build_sam2(img_size: int, *, config: str, overrides: Sequence[str] = ()) -> PromptableModel:
    model = Sam2Wrapper(build_sam2_base(config, img_size, overrides), img_size)
    model.build_args = (config, tuple(overrides))  # to build sam2's video predictor alike
    return model


def build_video_predictor(model: Sam2Wrapper) -> nn.Module:
    """sam2's `SAM2VideoPredictor` with `model`'s architecture and current weights (on its
    device), as `sam2.build_sam.build_sam2_video_predictor` configures it."""
    config, overrides = model.build_args
    video = ("++model._target_=sam2.sam2_video_predictor.SAM2VideoPredictor",
             "++model.binarize_mask_from_pts_for_mem_enc=true", "++model.fill_hole_area=0")
    device = next(model.parameters()).device
    with torch.device(device):
        predictor = build_sam2_base(config, model.img_size, (*overrides, *video))
    predictor.load_state_dict(model.state_dict())
    return predictor.eval()


# A tiny SAM2.1 for CPU tests: Hiera with 5 blocks (global attention in stage 3), 64-channel heads.
TINY_OVERRIDES = (
    "model.image_encoder.trunk.embed_dim=16", "model.image_encoder.trunk.stages=[1,1,2,1]",
    "model.image_encoder.trunk.global_att_blocks=[3]",
    "model.image_encoder.neck.d_model=64",
    "model.image_encoder.neck.backbone_channel_list=[128,64,32,16]",
    "model.image_encoder.neck.position_encoding.num_pos_feats=64",
    "model.memory_attention.d_model=64", "model.memory_attention.num_layers=1",
    "model.memory_attention.layer.d_model=64", "model.memory_attention.layer.dim_feedforward=128",
    "model.memory_attention.layer.self_attention.embedding_dim=64",
    "model.memory_attention.layer.cross_attention.embedding_dim=64",
    "model.memory_attention.layer.cross_attention.kv_in_dim=32",
    "model.memory_encoder.out_dim=32", "model.memory_encoder.position_encoding.num_pos_feats=32",
    "model.memory_encoder.fuser.layer.dim=64", "model.memory_encoder.fuser.num_layers=1",
    "++model.memory_encoder.in_dim=64", "++model.memory_encoder.mask_downsampler.embed_dim=64",
)

build_sam2_hiera_t = partial(_build_sam2, config="configs/sam2/sam2_hiera_t.yaml")
build_sam2_hiera_s = partial(_build_sam2, config="configs/sam2/sam2_hiera_s.yaml")
build_sam2_hiera_bp = partial(_build_sam2, config="configs/sam2/sam2_hiera_b+.yaml")
build_sam2_hiera_l = partial(_build_sam2, config="configs/sam2/sam2_hiera_l.yaml")
build_sam21_hiera_t = partial(_build_sam2, config="configs/sam2.1/sam2.1_hiera_t.yaml")
build_sam21_hiera_s = partial(_build_sam2, config="configs/sam2.1/sam2.1_hiera_s.yaml")
build_sam21_hiera_bp = partial(_build_sam2, config="configs/sam2.1/sam2.1_hiera_b+.yaml")
build_sam21_hiera_l = partial(_build_sam2, config="configs/sam2.1/sam2.1_hiera_l.yaml")
build_sam2_tiny = partial(_build_sam2, config="configs/sam2.1/sam2.1_hiera_t.yaml",
                          overrides=TINY_OVERRIDES)
# MedSAM2's sam2.1_hiera_t512.yaml is sam2.1_hiera_t.yaml with image_size 512 and the memory
# attention's feat_sizes [32, 32]: exactly what `build_sam2_base` sets for S = 512.
build_medsam2 = build_sam21_hiera_t
