"""Evaluation decoding of a whole encoder batch at once equals one decode per slice."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from samtune.config import PromptConfig
from samtune.inference.predictor import SlicePredictor
from samtune.models.registry import build_architecture

S = 48  # the slice grid; the models run at their own (tiny) input size


def boxes(specs: list[tuple[int, int, int, int]]) -> np.ndarray:
    out = np.zeros((len(specs), S, S), bool)
    for m, (y0, y1, x0, x1) in zip(out, specs):
        m[y0:y1, x0:x1] = True
    return out


GTS = [boxes([(4, 20, 6, 18), (30, 44, 25, 40)]), boxes([(10, 30, 10, 30)]),
       boxes([(2, 9, 2, 9), (20, 28, 30, 46), (35, 47, 5, 15)])]
CFGS = {"box jitter": PromptConfig(bbox_shift=3),
        "points, multimask": PromptConfig(box=False, center_point=True, positive_points=2,
                                          negative_points=1, multimask=True)}


@pytest.mark.parametrize("cfg", CFGS.values(), ids=CFGS.keys())
@pytest.mark.parametrize("name", ["sam_tiny", "sam2_tiny", "hq_sam_tiny"])
def test_decode_slices_equals_a_decode_per_slice(name: str, cfg: PromptConfig) -> None:
    torch.manual_seed(0)
    predictor = SlicePredictor(build_architecture(name).eval(), S)
    u8 = np.random.default_rng(1).integers(0, 256, (3, S, S, 1), dtype=np.uint8)
    with torch.inference_mode():
        emb = predictor.encode(u8)
        g = torch.Generator().manual_seed(2)
        each = [predictor.decode(emb, b, gt, cfg, g) for b, gt in enumerate(GTS)]
        pooled = predictor.decode_slices(emb, list(enumerate(GTS)), cfg,
                                         torch.Generator().manual_seed(2))
    assert [p.shape for p in pooled] == [(len(gt), S, S) for gt in GTS]
    for a, b in zip(each, pooled):
        np.testing.assert_allclose(b, a, atol=1e-5)
    assert max(float(np.abs(a - 0.5).max()) for a in each) > 0.01  # not a constant answer


def test_decode_slices_calls_the_mask_decoder_once(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    predictor = SlicePredictor(build_architecture("sam_tiny").eval(), S)
    calls = []
    decoder = predictor.model.mask_decoder
    monkeypatch.setattr(decoder, "forward", lambda *a, _f=decoder.forward, **k: (
        calls.append(1), _f(*a, **k))[1])
    u8 = np.zeros((3, S, S, 3), np.uint8)
    with torch.inference_mode():
        predictor.decode_slices(predictor.encode(u8), list(enumerate(GTS)),
                                PromptConfig(bbox_shift=0), torch.Generator())
    assert len(calls) == 1
