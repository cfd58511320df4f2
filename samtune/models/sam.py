"""SAM, MedSAM and MobileSAM (segment-anything key layout) behind `PromptableModel`.

The wrapper holds the upstream `image_encoder`, `prompt_encoder` and `mask_decoder` as they are,
and its pixel mean/std are non-persistent buffers, so `state_dict()` has exactly the keys of
segment-anything's `Sam` (an official `sam_vit_b_01ec64.pth` loads without renaming).
"""
from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from samtune.models.base import Embeddings, PromptableModel, Prompts

# ImageNet mean/std on the 0–255 scale, as segment-anything's Sam.
PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)


class SamWrapper(PromptableModel):
    """Segment-anything `ImageEncoderViT` (or MobileSAM's `TinyViT`) + prompt encoder + decoder.

    img_size: the S of the S×S input; the image embedding is C×(S/16)×(S/16) and the low-res
    logits 4× that (S/4).
    """

    family = "sam"

    def __init__(self, image_encoder: nn.Module, prompt_encoder: nn.Module,
                 mask_decoder: nn.Module, img_size: int, family: str = "sam"):
        super().__init__(img_size, PIXEL_MEAN, PIXEL_STD)
        self.image_encoder = image_encoder
        self.prompt_encoder = prompt_encoder
        self.mask_decoder = mask_decoder
        self.family = family
        self.grad_checkpointing = False

    def set_grad_checkpointing(self, enabled: bool = True) -> None:
        """Recompute encoder blocks in the backward pass (ViT blocks; TinyViT layers)."""
        self.grad_checkpointing = enabled
        if hasattr(self.image_encoder, "layers"):  # MobileSAM TinyViT has its own switch
            for layer in self.image_encoder.layers:
                if hasattr(layer, "use_checkpoint"):
                    layer.use_checkpoint = enabled

    def encode(self, images: torch.Tensor) -> Embeddings:
        """B×3×S×S normalised → Embeddings(image=B×C×S/16×S/16)."""
        enc = self.image_encoder
        if hasattr(enc, "layers"):
            return Embeddings(self._encode_tiny_vit(images))
        if not (self.grad_checkpointing and self.training):
            return Embeddings(enc(images))
        # ImageEncoderViT.forward, with each block recomputed in the backward pass.
        x = enc.patch_embed(images)
        if enc.pos_embed is not None:
            x = x + enc.pos_embed
        for blk in enc.blocks:
            x = checkpoint(blk, x, use_reentrant=False)
        return Embeddings(enc.neck(x.permute(0, 3, 1, 2)))

    def _encode_tiny_vit(self, images: torch.Tensor) -> torch.Tensor:
        # TinyViT.forward_features hard-codes a 64×64 grid (1024 input); the same steps on S/16.
        enc = self.image_encoder
        x = enc.patch_embed(images)
        for layer in enc.layers:
            x = layer(x)
        grid = images.shape[-1] // 16
        return enc.neck(x.view(x.shape[0], grid, grid, x.shape[-1]).permute(0, 3, 1, 2))

    def decode(self, emb: Embeddings, b: int, prompts: Prompts,
               multimask: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompts of image `b` → (logits N×M×S/4×S/4, IoU N×M); M = 3 if multimask else 1."""
        # Run the heads in their own precision (cached embeddings may be bf16/fp16).
        image = emb.image[b:b + 1].to(self.mask_decoder.iou_token.weight.dtype)
        if len(prompts) == 0:
            m, (h, w) = 3 if multimask else 1, image.shape[-2:]
            return image.new_zeros(0, m, 4 * h, 4 * w), image.new_zeros(0, m)
        sparse, dense = self._encode_prompts(prompts, image.dtype)
        # MaskDecoder repeats the one image embedding per prompt itself.
        return self.mask_decoder(image_embeddings=image,
                                 image_pe=self.prompt_encoder.get_dense_pe(),
                                 sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                 multimask_output=multimask)

    def decode_pooled(self, emb: Embeddings, index: torch.Tensor, prompts: Prompts,
                      multimask: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """N prompts of several images in one decoder call; instance i belongs to image
        `index[i]` → as `decode`. MaskDecoder adds its one (repeated) image embedding to the
        dense prompt embeddings first thing, so the per-instance embeddings enter there, on a
        zero image: the same sums, hence the same logits, as one `decode` per image."""
        image = emb.image.to(self.mask_decoder.iou_token.weight.dtype)[index]  # N×C×h×w
        sparse, dense = self._encode_prompts(prompts, image.dtype)
        return self.mask_decoder(image_embeddings=image.new_zeros(1, *image.shape[1:]),
                                 image_pe=self.prompt_encoder.get_dense_pe(),
                                 sparse_prompt_embeddings=sparse,
                                 dense_prompt_embeddings=image + dense,
                                 multimask_output=multimask)

    def _encode_prompts(self, prompts: Prompts, dtype: torch.dtype
                        ) -> tuple[torch.Tensor, torch.Tensor]:
        """→ (sparse N×T×C, dense N×C×h×w) prompt embeddings in `dtype`."""
        own = self.prompt_encoder.no_mask_embed.weight.dtype
        points = None
        if prompts.points is not None:
            if prompts.point_labels is None:
                raise ValueError("Prompts.points needs point_labels (N×P: 1, 0 or -1)")
            points = (prompts.points.to(own), prompts.point_labels)
        boxes = None if prompts.boxes is None else prompts.boxes.to(own)
        masks = None if prompts.mask_inputs is None else prompts.mask_inputs.to(own)
        sparse, dense = self.prompt_encoder(points=points, boxes=boxes, masks=masks)
        return sparse.to(dtype), dense.to(dtype)
