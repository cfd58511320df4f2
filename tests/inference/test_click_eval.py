"""Interactive evaluation on the slice grid: clicks land where the rule says (in model
coordinates), Dice after N clicks reaches the report, and a fine-tuned model is scored beside
its zero-shot base."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from samtune.config import EvalConfig, ModelConfig
from samtune.eval.volume_eval import evaluate_volumes
from samtune.inference.click_eval import click_slice
from samtune.inference.model_source import load_model
from samtune.inference.predictor import SlicePredictor
from samtune.models.base import Embeddings, PromptableModel, Prompts
from tests.inference.test_predictor import AFFINES, CONVERT, _case


class DiscPainter(PromptableModel):
    """Answers every click with a disc of radius 3 around each positive point minus discs
    around negative ones, on its own S×S grid (its low-res grid is S×S too), so its masks are
    known exactly once the clicks are."""

    family = "sam"

    def __init__(self, size: int):
        super().__init__(size, (0, 0, 0), (1, 1, 1))
        self.calls: list[tuple[Prompts, bool]] = []

    def decode(self, emb: Embeddings, b: int, prompts: Prompts, multimask: bool = False):
        self.calls.append((prompts, multimask))
        s = self.img_size
        yy, xx = torch.meshgrid(torch.arange(s), torch.arange(s), indexing="ij")
        out = torch.full((len(prompts), 1, s, s), -5.0)
        for n in range(len(prompts)):
            for (x, y), lab in zip(prompts.points[n].tolist(), prompts.point_labels[n].tolist()):
                disc = (xx - x) ** 2 + (yy - y) ** 2 <= 9
                if lab == 1:
                    out[n, 0][disc] = 5.0
                elif lab == 0:
                    out[n, 0][disc] = -5.0
        m = 3 if multimask else 1
        return out.repeat(1, m, 1, 1), torch.zeros(len(prompts), m)


def test_clicks_go_to_the_error_centres_in_model_coordinates() -> None:
    model = DiscPainter(64)  # model grid twice the 32-px slice grid: coordinates scale by 2
    predictor = SlicePredictor(model, 32)
    gt = np.zeros((1, 32, 32), bool)
    gt[0, 10:20, 4:24] = True  # 10 rows × 20 columns
    probs = click_slice(predictor, Embeddings(torch.zeros(1, 1, 1, 1)), 0, gt, 3)
    assert len(probs) == 3 and probs[0].shape == (1, 32, 32)
    first, multimask = model.calls[0]
    assert multimask and first.point_labels.tolist() == [[1]]
    # centre of the 10×20 box: rows 14, cols 8…; the first distance maximum (row 14, col 8)
    assert first.points[0, 0].tolist() == [16.0, 28.0]  # (x, y) = 2·(col 8, row 14)
    second, multimask = model.calls[1]
    assert not multimask and second.points.shape == (1, 2, 2)
    assert second.mask_inputs is not None and second.point_labels[0, 1] == 1
    dice = [2 * (p[0] > 0.5)[gt[0]].sum() / ((p[0] > 0.5).sum() + gt[0].sum()) for p in probs]
    assert dice[0] < dice[1] <= dice[2] + 1e-9  # a second positive click covers more


def test_oracle_reports_dice_one_at_every_click(tmp_path: Path) -> None:
    case = _case(tmp_path, "c0", AFFINES["oblique"], ".nii.gz")
    loaded = load_model(ModelConfig(name="oracle", img_size=64), device="cpu")
    ev = EvalConfig(clicks=[1, 3], slice_metrics=False, qc_cases=0)
    evaluate_volumes(loaded, [case], CONVERT, ev, tmp_path / "run", {1: "tube", 2: "ball"})
    clicks = pd.read_csv(tmp_path / "run/metrics/clicks.csv")
    assert sorted(clicks["clicks"].unique()) == [1, 3] and len(clicks) == 4
    assert (clicks["dice"] >= 0.99).all()
    reach = pd.read_csv(tmp_path / "run/metrics/clicks_to_target.csv")
    assert (reach["clicks_to_0.9"] == 1).all()
    assert "Dice vs clicks" in (tmp_path / "run/report.html").read_text()


def test_a_model_and_its_zero_shot_base_side_by_side(tmp_path: Path) -> None:
    case = _case(tmp_path, "c1", AFFINES["negative"], ".nii.gz")
    torch.manual_seed(0)
    loaded = load_model(ModelConfig(name="sam_tiny", img_size=64), device="cpu")
    base = load_model(ModelConfig(name="sam_tiny", img_size=64), device="cpu")
    ev = EvalConfig(clicks=[1, 2, 4], slice_metrics=False, qc_cases=0)
    runs = []
    for out in ("a", "b"):
        evaluate_volumes(loaded, [case], CONVERT, ev, tmp_path / out, {1: "tube", 2: "ball"},
                         baseline=base)
        runs.append(pd.read_csv(tmp_path / out / "metrics/clicks.csv"))
    pd.testing.assert_frame_equal(runs[0], runs[1])  # the click rule is deterministic
    assert set(runs[0]["model"]) == {"evaluated", "zero-shot"} and len(runs[0]) == 12
    assert runs[0]["dice"].between(0, 1).all()
    off = EvalConfig(clicks=[], slice_metrics=False, qc_cases=0)
    evaluate_volumes(loaded, [case], CONVERT, off, tmp_path / "off", {1: "tube", 2: "ball"})
    assert not (tmp_path / "off/metrics/clicks.csv").exists()
