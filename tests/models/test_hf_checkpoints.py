"""Hugging Face SamModel folders (save_pretrained) load into samtune's SAM architectures."""
from __future__ import annotations

import json

import pytest
import torch

from samtune.config import ModelConfig
from samtune.models.base import Prompts
from samtune.models.checkpoints import CheckpointError
from samtune.models.hf_architecture import matching_zoo_entries
from samtune.models.hf_checkpoints import (hf_sam2_to_official, hf_to_official, is_hf_folder,
                                           official_to_hf)
from samtune.models.registry import build_architecture, build_model

transformers = pytest.importorskip("transformers")


def randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Weights that make every tensor count: transformers initialises SAM's vision encoder at
    std 1e-10 (image embeddings ~1e-20, mask logits ~1e-4), under which a wrong encoder mapping
    would still pass atol 1e-4. Matrices ~ 1/sqrt(fan-in), vectors and position tables ~ 0.1,
    norm scales ~ 1. The two copies of the prompt Gaussian matrix stay equal, as in the published
    conversions (SamModel ties them; Sam2Model keeps two that must agree)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if p.ndim == 1 or "pos" in name.rsplit(".", 1)[-1]:
                norm_scale = p.ndim == 1 and "norm" in name and name.endswith("weight")
                p.copy_(0.1 * noise + float(norm_scale))
            else:
                p.copy_(noise / p[0].numel() ** 0.5)
        model.shared_image_embedding.positional_embedding.copy_(
            model.prompt_encoder.shared_embedding.positional_embedding)
    return model


def tiny_hf_sam(**vision_kw: object) -> torch.nn.Module:
    """A transformers SamModel with sam_tiny's widths (samtune.models.registry), randomised.
    Decoder LayerNorm eps 1e-5 as segment-anything's (HF's default 1e-6 alone moves the logits
    of these random weights by ~1e-4; the published weights were trained with 1e-5)."""
    from transformers import SamConfig, SamModel
    from transformers.models.sam.configuration_sam import (SamMaskDecoderConfig,
                                                           SamPromptEncoderConfig,
                                                           SamVisionConfig)

    vision = SamVisionConfig(**{"hidden_size": 64, "output_channels": 64, "num_hidden_layers": 2,
                                "num_attention_heads": 2, "global_attn_indexes": [1],
                                "window_size": 8, "image_size": 256, "patch_size": 16,
                                "mlp_dim": 256, "num_pos_feats": 32, **vision_kw})
    prompt = SamPromptEncoderConfig(hidden_size=64, image_size=256, patch_size=16,
                                    mask_input_channels=16)
    decoder = SamMaskDecoderConfig(hidden_size=64, mlp_dim=256, num_attention_heads=4,
                                   iou_head_hidden_dim=64, layer_norm_eps=1e-5)
    torch.manual_seed(0)
    return randomize(SamModel(SamConfig(vision_config=vision.to_dict(), prompt_encoder_config=prompt
                                        .to_dict(), mask_decoder_config=decoder.to_dict())).eval())


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
        assert low.std() > 0.1  # logits of order 1, so atol 1e-4 can tell a wrong mapping
        assert torch.allclose(theirs.pred_masks[0], low, atol=1e-4)
        assert torch.allclose(theirs.iou_scores[0], iou, atol=1e-5)
        block = model.image_encoder.blocks[0]  # the comparison can fail: swap two norms
        block.norm1.weight, block.norm2.weight = block.norm2.weight, block.norm1.weight
        swapped, _ = model.decode(model.encode(x), 0, Prompts(boxes=boxes), multimask=True)
        assert not torch.allclose(swapped, low, atol=1e-2)
        block.norm1.weight, block.norm2.weight = block.norm2.weight, block.norm1.weight
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

    hf = randomize(Sam2Model(Sam2Config()).eval())
    hf.save_pretrained(tmp_path / "sam2")
    model = build_model(ModelConfig(name="sam2.1_hiera_t", checkpoint=tmp_path / "sam2")).eval()
    x = torch.randn(1, 3, 1024, 1024, generator=torch.Generator().manual_seed(1))
    boxes = torch.tensor([[100.0, 200.0, 600.0, 700.0]])
    with torch.no_grad():
        theirs = hf(pixel_values=x, input_boxes=boxes[None], multimask_output=False)
        low, iou = model.decode(model.encode(x), 0, Prompts(boxes=boxes))
    assert low.std() > 0.1
    assert torch.allclose(theirs.pred_masks[0], low, atol=1e-4)
    assert torch.allclose(theirs.iou_scores[0], iou, atol=1e-5)


def tiny_hf_sam2() -> torch.nn.Module:
    """A transformers Sam2Model with sam2_tiny's numbers (samtune.models.sam2.TINY_OVERRIDES:
    Hiera 16 wide, stages 1-1-2-1, global attention in block 3, FPN and heads 64), randomised."""
    from transformers import Sam2Config, Sam2Model

    backbone = {"model_type": "sam2_hiera_det_model", "hidden_size": 16,
                "blocks_per_stage": [1, 1, 2, 1], "global_attention_blocks": [3],
                "embed_dim_per_stage": [16, 32, 64, 128],
                "num_attention_heads_per_stage": [1, 2, 4, 8], "image_size": [256, 256]}
    vision = {"backbone_config": backbone, "backbone_channel_list": [128, 64, 32, 16],
              "fpn_hidden_size": 64, "backbone_feature_sizes": [[64, 64], [32, 32], [16, 16]]}
    torch.manual_seed(0)
    return randomize(Sam2Model(Sam2Config(
        vision_config=vision, prompt_encoder_config={"hidden_size": 64, "image_size": 256},
        mask_decoder_config={"hidden_size": 64})).eval())


def test_a_tiny_sam2_folder_loads_into_sam2_tiny_and_gives_the_hf_models_outputs(tmp_path):
    hf = tiny_hf_sam2()
    hf.save_pretrained(tmp_path / "sam2-tiny")
    model = build_model(ModelConfig(name="sam2_tiny", checkpoint=tmp_path / "sam2-tiny")).eval()
    x = torch.randn(1, 3, 256, 256, generator=torch.Generator().manual_seed(1))
    boxes = torch.tensor([[30.0, 40.0, 150.0, 200.0], [100.0, 20.0, 240.0, 90.0]])
    with torch.no_grad():
        for multimask in (False, True):  # False: both pick by stability as sam2 does
            theirs = hf(pixel_values=x, input_boxes=boxes[None], multimask_output=multimask)
            low, iou = model.decode(model.encode(x), 0, Prompts(boxes=boxes), multimask=multimask)
            assert low.std() > 0.1
            assert torch.allclose(theirs.pred_masks[0], low, atol=1e-4)
            assert torch.allclose(theirs.iou_scores[0], iou, atol=1e-5)
    # Sam2Model keeps the image-wide and the prompt Gaussian matrix apart; sam2 has one
    with torch.no_grad():
        hf.shared_image_embedding.positional_embedding.mul_(2)
    hf.save_pretrained(tmp_path / "drifted")
    with pytest.raises(CheckpointError, match="positional embedding differ"):
        build_model(ModelConfig(name="sam2_tiny", checkpoint=tmp_path / "drifted"))


@pytest.mark.parametrize("name, sam21", [("sam2.1_hiera_t", True), ("sam2_hiera_t", False)])
def test_the_published_sam2_video_layout_maps_onto_hiera_t(name, sam21):
    """facebook/sam2.1-hiera-tiny and facebook/sam2-hiera-tiny are published as Sam2VideoModel
    (model_type sam2_video; transformers' default Sam2VideoConfig, SAM2.0 without the temporal
    object-pointer projection and occlusion embedding): every tensor, the video memory's
    included, maps onto the zoo entry's (built on meta)."""
    from transformers import Sam2VideoConfig, Sam2VideoModel

    from samtune.models.registry import meta_device

    config = Sam2VideoConfig(enable_temporal_pos_encoding_for_object_pointers=sam21,
                             enable_occlusion_spatial_embedding=sam21)
    with meta_device():
        hf = Sam2VideoModel(config).state_dict()
    ours = build_architecture(name, meta=True).state_dict()
    assert {k: v.shape for k, v in hf_sam2_to_official(hf).items()} == \
        {k: v.shape for k, v in ours.items()}


@pytest.mark.slow
def test_a_sam2_video_folder_loads_with_its_video_memory(tmp_path, caplog):
    from transformers import Sam2VideoConfig, Sam2VideoModel

    torch.manual_seed(0)
    hf = Sam2VideoModel(Sam2VideoConfig()).eval()
    with torch.no_grad():  # equal copies, as transformers' conversion writes them
        hf.shared_image_embedding.positional_embedding.copy_(
            hf.prompt_encoder.shared_embedding.positional_embedding)
    hf.save_pretrained(tmp_path / "sam2.1-hiera-tiny")
    model = build_model(ModelConfig(name="sam2.1_hiera_t",
                                    checkpoint=tmp_path / "sam2.1-hiera-tiny"))
    assert "video-memory" not in caplog.text  # nothing kept from the random initialisation
    pairs = {"maskmem_tpos_enc": hf.memory_temporal_positional_encoding,
             "obj_ptr_proj.layers.1.weight": hf.object_pointer_proj.layers[0].weight,
             "memory_encoder.mask_downsampler.encoder.12.weight":
                 hf.memory_encoder.mask_downsampler.final_conv.weight,
             "memory_encoder.fuser.layers.1.gamma": hf.memory_encoder.memory_fuser.layers[1].scale,
             "sam_prompt_encoder.point_embeddings.3.weight":
                 hf.prompt_encoder.point_embed.weight[3:]}
    ours = model.state_dict()
    assert all(torch.equal(ours[k], v) for k, v in pairs.items())


def test_the_default_configs_name_their_zoo_entries():
    from transformers import Sam2Config, SamConfig

    assert matching_zoo_entries(SamConfig().to_dict()) == ["sam_vit_b", "medsam_vit_b"]
    huge = {"hidden_size": 1280, "num_hidden_layers": 32, "num_attention_heads": 16,
            "global_attn_indexes": [7, 15, 23, 31]}
    assert matching_zoo_entries(SamConfig(vision_config=huge).to_dict()) == ["sam_vit_h"]
    assert matching_zoo_entries(Sam2Config().to_dict()) == \
        ["sam2_hiera_t", "sam2.1_hiera_t", "medsam2"]


def test_a_folder_of_another_architecture_says_which_model_name_fits(tmp_path):
    # 4 heads instead of sam_tiny's 2: every tensor has the same shape, only config.json tells
    tiny_hf_sam(num_attention_heads=4).save_pretrained(tmp_path / "heads4")
    with pytest.raises(CheckpointError, match=r"heads 4 \(model: 2\).*no zoo entry"):
        build_model(ModelConfig(name="sam_tiny", checkpoint=tmp_path / "heads4"))
    tiny_hf_sam().save_pretrained(tmp_path / "sam")
    with pytest.raises(CheckpointError, match=r"a sam folder, a sam2 model\); set model.name to "
                                              "sam_tiny"):
        build_model(ModelConfig(name="sam2_tiny", checkpoint=tmp_path / "sam"))
