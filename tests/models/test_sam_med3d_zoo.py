"""SAM-Med3D in the zoo: the official key layout (medim's builder, the upstream architecture),
a real save + load in the official file layout, upstream's crop normalisation, and decoding."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from samtune.config import ModelConfig
from samtune.models.base import Prompts
from samtune.models.checkpoints import load_checkpoint
from samtune.models.registry import build_architecture, build_model, is_volumetric


@pytest.mark.parametrize("name", ["sam_med3d", "sam_med3d_turbo"])
def test_key_layout_equals_the_upstream_builder(name: str) -> None:
    from medim.models.sam_med3d import build_sam3D_vit_b_ori

    with torch.device("meta"):
        upstream = build_sam3D_vit_b_ori().state_dict()
    ours = build_architecture(name, meta=True).state_dict()
    assert ours.keys() == upstream.keys()
    assert all(ours[k].shape == upstream[k].shape for k in ours)
    assert is_volumetric(name) and not is_volumetric("sam_tiny")


def test_official_file_layout_round_trip_and_mis_shaped_key(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_model(ModelConfig(name="sam_med3d_tiny"))
    path = tmp_path / "sam_med3d_tiny.pth"
    torch.save({"model_state_dict": model.state_dict(), "epoch": 3}, path)
    fresh = build_model(ModelConfig(name="sam_med3d_tiny"))
    load_checkpoint(fresh, path)
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in model.state_dict().items())
    bad = dict(model.state_dict())
    key = next(k for k in bad if k.startswith("mask_decoder") and bad[k].ndim == 2)
    bad[key] = torch.zeros(3, 3)
    torch.save({"model_state_dict": bad}, path)
    with pytest.raises(Exception, match=key.split(".")[-2]):
        load_checkpoint(fresh, path)


def test_normalisation_equals_torchio_and_decoding_shapes() -> None:
    import torchio as tio

    model = build_model(ModelConfig(name="sam_med3d_tiny")).eval()
    crop = torch.rand(1, 1, 32, 32, 32) * 100
    crop[..., :8] = 0  # background (x ≤ 0) left out of the statistics
    expected = tio.ZNormalization(masking_method=lambda x: x > 0)(crop[0])
    assert torch.allclose(model.normalize(crop)[0], expected, atol=1e-5)
    with torch.no_grad():
        emb = model.encode(model.normalize(crop))
        prompts = Prompts(points=torch.tensor([[[16.0, 16.0, 16.0]]]),
                          point_labels=torch.tensor([[1]]))
        low, iou = model.decode(emb, 0, prompts)
    assert low.shape == (1, 1, *model.low_res_size) == (1, 1, 32, 32, 32) and iou.shape == (1, 1)
    assert model.upscale(low).shape == (1, 1, 32, 32, 32)
    with pytest.raises(ValueError, match="box"):
        model.decode(emb, 0, Prompts(boxes=torch.zeros(1, 6)))


def test_three_clicks_equal_upstreams_interactive_loop() -> None:
    """medim's modules driven as SAM-Med3D's sam_model_infer drives them (zeros as the first
    mask prompt, previous low-res logits after) vs samtune's wrapper: the same masks."""
    from samtune.inference.fidelity3d import compare_sam_med3d

    torch.manual_seed(0)
    model = build_model(ModelConfig(name="sam_med3d_tiny")).eval()
    crop = torch.rand(32, 32, 32) * 200
    crop[..., :6] = 0
    points = torch.tensor([[16.0, 16.0, 16.0], [8.0, 20.0, 12.0], [24.0, 10.0, 20.0]])
    result = compare_sam_med3d(model, crop, points, torch.tensor([1, 0, 1]))
    assert len(result.clicks) == 3
    assert all(c.iou == 1.0 and c.max_logit_diff < 1e-5 for c in result.clicks)


def test_an_upstream_built_base_checkpoint_loads_into_the_zoo_entry(tmp_path: Path) -> None:
    """The released file's shape: medim's upstream builder (random weights here, no official
    file on this machine) saved as SAM-Med3D's training script saves, {"model_state_dict"}."""
    from medim.models.sam_med3d import build_sam3D_vit_b_ori

    torch.manual_seed(0)
    upstream = build_sam3D_vit_b_ori().state_dict()
    path = tmp_path / "sam_med3d_turbo.pth"
    torch.save({"model_state_dict": upstream, "epoch": 1}, path)
    ours = build_model(ModelConfig(name="sam_med3d_turbo", checkpoint=path)).state_dict()
    assert ours.keys() == upstream.keys()
    assert all(torch.equal(ours[k], v) for k, v in upstream.items())
