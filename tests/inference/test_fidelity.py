"""samtune feeds every family exactly as its official inference code does.

The same random weights run through samtune's slice path (`SlicePredictor`, as evaluation and
inference use it) and through the official predictor (segment_anything / mobile_sam
`SamPredictor`, sam2 `SAM2ImagePredictor`, MedSAM's `MedSAM_Inference.py` steps, MedSAM2's
video predictor) on one non-square 300×220 image with a box (and points): the binary masks
must agree (IoU ≥ 0.999) and the logits within 1e-4. The real architectures (vit_b, TinyViT,
hiera_t) are the smallest of each family; the tiny ones run the same code in a second.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from samtune.inference.fidelity import official_predict, samtune_predict
from samtune.models.registry import build_architecture

BOX = np.array([85, 55, 225, 165])
POINTS = np.array([[150, 110], [30, 30]])
LABELS = np.array([1, 0])


def test_image() -> np.ndarray:
    """220×300×3 uint8: noise with a brighter rectangle (so masks are neither empty nor full)."""
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (220, 300, 3), dtype=np.uint8)
    img[60:160, 90:220] = np.clip(img[60:160, 90:220] // 3 + 150, 0, 255)
    return img


test_image.__test__ = False  # a helper, not a test


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = (a | b).sum()
    return 1.0 if union == 0 else float((a & b).sum() / union)


def object_present(model: torch.nn.Module) -> None:
    """SAM2-family random weights may score the object absent (an all-background mask from the
    video predictor); bias the score head to 'present' in both paths (they share the model)."""
    head = model.sam_mask_decoder.pred_obj_score_head
    torch.nn.init.constant_((head.layers[-1] if hasattr(head, "layers") else head).bias, 10.0)


def model_for(name: str, preprocess: str | None = None) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_architecture(name)
    if preprocess:  # a tiny architecture fed as another family of its kind
        model.preprocess = preprocess
    if hasattr(model, "sam_mask_decoder"):
        object_present(model)
    return model.eval()


def check(model: torch.nn.Module, **prompt) -> None:
    image = test_image()
    ours = samtune_predict(model, image, **prompt)
    theirs = official_predict(model, image, **prompt)
    assert theirs.mask.shape == ours.mask.shape == image.shape[:2]
    assert 0.01 < theirs.mask.mean() < 0.99, "degenerate mask: the test would prove nothing"
    assert mask_iou(ours.mask, theirs.mask) >= 0.999
    assert np.abs(ours.logits - theirs.logits).max() < 1e-4


PROMPTS = {"box": {"box": BOX}, "box+points": {"box": BOX, "points": POINTS, "labels": LABELS}}
TINY = [("sam_tiny", None), ("sam_tiny", "medsam"), ("sam2_tiny", None),
        ("sam2_tiny", "medsam2"), ("hq_sam_tiny", None)]
REAL = ["sam_vit_b", "mobile_sam", "medsam_vit_b", "sam2.1_hiera_t", "medsam2"]


@pytest.mark.parametrize("name,preprocess", TINY)
@pytest.mark.parametrize("prompt", PROMPTS)
def test_tiny_architectures_match_the_official_predictor(name, preprocess, prompt):
    if preprocess == "medsam" and prompt != "box":
        pytest.skip("MedSAM's inference takes a box only")
    check(model_for(name, preprocess), **PROMPTS[prompt])


def test_multimask_choice_matches_the_official_predictor():
    check(model_for("sam_tiny"), box=BOX, multimask=True)
    check(model_for("sam2_tiny"), box=BOX, points=POINTS[:1], labels=LABELS[:1], multimask=True)


def test_medsam2_blanks_an_absent_object_as_its_video_predictor_does():
    model = build_architecture("sam2_tiny").eval()
    model.preprocess = "medsam2"
    head = model.sam_mask_decoder.pred_obj_score_head
    torch.nn.init.constant_((head.layers[-1] if hasattr(head, "layers") else head).bias, -10.0)
    ours, theirs = (f(model, test_image(), box=BOX) for f in (samtune_predict, official_predict))
    assert not ours.mask.any() and not theirs.mask.any()


def test_the_old_feeding_would_fail_this_check(monkeypatch):
    """Padding with pixel value 0 before normalising (samtune's former path) moves SAM's logits
    far beyond the tolerance: the check can fail."""
    from samtune.inference import predictor as predict
    from samtune.models.preprocess import resize_to_model

    def zero_padded(pre, image, size):  # type: ignore[no-untyped-def]
        out = resize_to_model(pre, image, size)
        h, w = image.shape[:2]
        nh, nw = round(h * size / max(h, w)), round(w * size / max(h, w))
        out[:, nh:], out[:, :, nw:] = 0.0, 0.0
        return out

    model = model_for("sam_tiny")
    good = official_predict(model, test_image(), box=BOX)
    monkeypatch.setattr(predict, "resize_to_model", zero_padded)
    bad = samtune_predict(model, test_image(), box=BOX)
    assert np.abs(bad.logits - good.logits).max() > 1e-3


@pytest.mark.slow
@pytest.mark.parametrize("name", REAL)
def test_real_architectures_match_the_official_predictor(name):
    model = model_for(name)
    check(model, box=BOX)
    if name not in ("medsam_vit_b", "sam_vit_b"):  # MedSAM: box only; SAM: points run on TinyViT
        check(model, box=BOX, points=POINTS, labels=LABELS)
