"""Config section `model`: the zoo entry, its checkpoint, the fine-tuning method and LoRA.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from samtune.config.base import Section

LORA_TARGETS = ("encoder_qkv", "encoder_proj", "encoder_mlp", "decoder_attention", "decoder_mlp",
                "decoder_hypernetwork", "decoder_iou_head")


class LoraConfig(Section):
    r: int = Field(8, ge=1)
    alpha: float = Field(16.0, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)
    targets: list[Literal[LORA_TARGETS]] = Field(  # type: ignore[valid-type]
        default_factory=lambda: ["encoder_qkv"], min_length=1)


class ModelConfig(Section):
    name: str = Field("sam_tiny", description="model zoo entry; run.py --list-models")
    checkpoint: Path | None = Field(None, description="file; relative to checkpoints_dir")
    checkpoints_dir: Path = Path("checkpoints")
    img_size: int | None = Field(None, ge=32, description="None: the model's default")
    method: Literal["full", "frozen", "lora", "qlora"] = "full"
    freeze: list[Literal["image_encoder", "prompt_encoder", "mask_decoder"]] = Field(
        default_factory=list, description="parts kept frozen (method full or frozen)")
    lora: LoraConfig = Field(default_factory=LoraConfig)
