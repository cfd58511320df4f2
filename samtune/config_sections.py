"""The sections of the config tree (see samtune.config for loading and the root `Config`).

Every section forbids unknown keys, so a typo never passes silently.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class PhantomConfig(Section):
    """Synthetic coronary-CTA-like volumes written into `data.root` in a real layout."""

    layout: Literal["asoca", "imagecas"] = "asoca"
    n_normal: int = Field(3, ge=0)
    n_diseased: int = Field(3, ge=0)
    n_test: int = Field(1, ge=0, description="unlabelled cases per group (ASOCA Testset_*)")
    shape: tuple[int, int, int] = (64, 64, 48)
    spacing: tuple[float, float, float] = (0.8, 0.8, 1.25)
    lesions: bool = True
    seed: int = 0


class DataConfig(Section):
    layout: str = Field(description="dataset layout name; run.py --list-datasets lists them")
    root: Path | None = Field(None, description="dataset folder; set in YAML or with --set")
    modality: Literal["CT", "MR", "RGB"] | None = Field(None, description="None: the layout's")
    labels: dict[int, str] = Field(default_factory=dict, description="value → name overrides")
    manifest: Path | None = Field(None, description="CSV layout: manifest file (root/manifest.csv)")
    include_unlabelled: bool = Field(False, description="keep inference-only cases in ingest")
    phantoms: PhantomConfig | None = None

    @field_validator("layout")
    @classmethod
    def _known_layout(cls, v: str) -> str:
        from samtune.data.layouts import LAYOUTS  # imported late: layouts imports this module

        if v not in LAYOUTS:
            raise ValueError(f"unknown layout '{v}'; valid layouts: {', '.join(sorted(LAYOUTS))}")
        return v

    @field_validator("labels")
    @classmethod
    def _no_background(cls, v: dict[int, str]) -> dict[int, str]:
        if 0 in v:
            raise ValueError("label 0 is background; list foreground classes only")
        return v


class ValidateConfig(Section):
    label_values: list[int] | None = Field(None, description="allowed values; None: 0 + labels")
    spacing_range_mm: tuple[float, float] = (0.05, 10.0)
    hu_range: tuple[float, float] = Field((-2048.0, 4096.0), description="CT 0.5/99.5 pct bounds")
    min_label_voxels: int = Field(1, ge=0)
    affine_tolerance_mm: float = Field(1e-3, gt=0)
    min_valid_fraction: float = Field(0.5, ge=0, le=1)


class ConvertConfig(Section):
    axis: Literal["axial", "coronal", "sagittal"] = "axial"
    img_size: int | None = Field(
        None, ge=16, description="output square size, aspect kept by padding; None: the model's "
        "input size (model.img_size or the zoo entry's), resolved by the root Config")
    channels: Literal[1, 3] = 3
    input_channels: list[int] | None = Field(None, description="volume channels to use")
    intensity: Literal["auto", "window", "percentile"] = "auto"
    window: str | None = Field(None, description="CT preset name, e.g. cta, soft_tissue")
    window_level: float | None = None
    window_width: float | None = Field(None, gt=0)
    percentiles: tuple[float, float] = (0.5, 99.5)
    empty_slices: Literal["none", "fraction", "all"] = "none"
    empty_fraction: float = Field(0.1, ge=0, le=1)
    min_component_area: int = Field(5, ge=0, description="pixels on the output grid")
    png_compression: int = Field(1, ge=0, le=9)
    workers: int = Field(2, ge=1)
    seed: int = 0


class SplitConfig(Section):
    method: Literal["random", "kfold", "table", "layout"] = "random"
    ratios: tuple[float, float, float] = (0.70, 0.15, 0.15)
    seed: int = 42
    stratify: bool = True
    folds: int = Field(5, ge=2)
    fold: int = Field(0, ge=0)
    table: Path | None = Field(None, description="split table (xlsx/csv); relative to data.root")
    table_column: str | None = Field(None, description="table column, e.g. Split-1")

    @field_validator("ratios")
    @classmethod
    def _ratios_sum_to_one(cls, v: tuple[float, float, float]) -> tuple[float, float, float]:
        if any(r < 0 for r in v) or abs(sum(v) - 1.0) > 1e-6:
            raise ValueError(f"ratios must be ≥ 0 and sum to 1, got {list(v)}")
        return v

    @model_validator(mode="after")
    def _fold_in_range(self) -> "SplitConfig":
        if self.fold >= self.folds:
            raise ValueError(f"fold {self.fold} is out of range for {self.folds} folds")
        if self.method == "table" and self.table is None:
            raise ValueError("method 'table' needs split.table (path to the split table)")
        return self


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
    grad_checkpointing: bool = False
    val_every: int = Field(1, ge=1)
    patience: int | None = Field(None, ge=1, description="early stopping, in validations")
    min_delta: float = Field(0.0, ge=0)
    checkpoint_every: int | None = Field(None, ge=1, description="epochs")
    embedding_cache: bool = True
    normalization: Literal["model", "imagenet", "dataset"] = Field(
        "model", description="model: the family's official input normalisation (SAM/SAM2: "
        "ImageNet mean/std, MedSAM: min-max to [0, 1]); imagenet: ImageNet mean/std whatever "
        "the family; dataset: the train split's mean/std (both differ from upstream)")
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    num_workers: int = Field(0, ge=0)
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


class EvalConfig(Section):
    split: Literal["train", "val", "test", "all"] = "test"
    model_uri: str | None = Field(None, description="evaluate pipeline: None → the model section "
                                  "(zoo name + checkpoint); a finetune output folder; or an "
                                  "MLflow URI such as models:/name@champion")
    mode: Literal["slices", "propagate"] = Field(
        "slices", description="slices: GT prompts on every slice; propagate: the key slice's "
        "GT boxes carried through the volume (SAM: slice to slice; SAM2: video predictor)")
    prompt: Literal["box", "points"] = "box"
    points: int = Field(1, ge=1, description="positive points per instance (prompt: points)")
    bbox_shift: int = Field(0, ge=0, description="evaluation box jitter, pixels")
    multimask: bool = False
    propagate_margin: int = Field(2, ge=0, description="pixels added to each propagated box")
    batch_size: int = Field(8, ge=1)
    seed: int = 0
    nsd_tolerance_mm: float | dict[str, float] = Field(1.0, description="NSD tolerance, mm; or "
                                                       "per class name")
    cldice_classes: list[str] | Literal["all"] = Field(default_factory=list,
                                                       description="tubular classes for clDice")
    biomarkers: dict[str, bool | dict[str, Any]] = Field(
        default_factory=dict, description="name → true or params; samtune.eval.biomarkers")
    slice_metrics: bool = True
    save_predictions: bool = True
    qc_cases: int = Field(3, ge=0, description="worst and best cases in the QC montage")

    @field_validator("biomarkers")
    @classmethod
    def _known_biomarkers(cls, value: dict[str, Any]) -> dict[str, Any]:
        if value:  # (the registry imports scipy / scikit-image: only when asked for)
            from samtune.eval.biomarkers import validate_selection

            validate_selection(value)  # unknown name → ValueError listing the valid ones
        return value


BENCHMARK_FIXED = ("data", "validate", "convert", "split", "output_dir", "stack", "benchmark")


class BenchmarkConfig(Section):
    """The `benchmark` matrix: datasets × models × methods, one finetune + evaluate per cell
    (samtune.benchmark). An empty list means this config's own model / method / data."""

    models: list[str | dict[str, Any]] = Field(
        default_factory=list, description="zoo names, or model-section overrides "
        "({name: sam_tiny, img_size: 128}); a name also sets the zoo's official checkpoint")
    methods: list[str | dict[str, Any]] = Field(
        default_factory=list, description="method names, or model-section overrides, e.g. "
        "{method: lora, lora: {r: 4}}")
    datasets: list[str | dict[str, Any]] = Field(
        default_factory=list, description="config names/paths (their data, validate, convert "
        "and split sections are used), or dicts of those sections")
    overrides: dict[str, Any] = Field(
        default_factory=dict, description="dotted key → value for every cell, e.g. "
        "train.epochs: 2; not the dataset sections (use datasets)")

    @field_validator("overrides")
    @classmethod
    def _no_dataset_overrides(cls, value: dict[str, Any]) -> dict[str, Any]:
        fixed = sorted(k for k in value if k.split(".")[0] in BENCHMARK_FIXED)
        if fixed:
            raise ValueError(f"{fixed}: the cells share one prepared dataset and output folder; "
                             f"overrides may not set {', '.join(BENCHMARK_FIXED)}")
        return value
