"""Hugging Face SamModel folders (save_pretrained) load into samtune's SAM architectures."""
from __future__ import annotations

import json

import pytest
import torch

from samtune.config import ModelConfig
from samtune.models.base import Prompts
from samtune.models.checkpoints import CheckpointError
from samtune.models.hf_checkpoints import hf_to_official, is_hf_folder, official_to_hf
from samtune.models.registry import build_architecture, build_model

transformers = pytest.importorskip("transformers")


def tiny_hf_sam() -> torch.nn.Module:
    """A random transformers SamModel with sam_tiny's widths (samtune.models.registry)."""
    from transformers import SamConfig, SamModel
    from transformers.models.sam.configuration_sam import (SamMaskDecoderConfig,
                                                           SamPromptEncoderConfig,
                                                           SamVisionConfig)

    vision = SamVisionConfig(hidden_size=64, output_channels=64, num_hidden_layers=2,
                             num_attention_heads=2, global_attn_indexes=[1], window_size=8,
                             image_size=256, patch_size=16, mlp_dim=256, num_pos_feats=32)
    prompt = SamPromptEncoderConfig(hidden_size=64, image_size=256, patch_size=16,
                                    mask_input_channels=16)
    decoder = SamMaskDecoderConfig(hidden_size=64, mlp_dim=256, num_attention_heads=4,
                                   iou_head_hidden_dim=64)
    torch.manual_seed(0)
    return SamModel(SamConfig(vision_config=vision.to_dict(), prompt_encoder_config=prompt
                              .to_dict(), mask_decoder_config=decoder.to_dict())).eval()


def test_keys_map_both_ways():
    hf = tiny_hf_sam().state_dict()
    ours = build_architecture("sam_tiny").state_dict()
    converted = official_to_hf(ours)
    assert {k: v.shape for k, v in converted.items()} == {k: v.shape for k, v in hf.items()}
    back = hf_to_official(hf)
    assert {k: v.shape for k, v in back.items()} == {k: v.shape for k, v in ours.items()}
    again = hf_to_official(official_to_hf(ours))
    assert all(torch.equal(again[k], ours[k]) for k in ours)


def test_a_saved_folder_loads_and_gives_the_hf_models_outputs(tmp_path):
    hf = tiny_hf_sam()
    hf.save_pretrained(tmp_path / "sam-tiny")
    assert is_hf_folder(tmp_path / "sam-tiny")
    model = build_model(ModelConfig(name="sam_tiny", checkpoint=tmp_path / "sam-tiny")).eval()
    x = torch.randn(1, 3, 256, 256, generator=torch.Generator().manual_seed(1))
    boxes = torch.tensor([[30.0, 40.0, 150.0, 200.0], [100.0, 20.0, 240.0, 90.0]])
    points = torch.tensor([[[60.0, 70.0]], [[150.0, 50.0]]])
    with torch.no_grad():
        theirs = hf(pixel_values=x, input_boxes=boxes[None], multimask_output=True)
        low, iou = model.decode(model.encode(x), 0, Prompts(boxes=boxes), multimask=True)
        assert torch.allclose(theirs.pred_masks[0], low, atol=1e-4)
        assert torch.allclose(theirs.iou_scores[0], iou, atol=1e-5)
        theirs = hf(pixel_values=x, input_points=points[None], input_labels=torch.ones(1, 2, 1,
                    dtype=torch.long), multimask_output=False)
        low, _ = model.decode(model.encode(x), 0, Prompts(
            points=points, point_labels=torch.ones(2, 1, dtype=torch.long)))
        assert torch.allclose(theirs.pred_masks[0], low, atol=1e-4)


def test_a_training_step_from_an_hf_folder(tmp_path):
    from samtune.train.losses import sam_loss

    tiny_hf_sam().save_pretrained(tmp_path / "hf")
    model = build_model(ModelConfig(name="sam_tiny", checkpoint=tmp_path / "hf")).train()
    before = model.mask_decoder.iou_token.weight.detach().clone()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    target = torch.zeros(1, 256, 256, dtype=torch.bool)
    target[0, 60:120, 50:140] = True
    low, iou = model.decode(model.encode(torch.randn(1, 3, 256, 256)), 0,
                            Prompts(boxes=torch.tensor([[50.0, 60.0, 139.0, 119.0]])))
    sam_loss(model.upscale(low), iou, target).total.backward()
    opt.step()
    assert not torch.equal(before, model.mask_decoder.iou_token.weight)


def test_unusable_folders_are_refused_with_the_reason(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="config.json"):
        build_model(ModelConfig(name="sam_tiny", checkpoint=tmp_path / "empty"))
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "mask2former"}))
    (other / "model.safetensors").write_bytes(b"")
    with pytest.raises(CheckpointError, match="model_type 'mask2former'"):
        build_model(ModelConfig(name="sam_tiny", checkpoint=other))
    (other / "config.json").write_text(json.dumps({"model_type": "sam2"}))
    with pytest.raises(CheckpointError, match="model.safetensors: unreadable"):
        build_model(ModelConfig(name="sam2_tiny", checkpoint=other))


def test_the_published_vit_base_layout_maps_onto_sam_vit_b():
    """transformers' default SamConfig is facebook/sam-vit-base (and wanglab/medsam-vit-base):
    its keys and shapes map onto sam_vit_b's / medsam_vit_b's exactly (built on meta)."""
    from transformers import SamConfig, SamModel

    from samtune.models.registry import meta_device

    with meta_device():
        hf = SamModel(SamConfig()).state_dict()
        ours = build_architecture("medsam_vit_b", meta=True).state_dict()
    assert {k: v.shape for k, v in hf_to_official(hf).items()} == \
        {k: v.shape for k, v in ours.items()}


@pytest.mark.slow
def test_a_sam2_folder_loads_into_sam21_hiera_t_and_gives_the_hf_models_outputs(tmp_path):
    """transformers' default Sam2Config is the SAM2.1 Hiera-T architecture
    (facebook/sam2.1-hiera-tiny); its video-memory modules are absent and keep their weights."""
    from transformers import Sam2Config, Sam2Model

    torch.manual_seed(0)
    hf = Sam2Model(Sam2Config()).eval()
    hf.save_pretrained(tmp_path / "sam2")
    model = build_model(ModelConfig(name="sam2.1_hiera_t", checkpoint=tmp_path / "sam2")).eval()
    x = torch.randn(1, 3, 1024, 1024, generator=torch.Generator().manual_seed(1))
    boxes = torch.tensor([[100.0, 200.0, 600.0, 700.0]])
    with torch.no_grad():
        theirs = hf(pixel_values=x, input_boxes=boxes[None], multimask_output=False)
        low, iou = model.decode(model.encode(x), 0, Prompts(boxes=boxes))
    assert torch.allclose(theirs.pred_masks[0], low, atol=1e-4)
    assert torch.allclose(theirs.iou_scores[0], iou, atol=1e-5)
