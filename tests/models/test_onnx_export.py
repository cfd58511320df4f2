"""ONNX export: onnxruntime matches the torch model (plain and LoRA-merged), prompts as inputs,
unsupported families refused up front, files written atomically."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")

from samtune.config import ModelConfig  # noqa: E402
from samtune.models import onnx_export  # noqa: E402
from samtune.models.adapters import apply_method  # noqa: E402
from samtune.models.base import Prompts  # noqa: E402
from samtune.models.export import export_weights  # noqa: E402
from samtune.models.onnx_export import (check_onnx, export_onnx, run_onnx,  # noqa: E402
                                        torch_outputs)
from samtune.models.registry import build_architecture  # noqa: E402

SIZE = 64
BOXES = torch.tensor([[5.0, 10.0, 45.0, 50.0], [15.0, 15.0, 30.0, 35.0]])


def fresh(name: str = "sam_tiny") -> torch.nn.Module:
    torch.manual_seed(0)
    return build_architecture(name, SIZE).eval()


def image() -> torch.Tensor:
    return torch.randn(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))


def lora_model() -> torch.nn.Module:
    """LoRA on encoder qkv/MLP and decoder attention, moved off its zero init (as trained)."""
    model = apply_method(fresh(), ModelConfig(
        name="sam_tiny", method="lora",
        lora={"r": 4, "targets": ["encoder_qkv", "encoder_mlp", "decoder_attention"]}))
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.add_(0.1 * torch.randn(p.shape, generator=g))
    return model.eval()


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> tuple[torch.nn.Module, dict[str, Path]]:
    model = fresh()
    return model, export_onnx(model, tmp_path_factory.mktemp("plain"), check=False)


def assert_matches(model: torch.nn.Module, paths: dict[str, Path]) -> dict[str, np.ndarray]:
    """onnxruntime's outputs, checked against the torch model's."""
    got = run_onnx(paths, image(), BOXES)
    ref = {k: v.numpy() for k, v in torch_outputs(model, image(), BOXES).items()}
    assert got["masks"].shape == (2, 4, SIZE, SIZE)
    assert got["low_res_masks"].shape == (2, 4, SIZE // 4, SIZE // 4)
    np.testing.assert_allclose(got["low_res_masks"], ref["low_res_masks"], atol=1e-3)
    np.testing.assert_allclose(got["iou_predictions"], ref["iou_predictions"], atol=1e-3)
    assert 0.05 < (ref["masks"] > 0).mean() < 0.95  # a mask to compare, not all or nothing
    inter = ((got["masks"] > 0) & (ref["masks"] > 0)).sum()
    assert inter / ((got["masks"] > 0) | (ref["masks"] > 0)).sum() >= 0.999
    return got


def test_plain_model_matches_onnxruntime(plain) -> None:
    model, paths = plain
    assert sorted(p.name for p in paths["encoder"].parent.iterdir()) == \
        ["decoder.onnx", "encoder.onnx"]  # no temporary files left
    assert_matches(model, paths)
    assert check_onnx(model, paths, image(), BOXES) >= 0.999
    other = build_architecture("sam_tiny", SIZE).eval()  # other random weights
    assert check_onnx(other, paths, image(), BOXES) < 0.99  # the check can fail


def test_decoder_takes_prompts_as_upstream(plain) -> None:
    import onnxruntime as ort

    model, paths = plain
    decoder = ort.InferenceSession(str(paths["decoder"]), providers=["CPUExecutionProvider"])
    assert [i.name for i in decoder.get_inputs()] == list(onnx_export.DECODER_INPUTS)
    # a box plus a positive click inside it, as SamOnnxModel takes them: labels 2, 3, 1
    with torch.no_grad():
        emb = model.encode(image()).image.numpy()
    coords = np.array([[[5.0, 10.0], [45.0, 50.0], [25.0, 30.0]]], np.float32)
    feeds = {"image_embeddings": emb, "point_coords": coords,
             "point_labels": np.array([[2.0, 3.0, 1.0]], np.float32),
             "mask_input": np.zeros((1, 1, SIZE // 4, SIZE // 4), np.float32),
             "has_mask_input": np.zeros(1, np.float32),
             # masks come back at the original size: crop of the padded grid, then resize
             "orig_im_size": np.array([SIZE // 2, SIZE], np.float32)}
    masks, _iou, low_res = decoder.run(None, feeds)
    with torch.no_grad():
        ref, _ = model.decode(model.encode(image()), 0, Prompts(
            boxes=torch.tensor([[5.0, 10.0, 45.0, 50.0]]),
            points=torch.tensor([[[25.0, 30.0]]]), point_labels=torch.tensor([[1]])))
    np.testing.assert_allclose(low_res[:, :1], ref.numpy(), atol=1e-3)
    assert masks.shape == (1, 4, SIZE // 2, SIZE)
    np.testing.assert_allclose(masks[:, :1], model.upscale(ref)[..., :SIZE // 2, :].numpy(),
                               atol=1e-3)


def test_lora_model_exports_merged_and_matches(tmp_path: Path) -> None:
    model = lora_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    paths = export_weights(model, tmp_path, ["onnx"])
    assert set(paths) == {"onnx", "onnx_encoder"} and paths["onnx"].name == "decoder.onnx"
    merged = assert_matches(model, {"encoder": paths["onnx_encoder"], "decoder": paths["onnx"]})
    # the LoRA deltas are in the graph: the base model alone gives other masks
    assert not np.allclose(merged["low_res_masks"],
                           torch_outputs(fresh(), image(), BOXES)["low_res_masks"].numpy(),
                           atol=1e-3)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # unchanged


@pytest.mark.parametrize("name, what", [("sam2_tiny", "'sam2'"), ("hq_sam_tiny", "HQ-SAM")])
def test_unsupported_families_refused_before_writing(tmp_path: Path, name: str,
                                                     what: str) -> None:
    with pytest.raises(ValueError, match=f"supports SAM, MedSAM and MobileSAM.*not {what}"):
        export_weights(fresh(name), tmp_path / "out", ["full", "onnx"])
    assert not (tmp_path / "out").exists()


def test_failed_export_leaves_old_file_and_no_partial(tmp_path: Path, plain,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    model, _ = plain
    (tmp_path / "encoder.onnx").write_bytes(b"old")

    def broken(module, args, f, **kwargs) -> None:
        Path(f).write_bytes(b"partial")
        raise RuntimeError("exporter died")

    monkeypatch.setattr(torch.onnx, "export", broken)
    with pytest.raises(RuntimeError, match="exporter died"):
        export_onnx(model, tmp_path, check=False)
    assert [p.name for p in tmp_path.iterdir()] == ["encoder.onnx"]
    assert (tmp_path / "encoder.onnx").read_bytes() == b"old"


def test_large_graph_weights_go_to_one_data_file(tmp_path: Path, plain,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Over 2 GB the exporter writes one file per tensor; the export gathers them in one."""
    import onnx

    model, _ = plain
    real = torch.onnx.export

    def per_tensor_files(module, args, f, **kwargs) -> None:
        real(module, args, f, **kwargs)
        onnx.save_model(onnx.load(f), f, save_as_external_data=True,
                        all_tensors_to_one_file=False, size_threshold=0)

    monkeypatch.setattr(torch.onnx, "export", per_tensor_files)
    paths = export_onnx(model, tmp_path, check=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == \
        ["decoder.onnx", "decoder.onnx.data", "encoder.onnx", "encoder.onnx.data"]
    assert check_onnx(model, paths, image(), BOXES) >= 0.999
    monkeypatch.setattr(torch.onnx, "export", real)
    export_onnx(model, tmp_path, check=False)  # a smaller re-export drops the stale data files
    assert sorted(p.name for p in tmp_path.iterdir()) == ["decoder.onnx", "encoder.onnx"]
