"""The 3D model's side of volume evaluation (`samtune.eval.volume_eval`): SAM-Med3D predicts
each class in its own crop with simulated clicks (`samtune.inference.volume3d`, upstream's
inference: resample to convert.spacing_3d, crop centred on the class, clicks, back to the source
grid). Scoring, biomarkers and the report are the 2D path's, unchanged.

The volume prediction (metrics/volume.csv) is the mask after `eval.points` clicks (upstream's
`num_clicks`, 1 by default); with eval.clicks the Dice after 1…max(eval.clicks) clicks goes to
metrics/clicks.csv, for the model and, when given, its zero-shot base.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from samtune.config import ConvertConfig, EvalConfig
from samtune.eval.click_metrics import curve_rows
from samtune.inference.model_source import LoadedModel
from samtune.inference.volume3d import predict_volume_3d

__all__ = ["Volumes3D"]


class Volumes3D:
    """Callable per volume: (Volume, gt label volume) → (prediction on the source grid, the
    QC montage's axis (2), click rows)."""

    def __init__(self, loaded: LoadedModel, eval_cfg: EvalConfig, convert_cfg: ConvertConfig,
                 classes: dict[int, str], baseline: LoadedModel | None):
        self.loaded, self.eval_cfg, self.classes = loaded, eval_cfg, classes
        self.spacing = tuple(convert_cfg.spacing_3d)
        self.clickers = [(loaded, "evaluated")] if eval_cfg.clicks else []
        if eval_cfg.clicks and baseline is not None:
            self.clickers.append((baseline, "zero-shot"))

    def __call__(self, vol: Any, gt: np.ndarray) -> tuple[np.ndarray, int, list[dict]]:
        classes = list(self.classes)
        n = self.eval_cfg.points
        pred, _ = predict_volume_3d(self.loaded.model, vol, classes, n_clicks=n,
                                    spacing=self.spacing, device=self.loaded.device)
        rows: list[dict] = []
        for loaded, name in self.clickers:
            _, curves = predict_volume_3d(loaded.model, vol, classes,
                                          n_clicks=max(self.eval_cfg.clicks),
                                          spacing=self.spacing, device=loaded.device)
            rows += curve_rows(vol.case.case_id, {c: curve[1:] for c, curve in curves.items()},
                               self.classes, name)
        return pred, 2, rows
