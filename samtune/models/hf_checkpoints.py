"""Hugging Face Transformers SAM checkpoints (a folder with config.json + model.safetensors, as
`facebook/sam-vit-base` and `wanglab/medsam-vit-base` are published) mapped onto
segment-anything's key layout, so they load into samtune's `sam_*` / `medsam_vit_b`
architectures and everything downstream (LoRA, exports, cache) is unchanged.

The key map is the inverse of transformers' SAM conversion (segment-anything → HF names: blocks
→ layers, norm → layer_norm, neck.0–3 → conv1 / layer_norm1 / conv2 / layer_norm2, the
hypernetwork and IoU MLPs' layers.0/1/2 → proj_in / layers.0 / proj_out, output_upscaling.0/1/3
→ upscale_conv1 / upscale_layer_norm / upscale_conv2, mask_downscaling → mask_embed, …). The HF
model holds the prompt encoder's Gaussian matrix twice (`shared_image_embedding` and
`prompt_encoder.shared_embedding`: tied in SamModel, separate in Sam2Model, equal in the published
conversions); they must agree (copies an HF-side fine-tune let drift have no official
equivalent). preprocessor_config.json is ignored: samtune feeds the family's official inputs.
SAM2 / SAM2.1 folders map onto the `sam2*` entries the same way (`hf_sam2_to_official`):
`Sam2VideoModel` ones (model_type sam2_video, as `facebook/sam2.1-hiera-tiny` is published) with
their video-memory modules; a `Sam2Model` (sam2) holds none, so those keep the architecture's
initial weights (single-image segmentation never uses them).
"""
from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Callable

import torch

__all__ = ["is_hf_folder", "read_hf_state_dict", "hf_to_official", "official_to_hf",
           "hf_sam2_to_official", "HfCheckpointError"]

log = logging.getLogger(__name__)

# (official pattern, HF replacement), applied in order official → HF; the inverse reverses them.
_RULES: list[tuple[str, str]] = [
    (r"^image_encoder\.", "vision_encoder."),
    (r"\.blocks\.", ".layers."),
    (r"\.patch_embed\.proj\.", ".patch_embed.projection."),
    (r"\.neck\.0\.", ".neck.conv1."), (r"\.neck\.1\.", ".neck.layer_norm1."),
    (r"\.neck\.2\.", ".neck.conv2."), (r"\.neck\.3\.", ".neck.layer_norm2."),
    (r"\.norm(\d|_final_attn)", r".layer_norm\1"),
    (r"(mlps\.\d+|iou_prediction_head)\.layers\.0\.", r"\1.proj_in."),
    (r"(mlps\.\d+|iou_prediction_head)\.layers\.1\.", r"\1.layers.0."),
    (r"(mlps\.\d+|iou_prediction_head)\.layers\.2\.", r"\1.proj_out."),
    (r"\.output_upscaling\.0\.", ".upscale_conv1."),
    (r"\.output_upscaling\.1\.", ".upscale_layer_norm."),
    (r"\.output_upscaling\.3\.", ".upscale_conv2."),
    (r"\.mask_downscaling\.0\.", ".mask_embed.conv1."),
    (r"\.mask_downscaling\.1\.", ".mask_embed.layer_norm1."),
    (r"\.mask_downscaling\.3\.", ".mask_embed.conv2."),
    (r"\.mask_downscaling\.4\.", ".mask_embed.layer_norm2."),
    (r"\.mask_downscaling\.6\.", ".mask_embed.conv3."),
    (r"\.point_embeddings\.", ".point_embed."),
    (r"\.pe_layer\.positional_encoding_gaussian_matrix$",
     ".shared_embedding.positional_embedding"),
]
_SHARED = "shared_image_embedding.positional_embedding"
_PROMPT_PE = "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"
# The inverse, HF → official (patterns written for HF names).
_INVERSE: list[tuple[str, str]] = [
    (r"^vision_encoder\.", "image_encoder."),
    (r"^(image_encoder\.)layers\.", r"\1blocks."),
    (r"\.patch_embed\.projection\.", ".patch_embed.proj."),
    (r"\.neck\.conv1\.", ".neck.0."), (r"\.neck\.layer_norm1\.", ".neck.1."),
    (r"\.neck\.conv2\.", ".neck.2."), (r"\.neck\.layer_norm2\.", ".neck.3."),
    (r"(mlps\.\d+|iou_prediction_head)\.layers\.0\.", r"\1.layers.1."),
    (r"(mlps\.\d+|iou_prediction_head)\.proj_in\.", r"\1.layers.0."),
    (r"(mlps\.\d+|iou_prediction_head)\.proj_out\.", r"\1.layers.2."),
    (r"\.upscale_conv1\.", ".output_upscaling.0."),
    (r"\.upscale_layer_norm\.", ".output_upscaling.1."),
    (r"\.upscale_conv2\.", ".output_upscaling.3."),
    (r"\.mask_embed\.conv1\.", ".mask_downscaling.0."),
    (r"\.mask_embed\.layer_norm1\.", ".mask_downscaling.1."),
    (r"\.mask_embed\.conv2\.", ".mask_downscaling.3."),
    (r"\.mask_embed\.layer_norm2\.", ".mask_downscaling.4."),
    (r"\.mask_embed\.conv3\.", ".mask_downscaling.6."),
    (r"\.point_embed\.", ".point_embeddings."),
    (r"\.shared_embedding\.positional_embedding$",
     ".pe_layer.positional_encoding_gaussian_matrix"),
    (r"\.layer_norm(\d|_final_attn)", r".norm\1"),
]


# SAM2 (HF → official), applied in order after the prefix renames.
_SAM2_INVERSE: list[tuple[str, str]] = [
    (r"^no_memory_embedding$", "no_mem_embed"),
    (r"^vision_encoder\.backbone\.", "image_encoder.trunk."),
    (r"^vision_encoder\.neck\.convs\.(\d+)\.", r"image_encoder.neck.convs.\1.conv."),
    (r"^prompt_encoder\.", "sam_prompt_encoder."),
    (r"^mask_decoder\.", "sam_mask_decoder."),
    (r"\.o_proj\.", ".out_proj."),
    (r"\.mlp\.proj_in\.", ".mlp.layers.0."),  # two-layer MLPs (Hiera blocks, decoder blocks)
    (r"\.mlp\.proj_out\.", ".mlp.layers.1."),
    (r"(mlps\.\d+|iou_prediction_head|pred_obj_score_head)\.layers\.0\.", r"\1.layers.1."),
    (r"(mlps\.\d+|iou_prediction_head|pred_obj_score_head)\.proj_in\.", r"\1.layers.0."),
    (r"(mlps\.\d+|iou_prediction_head|pred_obj_score_head)\.proj_out\.", r"\1.layers.2."),
    *[r for r in _INVERSE[2:] if "mlps" not in r[0] and "neck" not in r[0]],
]
_SAM2_PE = "sam_prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"
# Sam2VideoModel's memory modules (HF → official), applied before _SAM2_INVERSE (which then maps
# the memory attention's o_proj / layer_normN like the decoder's). Inverts transformers'
# convert_sam2_video_to_hf.py; MaskDownSampler.encoder is (conv, norm, GELU) × 4 + a 1×1 conv.
_FUSER = r"^memory_encoder\.memory_fuser\.layers\.(\d+)\."
_SAM2_VIDEO_INVERSE: list[tuple[str, str | Callable[[re.Match[str]], str]]] = [
    (r"^no_memory_positional_encoding$", "no_mem_pos_enc"),
    (r"^memory_temporal_positional_encoding$", "maskmem_tpos_enc"),
    (r"^no_object_pointer$", "no_obj_ptr"),
    (r"^occlusion_spatial_embedding_parameter$", "no_obj_embed_spatial"),
    (r"^temporal_positional_encoding_projection_layer\.", "obj_ptr_tpos_proj."),
    (r"^object_pointer_proj\.layers\.0\.", "obj_ptr_proj.layers.1."),
    (r"^object_pointer_proj\.proj_in\.", "obj_ptr_proj.layers.0."),
    (r"^object_pointer_proj\.proj_out\.", "obj_ptr_proj.layers.2."),
    (r"^object_pointer_proj\.", "obj_ptr_proj."),  # a single Linear (no MLP for obj_ptr)
    (r"^memory_attention\.layer_norm\.", "memory_attention.norm."),
    (r"^memory_encoder\.feature_projection\.", "memory_encoder.pix_feat_proj."),
    (r"^memory_encoder\.projection\.", "memory_encoder.out_proj."),
    (r"^memory_encoder\.mask_downsampler\.final_conv\.",
     "memory_encoder.mask_downsampler.encoder.12."),
    (r"^memory_encoder\.mask_downsampler\.layers\.(\d+)\.(conv|layer_norm)\.",
     lambda m: f"memory_encoder.mask_downsampler.encoder.{3 * int(m[1]) + (m[2] != 'conv')}."),
    (_FUSER + r"scale$", r"memory_encoder.fuser.layers.\1.gamma"),
    (_FUSER + r"depthwise_conv\.", r"memory_encoder.fuser.layers.\1.dwconv."),
    (_FUSER + r"pointwise_conv(\d)\.", r"memory_encoder.fuser.layers.\1.pwconv\2."),
    (_FUSER + r"layer_norm\.", r"memory_encoder.fuser.layers.\1.norm."),
    (r"^memory_encoder\.memory_fuser\.", "memory_encoder.fuser."),
]


class HfCheckpointError(ValueError):
    """A Hugging Face folder that cannot be read as a samtune checkpoint."""


def is_hf_folder(path: str | Path) -> bool:
    """A folder with config.json and model.safetensors (a `save_pretrained` output)."""
    p = Path(path)
    return p.is_dir() and (p / "config.json").is_file() and (p / "model.safetensors").is_file()


def _apply(key: str, rules: list[tuple[str, str | Callable[[re.Match[str]], str]]]) -> str:
    for pattern, repl in rules:
        key = re.sub(pattern, repl, key)
    return key


def official_to_hf(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """segment-anything `Sam` state dict → transformers `SamModel` state dict."""
    out = {_apply(k, _RULES): v for k, v in state.items()}
    if _PROMPT_PE in state:
        out[_SHARED] = state[_PROMPT_PE]
    return out


def hf_to_official(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers `SamModel` state dict → segment-anything `Sam` state dict."""
    out = {_apply(k, _INVERSE): v for k, v in state.items() if k != _SHARED}
    _merge_pe(out, state.get(_SHARED), _PROMPT_PE)
    return out


def _merge_pe(out: dict[str, torch.Tensor], shared: torch.Tensor | None, key: str) -> None:
    """HF's two copies of the Gaussian matrix → the official one (see the module doc)."""
    pe = out.setdefault(key, shared) if shared is not None else out.get(key)
    if shared is not None and not shared.is_meta and not torch.equal(shared, pe):
        raise HfCheckpointError("shared_image_embedding and the prompt encoder's positional "
                                "embedding differ; segment-anything / sam2 have one matrix")


def hf_sam2_to_official(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers `Sam2Model` / `Sam2VideoModel` state dict → sam2 `SAM2Base` keys (a
    Sam2Model has the single-image parts only)."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key == _SHARED:
            continue
        if key == "prompt_encoder.point_embed.weight":  # one (4, C) table → 4 embeddings
            for i, row in enumerate(value):
                out[f"sam_prompt_encoder.point_embeddings.{i}.weight"] = row[None]
            continue
        out[_apply(_apply(key, _SAM2_VIDEO_INVERSE), _SAM2_INVERSE)] = value
    _merge_pe(out, state.get(_SHARED), _SAM2_PE)
    return out


def read_hf_state_dict(folder: str | Path) -> dict[str, torch.Tensor]:
    """A `SamModel` folder → its weights in segment-anything's key layout."""
    from safetensors.torch import load_file

    folder = Path(folder)
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise HfCheckpointError(f"{folder / 'config.json'}: unreadable ({exc})") from None
    kind = config.get("model_type")
    convert = {"sam": hf_to_official, "sam2": hf_sam2_to_official,
               "sam2_video": hf_sam2_to_official}.get(kind)
    if convert is None:
        raise HfCheckpointError(
            f"{folder}: model_type '{kind}'; samtune maps Hugging Face SamModel (sam) and "
            "Sam2Model / Sam2VideoModel (sam2, sam2_video) folders; for other kinds use the "
            "official .pt checkpoints")
    try:
        state = load_file(str(folder / "model.safetensors"), device="cpu")
    except Exception as exc:  # noqa: BLE001 — safetensors raises its own error types
        raise HfCheckpointError(f"{folder / 'model.safetensors'}: unreadable ({exc})") from None
    return convert(state)
