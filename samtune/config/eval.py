"""Config sections of scoring and prediction: `eval` (slice and volume evaluation, biomarkers),
`infer` (unlabelled volumes) and the `benchmark` matrix.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from samtune.config.base import Section


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
    clicks: list[int] = Field(default_factory=lambda: [1, 3, 5, 10], description="report volume "
                              "Dice after these numbers of simulated corrective clicks "
                              "(metrics/clicks.csv); [] turns the interactive evaluation off")
    click_target: float = Field(0.9, gt=0, le=1, description="clicks to reach this Dice, per "
                                "case (metrics/clicks_to_target.csv)")
    clicks_zero_shot: bool = Field(True, description="with a trained model: score the untrained "
                                   "base model's clicks beside it")

    @field_validator("clicks")
    @classmethod
    def _click_counts(cls, value: list[int]) -> list[int]:
        if any(n < 1 for n in value):
            raise ValueError(f"click counts must be ≥ 1, got {value}")
        return sorted(set(value))

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
    score: str = Field("dice", pattern=r"^dice(@[1-9][0-9]*)?$", description="what ranks the "
                       "cells: dice (mean volume Dice) or dice@N (mean volume Dice after N "
                       "simulated clicks; N must be in eval.clicks)")

    @property
    def score_clicks(self) -> int | None:
        """N of a dice@N score, else None."""
        return int(self.score.split("@")[1]) if "@" in self.score else None

    @field_validator("overrides")
    @classmethod
    def _no_dataset_overrides(cls, value: dict[str, Any]) -> dict[str, Any]:
        fixed = sorted(k for k in value if k.split(".")[0] in BENCHMARK_FIXED)
        if fixed:
            raise ValueError(f"{fixed}: the cells share one prepared dataset and output folder; "
                             f"overrides may not set {', '.join(BENCHMARK_FIXED)}")
        return value


class InferConfig(Section):
    """The `infer` pipeline (samtune.inference.infer): a model (eval.model_uri, or the model
    section) on new volumes → label volumes, overlay PNGs and inference.json under output_dir."""

    input: Path | None = Field(None, description="a folder of volumes (.nii, .nii.gz, .nrrd, "
                               ".mha; not recursive), a picture (.png, .jpg) or a folder of "
                               "pictures (samtune.inference.pictures); None: the cases of the "
                               "data section")
    cases: Literal["unlabelled", "all"] = Field(
        "unlabelled", description="data-section input: its unlabelled cases (ASOCA Testset_*), "
        "or all (labels ignored)")
    mode: Literal["prompts", "automatic"] = Field(
        "automatic", description="prompts: boxes on key slices (prompts_file), propagated; "
        "automatic: segment-anything's point-grid mask generator on every slice")
    prompts_file: Path | None = Field(None, description="JSON or CSV of key-slice boxes; format "
                                      "in samtune.inference.prompts_file")
    propagate_margin: int = Field(2, ge=0, description="pixels added to each propagated box")
    points_per_side: int = Field(16, ge=1, description="automatic: point grid per slice side")
    points_per_batch: int = Field(64, ge=1, description="automatic: points per decoder call")
    pred_iou_thresh: float = Field(0.88, ge=0, le=1)
    stability_score_thresh: float = Field(0.95, ge=0, le=1)
    stability_score_offset: float = Field(1.0, gt=0)
    box_nms_thresh: float = Field(0.7, gt=0, le=1)
    min_mask_area: int = Field(0, ge=0, description="automatic: pixels on the slice grid")
    max_mask_fraction: float = Field(0.5, gt=0, le=1, description="automatic: drop masks over "
                                      "this fraction of the slice (background)")
    automatic_label: int = Field(1, ge=1, description="automatic: label of the kept masks' union")
    batch_size: int = Field(8, ge=1, description="automatic: slices per encoder call")
    overlays: int = Field(3, ge=0, description="overlay PNGs per case")
    overlay_opacity: float = Field(0.5, ge=0, le=1, description="pictures: opacity of the "
                                   "classes' colours over the picture in the overlay PNG")

    @model_validator(mode="after")
    def _prompts_need_a_file(self) -> "InferConfig":
        if self.mode == "prompts" and self.prompts_file is None:
            raise ValueError("infer.mode 'prompts' needs infer.prompts_file (JSON or CSV of "
                             "key-slice boxes)")
        return self
