"""A trained model as a folder: exported weights + the config that rebuilds it + its history.

    <root>/weights/full.pt          upstream key layout, LoRA merged (see models/export.py)
    <root>/weights/lora_adapter.pt  + lora_adapter.json, when trained with LoRA
    <root>/weights/image_encoder.pt the fine-tuned encoder alone
    <root>/model.json               model config, parameter report, training summary
    <root>/curves.png               training curves
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from samtune.config import ModelConfig


@dataclass
class ModelBundle:
    root: Path
    fingerprint: str
    summary: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dir(cls, root: Path) -> "ModelBundle":
        """The bundle a training run exported into `root` (fingerprint: sha256 of full.pt)."""
        from samtune.models.checkpoints import file_sha256

        root = Path(root)
        info = json.loads((root / "model.json").read_text())
        return cls(root, file_sha256(root / "weights" / "full.pt"), info.get("summary", {}))

    @property
    def weights(self) -> Path:
        return self.root / "weights" / "full.pt"

    def model_config(self) -> ModelConfig:
        """The config that rebuilds this model with its trained weights (LoRA already merged)."""
        info = json.loads((self.root / "model.json").read_text())
        cfg = ModelConfig.model_validate(info["model"])
        return cfg.model_copy(update={"checkpoint": self.weights.resolve(), "method": "full"})

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["root"] = str(self.root)
        return d
