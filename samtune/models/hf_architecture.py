"""Which zoo entry a Hugging Face SAM / SAM2 folder is: the numbers of its config.json against
the numbers read off a samtune model, so a folder loaded under the wrong `model.name` (a head
count no tensor shape reveals) fails with the entries that would fit."""
from __future__ import annotations

import json
import logging
from functools import lru_cache
from pathlib import Path
from typing import Any

from torch import nn

__all__ = ["hf_architecture", "model_architecture", "matching_zoo_entries",
           "architecture_problem"]

log = logging.getLogger(__name__)


def hf_architecture(config: dict[str, Any]) -> dict[str, Any]:
    """A SamModel / Sam2(Video)Model config.json → the numbers `model_architecture` reads (the
    transformers defaults where a key is absent: SAM ViT-B, SAM2.1 Hiera-T)."""
    vision, dec = config.get("vision_config") or {}, config.get("mask_decoder_config") or {}
    out: dict[str, Any] = {"decoder_heads": dec.get("num_attention_heads", 8),
                           "decoder_mlp": dec.get("mlp_dim", 2048),
                           "iou_hidden": dec.get("iou_head_hidden_dim", 256)}
    if config.get("model_type") == "sam":
        return {"embed_dim": vision.get("hidden_size", 768),
                "depth": vision.get("num_hidden_layers", 12),
                "heads": vision.get("num_attention_heads", 12),
                "global_attn": tuple(vision.get("global_attn_indexes", (2, 5, 8, 11))),
                "window": vision.get("window_size", 14),
                "out_chans": vision.get("output_channels", 256), **out}
    back = vision.get("backbone_config") or {}
    return {"embed_dim": back.get("hidden_size", 96),
            "stages": tuple(back.get("blocks_per_stage", (1, 2, 7, 2))),
            "heads": tuple(back.get("num_attention_heads_per_stage", (1, 2, 4, 8))),
            "global_attn": tuple(back.get("global_attention_blocks", (5, 7, 9))),
            "window": tuple(back.get("window_size_per_stage", (8, 4, 14, 7))),
            "out_chans": vision.get("fpn_hidden_size", 256),
            "channels": tuple(vision.get("backbone_channel_list", (768, 384, 192, 96))), **out}


def model_architecture(model: nn.Module) -> dict[str, Any]:
    """The same numbers read off a samtune SAM ViT / SAM2 Hiera model; {} for other models
    (MobileSAM's TinyViT, HQ-SAM, the oracle)."""
    kind, enc = type(model).__name__, getattr(model, "image_encoder", None)
    if kind not in ("SamWrapper", "Sam2Wrapper") or not hasattr(enc, "neck"):
        return {}
    block = model.mask_decoder.transformer.layers[0]
    mlp = block.mlp.lin1 if hasattr(block.mlp, "lin1") else block.mlp.layers[0]
    out = {"decoder_heads": block.self_attn.num_heads, "decoder_mlp": mlp.out_features,
           "iou_hidden": model.mask_decoder.iou_prediction_head.layers[0].out_features}
    if kind == "SamWrapper":
        if not hasattr(enc, "blocks"):
            return {}
        windows = [b.window_size for b in enc.blocks]
        return {"embed_dim": enc.patch_embed.proj.out_channels, "depth": len(enc.blocks),
                "heads": enc.blocks[0].attn.num_heads,
                "global_attn": tuple(i for i, w in enumerate(windows) if w == 0),
                "window": max(windows), "out_chans": enc.neck[0].out_channels, **out}
    trunk, ends = enc.trunk, [-1, *enc.trunk.stage_ends]
    return {"embed_dim": trunk.patch_embed.proj.out_channels,
            "stages": tuple(b - a for a, b in zip(ends, ends[1:])),
            "heads": tuple(trunk.blocks[e].attn.num_heads for e in trunk.stage_ends),
            "global_attn": tuple(trunk.global_att_blocks), "window": tuple(trunk.window_spec),
            "out_chans": enc.neck.d_model, "channels": tuple(enc.neck.backbone_channel_list), **out}


@lru_cache(maxsize=None)
def _zoo_architecture(name: str) -> tuple[tuple[str, Any], ...]:
    from samtune.models.registry import build_architecture

    return tuple(model_architecture(build_architecture(name, meta=True)).items())


def matching_zoo_entries(config: dict[str, Any]) -> list[str]:
    """Zoo entries with the folder's architecture (vision hidden_size 768, 12 layers → sam_vit_b,
    medsam_vit_b); empty for a custom one. Candidates are built on the meta device, once."""
    from samtune.models.registry import MODELS

    family = "sam" if config.get("model_type") == "sam" else "sam2"
    want = hf_architecture(config)
    return [name for name, spec in MODELS.items()
            if spec.family == family and dict(_zoo_architecture(name)) == want]


def architecture_problem(folder: str | Path, model: nn.Module) -> str | None:
    """None when the folder's config.json describes `model`'s architecture; else why not and
    which zoo entries (model.name) would fit. Warns when a MedSAM folder meets SAM's input path."""
    folder = Path(folder)
    config = json.loads((folder / "config.json").read_text())
    if "medsam" in folder.name.lower() and getattr(model, "preprocess", "medsam") != "medsam":
        log.warning("%s looks like MedSAM, but the model feeds '%s' preprocessing; MedSAM's is "
                    "model.name medsam_vit_b (min-max to [0, 1])", folder, model.preprocess)
    want, have = hf_architecture(config), model_architecture(model)
    family = "sam" if config.get("model_type") == "sam" else "sam2"
    same_family = family == getattr(model, "family", "")
    if have == want or (same_family and not have):  # HQ-SAM etc.: mismatch_report decides
        return None
    diff = (", ".join(f"{k} {v} (model: {have.get(k)})" for k, v in want.items()
                      if have.get(k) != v) if same_family
            else f"a {family} folder, a {getattr(model, 'family', '?')} model")
    entries = matching_zoo_entries(config)
    return (f"Hugging Face folder {folder} does not describe this model's architecture ({diff}); "
            + (f"set model.name to {' or '.join(entries)}" if entries else
               "no zoo entry has this architecture"))
