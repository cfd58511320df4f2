"""Config sections of running and shipping: inference, registry + promotion, stack, schedule
(the data / model / train / eval sections are in samtune.config_sections; samtune.config joins
them into the one root `Config`). Every section forbids unknown keys.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from samtune.config_sections import Section

class InferConfig(Section):
    """The `infer` pipeline (samtune.eval.infer): a model (eval.model_uri, or the model section)
    on new volumes → label volumes, overlay PNGs and inference.json under output_dir."""

    input: Path | None = Field(None, description="a folder of volumes (.nii, .nii.gz, .nrrd, "
                               ".mha; not recursive); None: the cases of the data section")
    cases: Literal["unlabelled", "all"] = Field(
        "unlabelled", description="data-section input: its unlabelled cases (ASOCA Testset_*), "
        "or all (labels ignored)")
    mode: Literal["prompts", "automatic"] = Field(
        "automatic", description="prompts: boxes on key slices (prompts_file), propagated; "
        "automatic: segment-anything's point-grid mask generator on every slice")
    prompts_file: Path | None = Field(None, description="JSON or CSV of key-slice boxes; format "
                                      "in samtune.eval.prompts_file")
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

    @model_validator(mode="after")
    def _prompts_need_a_file(self) -> "InferConfig":
        if self.mode == "prompts" and self.prompts_file is None:
            raise ValueError("infer.mode 'prompts' needs infer.prompts_file (JSON or CSV of "
                             "key-slice boxes)")
        return self


class RegistryConfig(Section):
    """Registration and evidence-based promotion (see samtune.promotion, samtune.registry_ops).

    A challenger becomes champion when its mean per-volume Dice beats the champion's by at least
    `min_improvement` AND the lower bound of the paired bootstrap CI of the mean difference is
    > 0; with no champion yet, when its mean Dice is ≥ `floor`."""

    model_name: str = "samtune"
    enabled: bool = Field(True, description="register the trained model in MLflow")
    min_improvement: float = Field(0.005, ge=0, le=1, description="least mean Dice gain (0-1)")
    floor: float = Field(0.5, ge=0, le=1, description="least mean Dice of a first champion")
    bootstrap_samples: int = Field(10000, ge=100, le=1_000_000)
    confidence: float = Field(0.95, gt=0, lt=1, description="two-sided bootstrap CI level")
    seed: int = Field(0, ge=0, description="bootstrap RNG seed")
    rollback: bool = Field(False, description="roll the champion back to previous, no promotion")
    promote: bool = Field(True, description="finetune: decide promotion after registering")
    challenger: str = Field("latest", description="promote pipeline: the version to judge "
                            "(a number, or latest)")
    skip_unchanged: bool = Field(True, description="retrain: skip training when the dataset "
                                 "fingerprint equals the champion's")
    champion_alias: str = Field("champion", min_length=1, max_length=255, pattern=r"^[\w\-]+$")
    previous_alias: str = Field("previous", min_length=1, max_length=255, pattern=r"^[\w\-]+$")

    @model_validator(mode="after")
    def _usable_aliases(self) -> "RegistryConfig":
        for alias in (self.champion_alias, self.previous_alias):
            if alias.lower() == "latest" or (alias[0] in "vV" and alias[1:].isdigit()):
                raise ValueError(f"alias '{alias}' is reserved by MLflow ('latest', 'v<number>')")
        if self.champion_alias == self.previous_alias:
            raise ValueError("champion_alias and previous_alias must differ")
        return self


class StackConfig(Section):
    name: str = "samtune-local"
    home: Path = Field(Path(".samtune"), description="project-local ZenML + MLflow state")
    mlflow_tracking_uri: str | None = Field(None, description="None: sqlite file under home")
    experiment_tracker: str = Field("samtune-mlflow-tracker", description="ZenML component")
    kind: Literal["local", "kubernetes"] = Field("local", description="kubernetes: the remote "
                                                 "stack of `spec`, pods per `pods`")
    spec: Path | None = Field(None, description="stack as code (stacks/k8s_stack.yaml)")
    pods: dict[str, Any] = Field(default_factory=dict, description="pod pools: gpu / cpu / data "
                                 "(stacks/k8s_pods.py schema); train + evaluate run on gpu")

    @model_validator(mode="after")
    def _remote_needs_spec(self) -> "StackConfig":
        if self.kind == "kubernetes" and self.spec is None:
            raise ValueError("stack.kind kubernetes needs stack.spec (e.g. stacks/k8s_stack.yaml)")
        return self


_CRON_RANGES = ((0, 59), (0, 23), (1, 31), (1, 12), (0, 7))
_CRON_NAMES = ({}, {}, {}, {m: i + 1 for i, m in enumerate(
    "jan feb mar apr may jun jul aug sep oct nov dec".split())},
    {d: i for i, d in enumerate("sun mon tue wed thu fri sat".split())})


def check_cron(expr: str) -> str:
    """A 5-field cron expression (minute hour day-of-month month day-of-week; numbers, names,
    *, ranges a-b, steps /n, lists) → itself; ValueError naming the bad field otherwise."""
    fields = expr.split()
    if len(fields) != 5:
        raise ValueError(f"cron '{expr}': expected 5 fields (minute hour day month weekday), "
                         f"got {len(fields)}")
    for field, (lo, hi), names, what in zip(fields, _CRON_RANGES, _CRON_NAMES,
                                            ("minute", "hour", "day", "month", "weekday")):
        for part in field.lower().split(","):
            base, _, step = part.partition("/")
            if step and not (step.isdigit() and int(step) > 0):
                raise ValueError(f"cron '{expr}': bad step '/{step}' in the {what} field")
            if base == "*":
                continue
            for value in base.split("-", 1):
                number = names.get(value, int(value) if value.isdigit() else None)
                if number is None or not lo <= number <= hi:
                    raise ValueError(f"cron '{expr}': '{value}' is not a valid {what} "
                                     f"({lo}-{hi})")
    return expr


class ScheduleConfig(Section):
    """When the pipeline runs by itself: a ZenML schedule (a CronJob on the kubernetes stack)."""

    cron: str | None = Field(None, description="e.g. '0 3 * * 1' (Mondays 03:00); None: once")

    @field_validator("cron")
    @classmethod
    def _valid_cron(cls, value: str | None) -> str | None:
        return None if value is None else check_cron(value)

