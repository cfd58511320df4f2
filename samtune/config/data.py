"""Config sections of the data path: the dataset (`data`, its phantoms), `validate`, `convert`
(volume → COCO slices) and the patient-level `split`.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from samtune.config.base import Section


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
    maps: dict[str, str] = Field(default_factory=dict, description=(
        "quantitative maps (T2, T1rho …) co-registered with the images: name → path pattern "
        "relative to data.root with a <case> placeholder, e.g. {t2: maps/<case>_t2.nii.gz}; "
        "a case whose map file is missing is skipped (samtune.data.maps)"))
    phantoms: PhantomConfig | None = None

    @field_validator("layout")
    @classmethod
    def _known_layout(cls, v: str) -> str:
        from samtune.data.layouts import (
            LAYOUTS,  # imported late: layouts imports this module
        )

        if v not in LAYOUTS:
            raise ValueError(f"unknown layout '{v}'; valid layouts: {', '.join(sorted(LAYOUTS))}")
        return v

    @field_validator("maps")
    @classmethod
    def _map_patterns(cls, v: dict[str, str]) -> dict[str, str]:
        for name, pattern in v.items():
            if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", name):
                raise ValueError(f"map name '{name}': use letters, digits and _ (it names the "
                                 "biomarker columns)")
            norm = os.path.normpath(pattern.replace("\\", "/"))
            if "<case>" not in pattern or os.path.isabs(pattern) or norm.split("/")[0] == "..":
                raise ValueError(f"map '{name}': pattern '{pattern}' must be a path relative to "
                                 "data.root containing <case>, e.g. maps/<case>_t2.nii.gz")
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
    spacing_3d: tuple[float, float, float] = Field(
        (1.5, 1.5, 1.5), description="3D models (SAM-Med3D): the grid, mm, the volumes are "
        "resampled to for the 3D export (SAM-Med3D's official inference uses 1.5 mm isotropic)")

    @field_validator("spacing_3d")
    @classmethod
    def _positive_spacing(cls, v: tuple[float, float, float]) -> tuple[float, float, float]:
        if any(not s > 0 for s in v):
            raise ValueError(f"spacing must be > 0 mm, got {list(v)}")
        return v


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
