"""samtune's SAM-Med3D path beside upstream's interactive loop, on the same weights.

`official_clicks` follows the steps of SAM-Med3D's `utils/infer_utils.py` (`sam_model_infer`)
on medim's own model (a fresh `SAM_Med3D` loaded with the wrapper's state dict; medim's
`build_sam3D_vit_b_ori` for the released widths): torchio `ZNormalization(masking_method=
lambda x: x > 0)` on the 1×S×S×S crop → `image_encoder` once → per click, the points so far
(accumulated, as upstream's `torch.cat`) and the previous low-res logits (zeros on the first
click) → `prompt_encoder(points, boxes=None, masks)` → `mask_decoder` (single mask) → trilinear
to the crop (align_corners=False) → sigmoid > 0.5. The clicks are given (upstream samples them
from the ground truth; the sampling is a data choice, not the model's).

`samtune_clicks` does the same through `SamMed3DWrapper` (normalize → encode → decode with the
accumulated points and mask_inputs = previous low-res → upscale → logit > 0);
`compare_sam_med3d` reports, per click, the mask IoU and the largest logit difference.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from samtune.models.base import Prompts
from samtune.models.sam_med3d import VIT_B_ORI, SamMed3DWrapper


@dataclass
class ClickFidelity:
    """One click: IoU of the two binary masks (both empty → 1) and max |logit difference| on
    the crop (S³) and on the low-res grid ((S/4)³)."""

    click: int
    iou: float
    max_logit_diff: float
    max_low_res_diff: float


@dataclass
class Fidelity3D:
    clicks: list[ClickFidelity]

    @property
    def iou(self) -> float:
        """The worst click's mask IoU."""
        return min(c.iou for c in self.clicks)

    @property
    def max_logit_diff(self) -> float:
        return max(c.max_logit_diff for c in self.clicks)


def official_model(model: SamMed3DWrapper) -> nn.Module:
    """medim's `SAM_Med3D` with the wrapper's widths and state dict, in eval mode, on its device
    (the released widths: medim's own `build_sam3D_vit_b_ori`)."""
    from medim.models import sam_med3d as medim3d

    s, size = model.sizes, model.img_size
    grid = size // s.patch_size
    with torch.device(model.pixel_mean.device):
        if s == VIT_B_ORI:
            sam = medim3d.build_sam3D_vit_b_ori(image_size=size)
        else:  # medim's module classes with the widths of a small architecture
            sam = medim3d.SAM_Med3D(
                image_encoder=medim3d.ImageEncoderViT3D(
                    depth=s.depth, embed_dim=s.embed_dim, img_size=size, mlp_ratio=4,
                    norm_layer=partial(nn.LayerNorm, eps=1e-6), num_heads=s.num_heads,
                    patch_size=s.patch_size, qkv_bias=True, use_rel_pos=True,
                    global_attn_indexes=list(s.global_attn), window_size=s.window_size,
                    out_chans=s.prompt_dim),
                prompt_encoder=medim3d.PromptEncoder3D(
                    embed_dim=s.prompt_dim, image_embedding_size=(grid,) * 3,
                    input_image_size=(size,) * 3, mask_in_chans=16),
                mask_decoder=medim3d.MaskDecoder3D(
                    num_multimask_outputs=3, transformer_dim=s.prompt_dim, iou_head_depth=3,
                    iou_head_hidden_dim=s.iou_hidden))
    sam.load_state_dict(model.state_dict(), strict=True)
    return sam.eval()


@torch.no_grad()
def official_clicks(sam: nn.Module, crop: torch.Tensor, points: torch.Tensor,
                    labels: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Upstream's loop (module docstring). crop S×S×S raw intensities; points K×3 voxel
    indices (crop order), labels K (1/0) → per click (low-res logits 1×1×(S/4)³, logits on the
    crop 1×1×S³); the mask is sigmoid(logits) > 0.5."""
    import torchio as tio

    device = sam.pixel_mean.device
    image = tio.ZNormalization(masking_method=lambda x: x > 0)(crop[None].cpu())
    image = image[None].to(device)  # 1×1×S×S×S
    embedding = sam.image_encoder(image)
    coords = torch.zeros(1, 0, 3, device=device)
    point_labels = torch.zeros(1, 0, device=device)
    # upstream: (S/4)³ zeros, i.e. 4× the embedding grid of its patch-16 encoder
    prev_low = torch.zeros(1, 1, *(4 * n for n in embedding.shape[2:]), device=device)
    out = []
    for point, label in zip(points, labels):
        coords = torch.cat([coords, point.reshape(1, 1, 3).to(device)], dim=1)
        point_labels = torch.cat([point_labels, label.reshape(1, 1).long().to(device)], dim=1)
        sparse, dense = sam.prompt_encoder(points=[coords, point_labels], boxes=None,
                                           masks=prev_low)
        low, _ = sam.mask_decoder(image_embeddings=embedding,
                                  image_pe=sam.prompt_encoder.get_dense_pe(),
                                  sparse_prompt_embeddings=sparse,
                                  dense_prompt_embeddings=dense)
        prev_low = low.detach()
        out.append((low, F.interpolate(low, size=image.shape[-3:], mode="trilinear",
                                       align_corners=False)))
    return out


@torch.inference_mode()
def samtune_clicks(model: SamMed3DWrapper, crop: torch.Tensor, points: torch.Tensor,
                   labels: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The same clicks through the wrapper → per click (low-res 1×1×(S/4)³, logits 1×1×S³);
    the mask is logits > 0."""
    device = model.pixel_mean.device
    emb = model.encode(model.normalize(crop[None, None].to(device)))
    points, labels = points.float().to(device), labels.long().to(device)
    low, out = None, []
    for k in range(1, len(points) + 1):
        prompts = Prompts(points=points[None, :k], point_labels=labels[None, :k],
                          mask_inputs=low)
        low, _ = model.decode(emb, 0, prompts)
        out.append((low, model.upscale(low)))
    return out


def mask_iou(a: torch.Tensor, b: torch.Tensor) -> float:
    """IoU of two bool masks; both empty → 1."""
    union = int((a | b).sum())
    return 1.0 if union == 0 else int((a & b).sum()) / union


def compare_sam_med3d(model: SamMed3DWrapper, crop: torch.Tensor, points: torch.Tensor,
                      labels: torch.Tensor) -> Fidelity3D:
    """Upstream's loop and samtune's on one crop (S×S×S raw) with K given clicks (points K×3,
    labels K) → per-click mask IoU and max logit differences."""
    model = model.eval()
    theirs = official_clicks(official_model(model), crop, points, labels)
    ours = samtune_clicks(model, crop, points, labels)
    rows = []
    for k, ((t_low, t_up), (o_low, o_up)) in enumerate(zip(theirs, ours), 1):
        iou = mask_iou(torch.sigmoid(t_up) > 0.5, o_up > 0)
        rows.append(ClickFidelity(k, iou, float((t_up - o_up).abs().max()),
                                  float((t_low - o_low).abs().max())))
    return Fidelity3D(rows)
