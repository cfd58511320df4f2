"""Config section `train`: prompts, augmentation, distributed training, the loss and the
optimiser schedule.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationInfo, field_validator

from samtune.config.base import Section


class PromptConfig(Section):
    box: bool = True
    bbox_shift: int = Field(5, ge=0, description="max box jitter per side, pixels")
    positive_points: int = Field(0, ge=0)
    negative_points: int = Field(0, ge=0)
    center_point: bool = Field(False, description="first positive point at the mask's centre")
    grid_snap: int | None = Field(None, ge=2, description="snap points to an N×N grid")
    mask_prompt: bool = Field(False, description="feed the previous low-res logits back")
    multimask: bool = False
    max_instances: int = Field(16, ge=1, description="instances per slice per step")
    click_rounds: int = Field(0, ge=0, le=32, description="corrective-click rounds after the "
                              "first prompt (SAM/SAM-Med2D interactive training); 0: one-shot")
    click_loss: Literal["all", "last"] = Field("all", description="rounds whose masks count in "
                                               "the loss")


class DistributedConfig(Section):
    """Data-parallel training over `nproc` processes (torchrun); see samtune.train.ddp."""

    nproc: int = Field(1, ge=1, description="processes (GPUs); 1: no distributed training")
    backend: Literal["auto", "nccl", "gloo"] = Field("auto", description="auto: nccl on CUDA")
    master_port: int | None = Field(None, ge=1, le=65535, description="None: a free port")


class AugmentConfig(Section):
    """Training augmentation (samtune.train.augment): off unless enabled; flips stay off by
    default because laterality matters. Probabilities are per slice."""

    enabled: bool = False
    p_affine: float = Field(0.5, ge=0, le=1)
    rotate_deg: float = Field(15.0, ge=0, le=180)
    scale: tuple[float, float] = (0.9, 1.1)
    shift: float = Field(0.05, ge=0, le=0.5, description="fraction of the slice size")
    flip_x: bool = False
    flip_y: bool = False
    p_intensity: float = Field(0.5, ge=0, le=1)
    brightness: float = Field(0.1, ge=0, lt=1)
    contrast: float = Field(0.1, ge=0, lt=1)
    gamma: tuple[float, float] = (0.8, 1.25)
    p_noise: float = Field(0.2, ge=0, le=1)
    noise_std: float = Field(0.02, ge=0, description="on the 0–1 intensity scale")

    @field_validator("scale", "gamma")
    @classmethod
    def _positive_range(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not 0 < v[0] <= v[1]:
            raise ValueError(f"need 0 < low ≤ high, got {list(v)}")
        return v


class TrainConfig(Section):
    epochs: int = Field(10, ge=1)
    max_steps: int | None = Field(None, ge=1)
    batch_size: int = Field(4, ge=1, description="slices per step")
    grad_accum: int = Field(1, ge=1)
    optimizer: str = "AdamW"
    optimizer_kwargs: dict[str, Any] = Field(default_factory=lambda: {"lr": 1e-4})
    scheduler: str | None = None
    scheduler_kwargs: dict[str, Any] = Field(default_factory=dict)
    warmup_steps: int = Field(0, ge=0)
    loss: Literal["dice_ce", "dice_focal"] = "dice_ce"
    seg_loss_weight: float = Field(1.0, ge=0)
    iou_loss_weight: float = Field(1.0, ge=0)
    dice_weight: float = Field(1.0, ge=0, description="Dice term (MONAI lambda_dice)")
    pixel_loss_weight: float = Field(1.0, ge=0, description="CE or focal term (lambda_ce / "
                                     "lambda_focal); Dice : pixel = dice_weight : this")
    focal_gamma: float = Field(2.0, ge=0, description="dice_focal: focusing parameter")
    focal_alpha: float | None = Field(None, ge=0, le=1, description="dice_focal: foreground "
                                      "weight; None: unweighted (MONAI's default)")
    amp: Literal["none", "bf16", "fp16"] = "none"
    grad_clip: float | None = Field(1.0, gt=0)
    grad_checkpointing: bool = Field(False, description="recompute each image-encoder block "
                                     "in the backward pass (less memory, ~30% more compute)")
    attention: Literal["sdpa", "eager"] = Field(
        "sdpa", description="sdpa: segment-anything attention through torch's "
        "scaled_dot_product_attention (fused kernels, same result); eager: upstream's "
        "explicit softmax (samtune.models.fast_attention)")
    compile: bool = Field(False, description="torch.compile the image encoder for the run "
                          "(in place: checkpoint keys unchanged); compiling costs minutes")
    val_every: int = Field(1, ge=1)
    patience: int | None = Field(None, ge=1, description="early stopping, in validations")
    min_delta: float = Field(0.0, ge=0)
    checkpoint_every: int | None = Field(None, ge=1, description="epochs")
    embedding_cache: bool = True
    crops_per_case: int = Field(4, ge=1, description="3D models: training crops per labelled "
                                "case and epoch (samtune.train.data3d)")
    crop_foreground: float = Field(0.75, ge=0, le=1, description="3D models: share of the "
                                   "training crops centred on a voxel of a class")
    normalization: Literal["model", "imagenet", "dataset"] = Field(
        "model", description="model: the family's official input normalisation (SAM/SAM2: "
        "ImageNet mean/std, MedSAM: min-max to [0, 1]); imagenet: ImageNet mean/std whatever "
        "the family; dataset: the train split's mean/std (both differ from upstream)")
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    num_workers: int | Literal["auto"] = Field(
        "auto", description="data-loading processes (PNG/RLE decode off the training thread); "
        "auto: none on the CPU (its cores train), min(4, cores / 2 per rank) on CUDA")
    resume: Path | None = None
    cache_dir: Path = Field(Path(".samtune/cache"), description="frozen-encoder embeddings")
    qc_every: int = Field(5, ge=1, description="epochs between QC overlay images")
    export: list[Literal["onnx"]] = Field(
        default_factory=list, description="extra exports of the best model beside full.pt, "
        "image_encoder.pt (and the LoRA files): onnx → weights/encoder.onnx + decoder.onnx "
        "(segment-anything's ONNX layout; SAM/MedSAM/MobileSAM), checked with onnxruntime")
    prompts: PromptConfig = Field(default_factory=PromptConfig)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    distributed: DistributedConfig = Field(default_factory=DistributedConfig)

    @field_validator("optimizer", "scheduler")
    @classmethod
    def _known_name(cls, v: str | None, info: ValidationInfo) -> str | None:
        from samtune.train.optim import _lookup, optimizer_names, scheduler_names  # torch: lazily

        if v is not None:
            names = optimizer_names() if info.field_name == "optimizer" else scheduler_names()
            _lookup(v, names, info.field_name)
        return v

    @field_validator("optimizer_kwargs", "scheduler_kwargs")
    @classmethod
    def _torch_accepts(cls, v: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        """Dry-run the optimizer (and scheduler) on a dummy parameter (samtune.train.optim_check):
        a value torch would refuse fails here, naming its key, not inside training."""
        from samtune.train.optim_check import check_optimizer, check_scheduler

        d = info.data
        if info.field_name == "optimizer_kwargs" and "optimizer" in d:
            check_optimizer(d["optimizer"], v)
        elif d.get("scheduler") and "optimizer" in d and "optimizer_kwargs" in d:
            check_scheduler(d["scheduler"], v, d["optimizer"], d["optimizer_kwargs"])
        return v
