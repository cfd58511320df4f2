"""Checkpoint loading: official layouts round-trip, image-size adaptation, refusals, download."""
from __future__ import annotations

import time
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from samtune.config import ModelConfig
from samtune.models.checkpoints import (CheckpointError, download, file_sha256, load_checkpoint,
                                        read_state_dict)
from samtune.models.registry import MODELS, build_architecture, build_model
from tests.models.test_registry import upstream_model

# Real save + load in the official layout (the largest are covered on meta in test_registry);
# the 39–94 M-parameter ones take a few seconds each, so they are marked slow.
ROUND_TRIP = [pytest.param(n, marks=pytest.mark.slow) for n in
              ("sam_vit_b", "medsam_vit_b", "sam2_hiera_t", "sam2.1_hiera_t", "medsam2")] + \
    ["mobile_sam", "sam_tiny", "sam2_tiny"]


def official_state(name: str) -> dict[str, torch.Tensor]:
    """Random weights in the official key layout, from the upstream builder where one exists."""
    torch.manual_seed(0)
    model = build_architecture(name) if MODELS[name].checkpoint is None else upstream_model(name)
    return {k: v.clone() for k, v in model.state_dict().items()}


def save_official(name: str, state: dict[str, torch.Tensor], folder: Path) -> Path:
    path = folder / (MODELS[name].checkpoint or f"{name}.pt")
    # SAM2-family files hold {"model": state_dict}; SAM, MedSAM and MobileSAM the bare dict.
    torch.save({"model": state} if MODELS[name].family == "sam2" else state, path)
    return path


@pytest.fixture(scope="module")
def vit_b_1024(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, torch.Tensor], Path]:
    state = official_state("sam_vit_b")
    return state, save_official("sam_vit_b", state, tmp_path_factory.mktemp("vit_b"))


@pytest.mark.parametrize("name", ROUND_TRIP)
def test_official_layout_round_trips(name: str, tmp_path: Path,
                                     request: pytest.FixtureRequest) -> None:
    if name == "sam_vit_b":
        state, path = request.getfixturevalue("vit_b_1024")
    else:
        state = official_state(name)
        path = save_official(name, state, tmp_path)
    torch.manual_seed(1)
    fresh = build_architecture(name).state_dict()
    assert any(not torch.equal(fresh[k], v) for k, v in state.items())  # the test can fail
    model = build_model(ModelConfig(name=name, checkpoint=path.name, checkpoints_dir=path.parent))
    loaded = model.state_dict()
    assert loaded.keys() == state.keys()
    assert all(torch.equal(loaded[k], v) for k, v in state.items())


@pytest.mark.parametrize("size", [256, 512])
@pytest.mark.parametrize("name", ["sam_tiny", pytest.param("sam_vit_b", marks=pytest.mark.slow)])
def test_sam_1024_checkpoint_into_smaller_build(name: str, size: int, tmp_path: Path,
                                                request: pytest.FixtureRequest) -> None:
    """A 1024-trained SAM loads at 256/512: abs. and global rel. position embeddings resized."""
    from segment_anything.modeling.image_encoder import get_rel_pos

    if name == "sam_vit_b":
        state, path = request.getfixturevalue("vit_b_1024")
    else:  # sam_tiny's own builder at 1024: the same code path, 200× fewer weights
        state = build_architecture(name, 1024).state_dict()
        torch.save(state, path := tmp_path / "tiny_1024.pth")
    model = build_model(ModelConfig(name=name, img_size=size, checkpoint=path))
    enc = model.image_encoder
    dim, global_blocks = enc.pos_embed.shape[-1], [
        i for i, b in enumerate(enc.blocks) if b.window_size == 0]
    assert global_blocks == ([2, 5, 8, 11] if name == "sam_vit_b" else [1])
    grid = size // 16
    enc = model.image_encoder
    assert enc.pos_embed.shape == (1, grid, grid, dim)
    expected = F.interpolate(state["image_encoder.pos_embed"].permute(0, 3, 1, 2), (grid, grid),
                             mode="bicubic", align_corners=False).permute(0, 2, 3, 1)
    torch.testing.assert_close(enc.pos_embed.data, expected)
    for i, block in enumerate(enc.blocks):
        key = f"image_encoder.blocks.{i}.attn.rel_pos_h"
        if i in global_blocks:  # (2·grid − 1) rows, as get_rel_pos would resize at run time
            assert block.attn.rel_pos_h.shape == (2 * grid - 1, state[key].shape[1])
            assert state[key].shape[0] == 127
            torch.testing.assert_close(get_rel_pos(grid, grid, block.attn.rel_pos_h.data),
                                       get_rel_pos(grid, grid, state[key]))
        else:  # windowed: independent of the image size
            assert torch.equal(block.attn.rel_pos_h.data, state[key])
    assert torch.equal(model.mask_decoder.iou_token.weight.data,
                       state["mask_decoder.iou_token.weight"])
    with torch.no_grad():
        emb = model.encode(torch.randn(1, 3, size, size)).image
    assert emb.shape == (1, model.prompt_encoder.embed_dim, grid, grid)


@pytest.mark.slow
def test_sam2_checkpoint_needs_no_adaptation_at_256(tmp_path: Path) -> None:
    """Hiera interpolates its position embedding at run time: every tensor loads unchanged."""
    state = official_state("sam2.1_hiera_t")
    path = save_official("sam2.1_hiera_t", state, tmp_path)
    model = build_model(ModelConfig(name="sam2.1_hiera_t", img_size=256, checkpoint=path))
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
    with torch.no_grad():
        emb = model.encode(torch.randn(1, 3, 256, 256))
    assert emb.image.shape == (1, 256, 16, 16)
    assert [h.shape[-1] for h in emb.high_res] == [64, 32]


def test_wrong_architecture_lists_the_mismatch(tmp_path: Path) -> None:
    state = build_architecture("sam_tiny").state_dict()
    state["mask_decoder.iou_token.weight"] = torch.zeros(1, 32)
    torch.save(state, tmp_path / "tiny.pth")
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(build_architecture("sam_tiny"), tmp_path / "tiny.pth")
    assert "shape mismatch (1)" in str(err.value)
    assert "mask_decoder.iou_token.weight: checkpoint (1, 32), model (1, 64)" in str(err.value)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(build_architecture("sam2_tiny"), tmp_path / "tiny.pth")
    text = str(err.value)
    assert str(tmp_path / "tiny.pth") in text and "sam2 model" in text
    assert "missing from the checkpoint" in text and "unexpected in the checkpoint" in text
    assert "image_encoder.trunk.pos_embed" in text and "image_encoder.pos_embed" in text
    assert "… and" in text and len(text.splitlines()) < 40  # long lists are truncated


def test_common_wrappers_are_unwrapped(tmp_path: Path) -> None:
    state = build_architecture("sam_tiny").state_dict()
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 3},
               tmp_path / "ddp.pth")
    model = load_checkpoint(build_architecture("sam_tiny"), tmp_path / "ddp.pth")
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
    assert read_state_dict(tmp_path / "ddp.pth").keys() == {f"module.{k}" for k in state}


def test_truncated_file_is_named(tmp_path: Path) -> None:
    torch.save(build_architecture("sam_tiny").state_dict(), tmp_path / "full.pth")
    data = (tmp_path / "full.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"cut\.pth is truncated or corrupt"):
        load_checkpoint(build_architecture("sam_tiny"), tmp_path / "cut.pth")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(build_architecture("sam_tiny"), tmp_path / "absent.pth")


class Namespace:  # stands in for the argparse/config objects some training scripts pickle
    lr = 1e-4


def test_pickled_objects_are_refused(tmp_path: Path) -> None:
    torch.save({"model": build_architecture("sam_tiny").state_dict(), "args": Namespace()},
               tmp_path / "pickled.pth")
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(build_architecture("sam_tiny"), tmp_path / "pickled.pth")
    assert "pickled.pth holds pickled Python objects" in str(err.value)
    assert "Namespace" in str(err.value) and "weights_only=True" in str(err.value)


def test_sha256_mismatch_warns_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "tiny.pth"
    torch.save(build_architecture("sam_tiny").state_dict(), path)
    import hashlib

    assert file_sha256(path) == hashlib.sha256(path.read_bytes()).hexdigest()
    with pytest.warns(UserWarning, match=r"tiny\.pth: sha256 .* differs from the published 0{64}"):
        load_checkpoint(build_architecture("sam_tiny"), path, expected_sha256="0" * 64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_checkpoint(build_architecture("sam_tiny"), path, expected_sha256=file_sha256(path))


def test_download_offline_fails_fast_with_url_and_path(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    def offline(*args: object, **kwargs: object) -> None:
        raise socket.gaierror(-2, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", offline)
    start = time.perf_counter()
    with pytest.raises(CheckpointError) as err:
        download("sam_vit_b", tmp_path / "ckpts")
    assert time.perf_counter() - start < 6
    assert "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth" in str(err.value)
    assert str((tmp_path / "ckpts" / "sam_vit_b_01ec64.pth").resolve()) in str(err.value)
    assert not (tmp_path / "ckpts").exists() or not any((tmp_path / "ckpts").iterdir())


def test_download_edge_cases(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError,
                       match=r"no direct download URL .* put it at .*medsam_vit_b\.pth"):
        download("medsam_vit_b", tmp_path)
    with pytest.raises(CheckpointError, match="random weights only"):
        download("sam_tiny", tmp_path)
    (tmp_path / "mobile_sam.pt").write_bytes(b"present")
    assert download("mobile_sam", tmp_path) == (tmp_path / "mobile_sam.pt").resolve()
