"""Inference on 2D pictures: a box model gives back the exact box in the picture's pixels, the
overlay blends at infer.overlay_opacity exactly, sam_tiny runs automatic and point prompts on a
folder (one output per picture), and bad input fails with the file named."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pydantic import ValidationError

from samtune.config import ConvertConfig, InferConfig, ModelConfig
from samtune.data.cases import DataError, LayoutError
from samtune.figures import PALETTE
from samtune.inference.infer import InferenceError
from samtune.inference.model_source import LoadedModel, load_model
from samtune.inference.picture_prompts import PicturePrompt, to_grid_prompt
from samtune.inference.pictures import find_pictures, infer_pictures, is_picture_input
from samtune.inference.prompts_file import PromptsFileError
from tests.inference.test_infer import BoxModel

H, W = 40, 56  # rows × columns of the synthetic picture
CONVERT = ConvertConfig(img_size=64, channels=3)


def _picture(path: Path, seed: int = 0, size: tuple[int, int] = (H, W)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 120, (*size, 3), dtype=np.uint8)
    pixels[10:25, 20:40] += 120  # a bright block
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return pixels


def _box_model() -> LoadedModel:
    return LoadedModel(BoxModel(), None, "sam", torch.device("cpu"), "box model", ModelConfig())


def _read(path: str) -> np.ndarray:
    return np.asarray(Image.open(path))


def _prompts(tmp: Path, rows: list[dict]) -> Path:
    (tmp / "prompts.json").write_text(json.dumps(rows))
    return tmp / "prompts.json"


def test_boxes_give_exact_masks_and_the_overlay_blends_at_the_opacity(tmp_path: Path) -> None:
    pixels = _picture(tmp_path / "in" / "knee.png")
    path = _prompts(tmp_path, [{"image": "knee.png", "label": 2, "box": [5, 6, 20, 30]},
                               {"image": "knee", "label": 1, "box": [30, 2, 50, 8]}])
    cfg = InferConfig(input=tmp_path / "in", mode="prompts", prompts_file=path,
                      overlay_opacity=0.3)
    found = find_pictures(cfg.input)
    summary = infer_pictures(_box_model(), found, cfg, CONVERT, tmp_path / "out")
    entry = summary["pictures"]["knee"]
    mask = _read(entry["mask"])
    expect = np.zeros((H, W), np.uint8)
    expect[6:31, 5:21], expect[2:9, 30:51] = 2, 1
    assert mask.shape == (H, W) and np.array_equal(mask, expect)
    assert entry["pixels"] == {"1": 7 * 21, "2": 25 * 16} and entry["size"] == [W, H]
    over = _read(entry["overlay"])
    assert over.shape == (H, W, 3)
    blended = np.rint(0.7 * pixels[10, 8].astype(float) + 0.3 * PALETTE[1]).astype(np.uint8)
    assert np.array_equal(over[10, 8], blended)  # class 2 pixel, PALETTE[2 - 1]
    assert np.array_equal(over[35, 50], pixels[35, 50])  # background keeps the picture
    assert json.loads((tmp_path / "out" / "inference.json").read_text())["done"] == 1


def test_grid_prompts_scale_with_the_picture() -> None:
    p = PicturePrompt("x", 1, (10, 20, 29, 39), ((0, 0), (99, 49)), (1, 0), row=1)
    box, points, labels = to_grid_prompt(p, (100, 50), (25, 50))  # shrunk ×0.5
    assert box.tolist() == [5.0, 10.0, 15.0, 20.0]
    assert points.tolist() == [[-0.25, -0.25], [49.25, 24.25]] and labels.tolist() == [1, 0]


def test_sam_tiny_on_a_folder_writes_one_output_per_picture(tmp_path: Path) -> None:
    torch.manual_seed(0)
    folder = tmp_path / "in"
    _picture(folder / "a.png", 0)
    _picture(folder / "b.jpg", 1, size=(90, 30))  # taller than the slice grid: shrunk
    (folder / "notes.txt").write_text("not a picture")
    assert is_picture_input(folder)
    loaded = load_model(ModelConfig(name="sam_tiny", img_size=64), device="cpu")
    cfg = InferConfig(input=folder, points_per_side=2, pred_iou_thresh=0.0,
                      stability_score_thresh=0.0, max_mask_fraction=1.0, automatic_label=3)
    summary = infer_pictures(loaded, find_pictures(folder), cfg, CONVERT, tmp_path / "out")
    assert summary["done"] == 2 and sorted(summary["pictures"]) == ["a", "b"]
    assert summary["skipped_files"] == {str(folder / "notes.txt"): "not a picture (.png, .jpg, "
                                                                   ".jpeg)"}
    for stem, (h, w) in (("a", (H, W)), ("b", (90, 30))):
        mask = _read(summary["pictures"][stem]["mask"])
        assert mask.shape == (h, w) and set(np.unique(mask)) <= {0, 3}
        assert _read(summary["pictures"][stem]["overlay"]).shape == (h, w, 3)
    points = _prompts(tmp_path, [{"image": "a", "label": 1, "points": [[30, 15]]},
                                 {"image": "a", "label": 2, "points": [[5, 5], [6, 30]],
                                  "point_labels": [1, 0], "box": [0, 0, 10, 35]}])
    prompted = infer_pictures(loaded, find_pictures(folder), cfg.model_copy(
        update={"mode": "prompts", "prompts_file": points}), CONVERT, tmp_path / "p")
    assert prompted["done"] == 1 and prompted["pictures"]["b"]["skipped"].startswith("no prom")
    assert _read(prompted["pictures"]["a"]["mask"]).shape == (H, W)


def test_bad_inputs_name_the_file(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    assert is_picture_input(tmp_path / "notes.txt")
    with pytest.raises(DataError, match="notes.txt: not a picture"):
        find_pictures(tmp_path / "notes.txt")
    with pytest.raises(DataError, match="missing.png: infer.input does not exist"):
        find_pictures(tmp_path / "missing.png")
    _picture(tmp_path / "dup" / "x.png")
    _picture(tmp_path / "dup" / "x.jpg")
    with pytest.raises(LayoutError, match="duplicate picture 'x'"):
        find_pictures(tmp_path / "dup")
    (tmp_path / "vols").mkdir()
    (tmp_path / "vols" / "a.nii.gz").write_bytes(b"")
    assert not is_picture_input(tmp_path / "vols") and not is_picture_input(None)
    with pytest.raises(ValidationError, match="overlay_opacity"):
        InferConfig(overlay_opacity=1.5)


def test_broken_pictures_and_bad_prompts(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    _picture(folder / "good.png")
    (folder / "broken.png").write_bytes(b"not a png")
    cfg = InferConfig(input=folder, mode="prompts", prompts_file=_prompts(tmp_path, [
        {"image": "good", "label": 1, "box": [0, 0, 4, 4]},
        {"image": "broken", "label": 1, "box": [0, 0, 4, 4]}]))
    summary = infer_pictures(_box_model(), find_pictures(folder), cfg, CONVERT, tmp_path / "o")
    assert summary["done"] == 1 and "broken.png" in summary["pictures"]["broken"]["error"]
    for row, problem in [({"image": "good", "label": 1, "box": [0, 0, W, 4]}, "outside the pic"),
                         ({"image": "nope", "label": 1, "box": [0, 0, 1, 1]}, "unknown image"),
                         ({"image": "good", "label": 1}, "needs a box, points or both"),
                         ({"image": "good", "label": 0, "box": [0, 0, 1, 1]}, "label must")]:
        bad = cfg.model_copy(update={"prompts_file": _prompts(tmp_path, [row])})
        with pytest.raises(PromptsFileError, match=f"row 1: .*{problem}"):
            infer_pictures(_box_model(), find_pictures(folder), bad, CONVERT, tmp_path / "x")
    (folder / "good.png").unlink()
    with pytest.raises(InferenceError, match="every picture failed"):
        infer_pictures(_box_model(), find_pictures(folder), cfg.model_copy(
            update={"mode": "automatic"}), CONVERT, tmp_path / "y")


def test_the_infer_step_takes_a_picture(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from steps import infer_volumes as step_module

    torch.manual_seed(0)
    monkeypatch.setattr(step_module, "log_metadata", lambda metadata: None)
    _picture(tmp_path / "knee.png")
    inference = InferConfig(input=tmp_path / "knee.png", points_per_side=2, pred_iou_thresh=0.0,
                            stability_score_thresh=0.0).model_dump(mode="json")
    summary = step_module.infer_volumes.entrypoint(
        inference=inference, data={"layout": "folder"}, convert=CONVERT.model_dump(mode="json"),
        model_config={"name": "sam_tiny", "img_size": 64}, model_uri=None,
        output_dir=str(tmp_path / "out"))
    assert summary["input"] == "pictures" and summary["done"] == 1
    assert _read(summary["pictures"]["knee"]["mask"]).shape == (H, W)
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match="notes.txt: not a picture"):
        step_module.infer_volumes.entrypoint(
            inference={**inference, "input": str(tmp_path / "notes.txt")},
            data={"layout": "folder"}, convert=CONVERT.model_dump(mode="json"),
            model_config={"name": "sam_tiny", "img_size": 64}, model_uri=None,
            output_dir=str(tmp_path / "out2"))
