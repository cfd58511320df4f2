"""Model zoo: names, sizes, parameter counts, and the official key layout of every entry."""
from __future__ import annotations

import os
import time
import warnings

import pytest
import torch

from samtune.config import ModelConfig
from samtune.models.base import PromptableModel
from samtune.models.registry import (MODELS, build_architecture, build_model, get_spec,
                                     list_models, meta_device)

SAM_UPSTREAM = {"sam_vit_b": "build_sam_vit_b", "sam_vit_l": "build_sam_vit_l",
                "sam_vit_h": "build_sam_vit_h", "medsam_vit_b": "build_sam_vit_b"}
SAM2_UPSTREAM = {
    "sam2_hiera_t": "configs/sam2/sam2_hiera_t.yaml",
    "sam2_hiera_s": "configs/sam2/sam2_hiera_s.yaml",
    "sam2_hiera_b+": "configs/sam2/sam2_hiera_b+.yaml",
    "sam2_hiera_l": "configs/sam2/sam2_hiera_l.yaml",
    "sam2.1_hiera_t": "configs/sam2.1/sam2.1_hiera_t.yaml",
    "sam2.1_hiera_s": "configs/sam2.1/sam2.1_hiera_s.yaml",
    "sam2.1_hiera_b+": "configs/sam2.1/sam2.1_hiera_b+.yaml",
    "sam2.1_hiera_l": "configs/sam2.1/sam2.1_hiera_l.yaml",
    "medsam2": "configs/sam2.1/sam2.1_hiera_t.yaml",
}
OFFICIAL = [n for n, s in MODELS.items() if s.checkpoint]


MED3D_UPSTREAM = ("sam_med3d", "sam_med3d_turbo")  # medim's build_sam3D_vit_b_ori
HQ_UPSTREAM = {"hq_sam_vit_b": "vit_b", "hq_sam_vit_l": "vit_l", "hq_sam_vit_h": "vit_h",
               "hq_sam_vit_tiny": "vit_tiny"}


def upstream_model(name: str) -> torch.nn.Module:
    """The model the upstream package's own builder makes for `name` (on the current device)."""
    if name in MED3D_UPSTREAM:
        from medim.models.sam_med3d import build_sam3D_vit_b_ori

        return build_sam3D_vit_b_ori()
    if name in HQ_UPSTREAM:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from segment_anything_hq import sam_model_registry

        return sam_model_registry[HQ_UPSTREAM[name]]()
    if name in SAM_UPSTREAM:
        import segment_anything

        return getattr(segment_anything, SAM_UPSTREAM[name])()
    if name == "mobile_sam":
        with warnings.catch_warnings():  # mobile_sam re-registers timm models on import
            warnings.simplefilter("ignore")
            from mobile_sam import build_sam_vit_t

        return build_sam_vit_t()
    from sam2.build_sam import build_sam2

    device = "meta" if torch.get_default_device().type == "meta" else "cpu"
    return build_sam2(SAM2_UPSTREAM[name], None, device=device)


def shapes(module: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def test_every_official_entry_has_an_upstream_reference() -> None:
    assert sorted(OFFICIAL) == sorted([*SAM_UPSTREAM, "mobile_sam", *SAM2_UPSTREAM,
                                       *HQ_UPSTREAM, *MED3D_UPSTREAM])
    assert {"sam_tiny", "sam2_tiny"} <= set(MODELS)


@pytest.mark.parametrize("name", OFFICIAL)
def test_state_dict_layout_equals_upstream_builder(name: str) -> None:
    """Keys and shapes equal those of the upstream builder's model, so official files load."""
    with meta_device():
        ours, theirs = build_architecture(name), upstream_model(name)
    assert shapes(ours) == shapes(theirs)


def test_unknown_name_lists_valid_names() -> None:
    with pytest.raises(ValueError, match="unknown model 'sam_vit_x'") as err:
        get_spec("sam_vit_x")
    for name in ("sam_vit_b", "sam2.1_hiera_t", "medsam2", "sam_tiny"):
        assert name in str(err.value)
    with pytest.raises(ValueError, match="valid models"):
        build_model(ModelConfig(name="nope"))


@pytest.mark.parametrize(("name", "size", "multiple"),
                         [("sam_tiny", 250, 16), ("sam2_tiny", 272, 32)])
def test_img_size_must_be_a_multiple_of_the_patch(name: str, size: int, multiple: int) -> None:
    with pytest.raises(ValueError, match=f"img_size {size} must be a positive multiple of "
                                         f"{multiple}"):
        build_model(ModelConfig(name=name, img_size=size))


def test_build_model_uses_default_or_configured_size() -> None:
    assert build_model(ModelConfig(name="sam_tiny")).img_size == 256
    model = build_model(ModelConfig(name="sam_tiny", img_size=128))
    assert isinstance(model, PromptableModel) and model.img_size == 128
    assert model.image_encoder.pos_embed.shape == (1, 8, 8, 64)
    assert model.prompt_encoder.image_embedding_size == (8, 8)
    assert build_model(ModelConfig(name="sam2_tiny", img_size=512)).sam_prompt_encoder \
        .input_image_size == (512, 512)


def test_list_models_rows() -> None:
    rows = {r["name"]: r for r in list_models()}
    assert set(rows) == set(MODELS)
    # Published sizes: SAM ViT-B/L/H 94/312/641 M with heads, SAM2 Hiera-T 39 M, MobileSAM 10 M.
    assert rows["sam_vit_b"]["params"] == 93_735_472
    assert rows["sam_vit_h"]["params"] == 641_090_608
    assert 38e6 < rows["sam2.1_hiera_t"]["params"] < 40e6
    assert 9e6 < rows["mobile_sam"]["params"] < 11e6
    assert rows["sam_tiny"]["params"] < 2e6 and rows["sam2_tiny"]["params"] < 2e6
    assert rows["sam_vit_h"]["checkpoint"] == "sam_vit_h_4b8939.pth"
    assert rows["sam_vit_h"]["url"].endswith("/segment_anything/sam_vit_h_4b8939.pth")
    assert rows["sam2.1_hiera_b+"]["checkpoint"] == "sam2.1_hiera_base_plus.pt"
    assert rows["medsam2"]["checkpoint"] == "MedSAM2_latest.pt"
    assert rows["sam_tiny"]["img_size"] == 256 and rows["sam2_tiny"]["patch_size"] == 32
    assert all(r["sha256"] is None or len(r["sha256"]) == 64 for r in rows.values())


def test_meta_build_allocates_nothing() -> None:
    start = time.perf_counter()
    model = build_architecture("sam_vit_h", meta=True)
    assert time.perf_counter() - start < 10
    assert all(p.is_meta for p in model.parameters())


@pytest.mark.parametrize("name", ["sam_tiny", "sam2_tiny"])
def test_tiny_models_are_small_and_fast(name: str) -> None:
    """Well under a second for 4 images at 256 px on 2 cores (best of 3: CI machines are shared)."""
    model = build_architecture(name).eval()
    assert sum(p.numel() for p in model.parameters()) < 2_000_000
    images = torch.randn(4, 3, 256, 256)
    timings = []
    with torch.no_grad():
        model.encode(images)  # warm-up
        for _ in range(3):
            start = time.perf_counter()
            emb = model.encode(images)
            timings.append(time.perf_counter() - start)
    assert emb.image.shape == (4, 64, 16, 16)
    load, cores = os.getloadavg()[0], os.cpu_count() or 1
    if min(timings) >= 1.0 and load > cores:
        pytest.skip(f"machine busy (load {load:.1f} on {cores} cores): timing is meaningless")
    assert min(timings) < 1.0
