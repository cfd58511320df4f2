"""The root of the config tree: one `Config` holding every section, checked against the model zoo
as a whole (model ↔ method ↔ device ↔ export), with `convert.img_size` derived from the model."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import ConfigDict, Field, model_validator

from samtune.config.base import Section
from samtune.config.data import ConvertConfig, DataConfig, SplitConfig, ValidateConfig
from samtune.config.eval import BenchmarkConfig, EvalConfig, InferConfig
from samtune.config.model import ModelConfig
from samtune.config.registry import RegistryConfig
from samtune.config.stack import ScheduleConfig, StackConfig
from samtune.config.train import TrainConfig


class Config(Section):
    name: str = "samtune"
    output_dir: Path = Field(Path("outputs"), description="exports users open")
    data: DataConfig
    validate_: ValidateConfig = Field(default_factory=ValidateConfig, alias="validate")
    convert: ConvertConfig = Field(default_factory=ConvertConfig)
    split: SplitConfig = Field(default_factory=SplitConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    infer: InferConfig = Field(default_factory=InferConfig)
    registry: RegistryConfig = Field(default_factory=RegistryConfig)
    stack: StackConfig = Field(default_factory=StackConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    benchmark: BenchmarkConfig = Field(default_factory=BenchmarkConfig)

    model_config = ConfigDict(extra="forbid", validate_assignment=True, populate_by_name=True)

    @model_validator(mode="after")
    def _fit_the_model(self) -> "Config":
        """Model settings checked against the zoo before any work, and `convert.img_size: None`
        resolved to the model's input size (model.img_size, else the zoo entry's) and stored, so
        every reader gets an int and `--set model.name=medsam2` re-derives it (512)."""
        from samtune.models.registry import (  # imports torch: lazily
            check_img_size,
            get_spec,
        )

        model = self.model
        try:
            spec = get_spec(model.name)
        except ValueError as exc:
            raise ValueError(f"model.name: {exc}") from None
        if model.img_size is not None:
            try:
                check_img_size(model.name, model.img_size)
            except ValueError as exc:
                raise ValueError(f"model.img_size: {exc}") from None
        if model.method == "qlora" and self.train.device == "cpu":
            raise ValueError("model.method qlora needs a CUDA GPU (4-bit bitsandbytes weights) "
                             "but train.device is cpu; use model.method lora on the CPU, or "
                             "train.device cuda/auto on a GPU machine")
        if model.method in ("lora", "qlora"):
            _check_lora_targets(model.name, spec.family, list(model.lora.targets))
        if "onnx" in self.train.export and (spec.family not in ("sam", "mobile_sam")
                                            or model.name.startswith("hq_")):
            raise ValueError(f"train.export onnx: segment-anything's ONNX layout covers SAM, "
                             f"MedSAM and MobileSAM, not '{model.name}' (family {spec.family})")
        if spec.family == "sam_med3d" and self.infer.mode == "automatic":
            raise ValueError(f"infer.mode automatic: {model.name} (SAM-Med3D) has no automatic "
                             f"mask generator; use infer.mode prompts (one click per row)")
        if self.convert.img_size is None:
            self.convert.img_size = model.img_size or spec.img_size
        clicks = self.benchmark.score_clicks
        if clicks is not None and clicks not in self.eval.clicks:
            raise ValueError(f"benchmark.score {self.benchmark.score}: eval.clicks "
                             f"{self.eval.clicks} must include {clicks}")
        return self

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict with YAML key names (what `--dry-run` prints)."""
        return self.model_dump(mode="json", by_alias=True)


def _check_lora_targets(name: str, family: str, targets: list[str]) -> None:
    """Every LoRA target must exist in the model's family (`adapters.TARGET_PATTERNS`; training
    re-checks them against the built model's modules in `adapters.resolve_targets`)."""
    from samtune.models.adapters import family_patterns

    try:
        patterns = family_patterns(family)
    except ValueError as exc:
        raise ValueError(f"model.lora.targets: model '{name}' cannot take LoRA ({exc})") from None
    absent = [t for t in targets if t not in patterns]
    if absent:
        raise ValueError(f"model.lora.targets {absent} do not exist in the '{family}' family of "
                         f"'{name}'; valid: {', '.join(patterns)}")
