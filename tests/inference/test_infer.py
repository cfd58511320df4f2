"""Inference on unlabelled volumes: prompts-file boxes map exactly to the slice grid, a box model
gives back exact prisms, sam_tiny runs both modes, bad prompts fail before any prediction, and a
broken volume is reported while the others are done."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from nibabel.orientations import io_orientation

from samtune.config import ConvertConfig, InferConfig, ModelConfig
from samtune.data.cases import Case
from samtune.data.io import load_volume, read_image
from samtune.data.io_formats import write_volume
from samtune.data.render import SliceGrid
from samtune.data.slicing import mask_to_original
from samtune.inference.automatic import slice_masks
from samtune.inference.infer import InferenceError, infer_volumes, output_path
from samtune.inference.model_source import LoadedModel, load_model
from samtune.inference.predictor import SlicePredictor
from samtune.inference.prompts_file import (
    BoxPrompt,
    PromptsFileError,
    box_on_grid,
    convert_axis_for,
    read_prompts,
)
from samtune.models.base import Embeddings, PromptableModel, Prompts


def _rotation(theta: float) -> np.ndarray:
    c, s = np.cos(theta), np.sin(theta)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]])


OBLIQUE = np.eye(4)
OBLIQUE[:3, :3] = _rotation(0.4) @ _rotation(0.3).T[[2, 0, 1]] @ np.diag([0.8, 0.9, 1.5])
OBLIQUE[:3, 3] = [10.0, -5.0, 3.0]
NEGATIVE = np.diag([-0.6, 0.8, -1.2, 1.0])
SHAPE = (24, 20, 12)
CONVERT = ConvertConfig(img_size=64, intensity="window", window_level=300, window_width=800,
                        channels=3, min_component_area=0)


def _case(tmp: Path, name: str, affine: np.ndarray, ext: str, shape=SHAPE) -> Case:
    rng = np.random.default_rng(len(name))
    i, j, k = np.indices(shape)
    ball = ((i - shape[0] / 2) ** 2 + (j - shape[1] / 2) ** 2 + (k - shape[2] / 2) ** 2) < 25
    write_volume(tmp / f"{name}{ext}", (rng.normal(0, 20, shape) + 300 * ball).astype(np.int16),
                 affine)
    return Case(name, name, (str(tmp / f"{name}{ext}"),))


class BoxModel(PromptableModel):
    """Answers a box with exactly that box (logits ±10 on its S×S input grid) and a point with
    three masks: the pixels within 2 of it (IoU 0.95), the whole image (0.99) and an unstable
    smaller square (logits ±0.5, IoU 0.9)."""

    family = "sam"

    def __init__(self, img_size: int = 64):
        super().__init__(img_size, (0.0,) * 3, (1.0,) * 3)
        self.encoded = 0

    def encode(self, images: torch.Tensor) -> Embeddings:
        self.encoded += len(images)
        return Embeddings(images.new_zeros(len(images), 1, 1, 1))

    def decode(self, emb, b, prompts: Prompts, multimask=False):  # type: ignore[no-untyped-def]
        s = self.img_size
        yy, xx = torch.meshgrid(torch.arange(s) + 0.5, torch.arange(s) + 0.5, indexing="ij")
        if prompts.boxes is not None:
            x0, y0, x1, y1 = (prompts.boxes[:, i, None, None] for i in range(4))
            inside = (xx >= x0) & (xx < x1) & (yy >= y0) & (yy < y1)
            return (inside.float() * 20 - 10)[:, None], torch.ones(len(inside), 1)
        px, py = prompts.points[:, 0, 0, None, None], prompts.points[:, 0, 1, None, None]
        near = (xx - px).abs(), (yy - py).abs()
        square = ((near[0] <= 2) & (near[1] <= 2)).float() * 20 - 10
        shaky = ((near[0] <= 1) & (near[1] <= 1)).float() - 0.5
        logits = torch.stack([square, torch.full_like(square, 10.0), shaky], 1)
        return logits, torch.tensor([0.95, 0.99, 0.9]).repeat(len(square), 1)


def _box_model() -> LoadedModel:
    return LoadedModel(BoxModel(), None, "sam", torch.device("cpu"), "box model", ModelConfig())


@pytest.mark.parametrize("kind,ext", [("oblique", ".nii.gz"), ("negative", ".nii.gz"),
                                      ("oblique", ".nrrd")])
@pytest.mark.parametrize("axis", [0, 1, 2])
def test_box_maps_exactly_to_the_slice_grid(tmp_path: Path, kind: str, ext: str,
                                            axis: int) -> None:
    vol = load_volume(_case(tmp_path, "b", OBLIQUE if kind == "oblique" else NEGATIVE, ext))
    a, b = (x for x in range(3) if x != axis)
    p = BoxPrompt("b", axis, 3, 1, (2, 5, 9, 7), row=1)
    cfg = CONVERT.model_copy(update={"axis": convert_axis_for(io_orientation(vol.affine), axis)})
    grid = SliceGrid.build(vol, cfg)
    k, mask, box = box_on_grid(p, grid)
    back, index = mask_to_original(mask, grid.transform(k))
    plane = np.zeros((SHAPE[a], SHAPE[b]), bool)
    plane[2:10, 5:8] = True
    assert index[axis] == 3 and np.array_equal(back, plane)
    x0, y0, x1, y1 = box.astype(int)
    assert mask[y0:y1, x0:x1].all() and mask.sum() == (x1 - x0) * (y1 - y0)


def test_a_sub_pixel_box_still_prompts(tmp_path: Path) -> None:
    vol = load_volume(_case(tmp_path, "t", NEGATIVE, ".nii.gz", shape=(60, 60, 8)))
    grid = SliceGrid.build(vol, CONVERT.model_copy(update={"img_size": 16}))
    _, _, box = box_on_grid(BoxPrompt("t", 2, 4, 1, (30, 30, 30, 30), row=1), grid)
    assert box[2] > box[0] and box[3] > box[1]


def _prompts(tmp: Path, rows: list[dict], name: str = "prompts.json") -> Path:
    (tmp / name).write_text(json.dumps(rows))
    return tmp / name


def test_prompts_give_exact_prisms_with_a_box_model(tmp_path: Path) -> None:
    cases = [_case(tmp_path, "a", OBLIQUE, ".nii.gz"), _case(tmp_path, "n", NEGATIVE, ".nrrd")]
    path = _prompts(tmp_path, [
        {"case_id": "a", "axis": "k", "slice": 6, "label": 1, "box": [2, 3, 6, 8]},
        {"case_id": "a", "axis": "k", "slice": 6, "label": 2, "box": [12, 10, 20, 15]},
        {"case_id": "n", "axis": "j", "slice": 4, "label": 3, "box": [5, 2, 9, 4]}])
    cfg = InferConfig(mode="prompts", prompts_file=path, propagate_margin=0, overlays=2)
    summary = infer_volumes(_box_model(), cases, CONVERT, cfg, tmp_path / "out")
    expect_a = np.zeros(SHAPE, np.uint8)
    expect_a[2:7, 3:9, :], expect_a[12:21, 10:16, :] = 1, 2
    expect_n = np.zeros(SHAPE, np.uint8)
    expect_n[5:10, :, 2:5] = 3
    for case, expect in zip(cases, (expect_a, expect_n)):
        array, affine, _ = read_image(output_path(tmp_path / "out", case))
        assert np.array_equal(array, expect)
        assert np.allclose(affine, read_image(case.image_paths[0])[1], atol=1e-6)
    a = summary["cases"]["a"]
    assert a["voxels"] == {"1": 5 * 6 * 12, "2": 9 * 6 * 12} and a["slices_predicted"] == 12
    assert a["volume_ml"]["1"] == pytest.approx(
        360 * abs(np.linalg.det(OBLIQUE[:3, :3])) / 1e3, rel=1e-4)
    assert len(a["overlays"]) == 2 and all(Path(p).is_file() for p in a["overlays"])
    assert output_path(tmp_path / "out", cases[1]).name == "n.nrrd"
    assert json.loads((tmp_path / "out" / "inference.json").read_text())["done"] == 2


def test_csv_prompts_equal_json(tmp_path: Path) -> None:
    (tmp_path / "p.csv").write_text("case_id,axis,slice,label,a0,b0,a1,b1\nx,K,3,2,1,2,3,4\n")
    js = _prompts(tmp_path, [{"case_id": "x", "axis": "k", "slice": 3, "label": 2,
                              "box": [1, 2, 3, 4]}])
    assert read_prompts(tmp_path / "p.csv") == read_prompts(js)


@pytest.mark.parametrize("row,problem", [
    ({"case_id": "nope", "axis": "k", "slice": 1, "label": 1, "box": [0, 0, 1, 1]}, "unknown case"),
    ({"case_id": "a", "axis": "k", "slice": 12, "label": 1, "box": [0, 0, 1, 1]}, "slice 12 is"),
    ({"case_id": "a", "axis": "i", "slice": 2, "label": 1, "box": [0, 0, 20, 1]}, "outside the sl"),
    ({"case_id": "a", "axis": "k", "slice": 2, "label": 1, "box": [5, 0, 1, 1]}, "inverted"),
    ({"case_id": "a", "axis": "x", "slice": 2, "label": 1, "box": [0, 0, 1, 1]}, "axis must"),
    ({"case_id": "a", "axis": "k", "slice": 2, "label": 0, "box": [0, 0, 1, 1]}, "label must"),
    ({"case_id": "a", "axis": "k", "slice": 2.5, "label": 1, "box": [0, 0, 1, 1]}, "integer"),
    ({"case_id": "a", "axis": "k", "label": 1, "box": [0, 0, 1, 1]}, "missing field(s) slice"),
])
def test_bad_prompts_fail_before_any_prediction(tmp_path: Path, row: dict, problem: str) -> None:
    cases = [_case(tmp_path, "a", OBLIQUE, ".nii.gz")]
    good = {"case_id": "a", "axis": "k", "slice": 1, "label": 1, "box": [0, 0, 1, 1]}
    path = _prompts(tmp_path, [good, row])
    loaded = _box_model()
    with pytest.raises(PromptsFileError, match="row 2: ") as err:
        infer_volumes(loaded, cases, CONVERT, InferConfig(mode="prompts", prompts_file=path),
                      tmp_path / "out")
    assert str(path) in str(err.value) and problem in str(err.value)
    assert loaded.model.encoded == 0 and not (tmp_path / "out").exists()


def test_automatic_mask_filters() -> None:
    predictor = SlicePredictor(BoxModel().eval(), 64)
    emb = predictor.encode(np.zeros((1, 64, 64, 3), np.uint8))
    cfg = InferConfig(points_per_side=2, points_per_batch=3)
    data = slice_masks(predictor, emb, 0, (64, 40), cfg)  # content 64 rows × 40 columns
    boxes = data["boxes"].tolist()  # grid points at x 10, 30 and y 16, 48: 4×4 squares only
    assert sorted(boxes) == [[8, 14, 11, 17], [8, 46, 11, 49], [28, 14, 31, 17], [28, 46, 31, 49]]
    loose = slice_masks(predictor, emb, 0, (64, 40), cfg.model_copy(
        update={"max_mask_fraction": 1.0, "box_nms_thresh": 0.99}))
    assert [0, 0, 39, 63] in loose["boxes"].tolist()  # the whole image (padding excluded)
    assert len(loose["rles"]) == 5  # the unstable masks never pass


def test_automatic_with_sam_tiny_encodes_each_slice_once(tmp_path: Path) -> None:
    torch.manual_seed(0)
    cases = [_case(tmp_path, "s", NEGATIVE, ".nii.gz")]
    loaded = load_model(ModelConfig(name="sam_tiny", img_size=64), device="cpu")
    seen = []
    encode = loaded.model.encode
    loaded.model.encode = lambda x: seen.append(len(x)) or encode(x)  # type: ignore[method-assign]
    cfg = InferConfig(points_per_side=3, batch_size=5, pred_iou_thresh=0.0,
                      stability_score_thresh=0.0, max_mask_fraction=1.0, automatic_label=7)
    summary = infer_volumes(loaded, cases, CONVERT, cfg, tmp_path / "out")
    assert seen == [5, 5, 2] and summary["cases"]["s"]["slices_predicted"] == 12
    array, affine, _ = read_image(output_path(tmp_path / "out", cases[0]))
    assert array.shape == SHAPE and set(np.unique(array)) <= {0, 7}
    assert (array == 7).any()  # thresholds at 0: some masks are kept
    assert np.allclose(affine, NEGATIVE, atol=1e-6)


def test_prompts_with_sam_tiny_write_source_geometry(tmp_path: Path) -> None:
    torch.manual_seed(0)
    cases = [_case(tmp_path, "o", OBLIQUE, ".nrrd")]
    path = _prompts(tmp_path, [{"case_id": "o", "axis": "k", "slice": 6, "label": 1,
                                "box": [6, 5, 17, 14]}])
    loaded = load_model(ModelConfig(name="sam_tiny", img_size=64), device="cpu")
    summary = infer_volumes(loaded, cases, CONVERT, InferConfig(mode="prompts",
                                                                 prompts_file=path),
                            tmp_path / "out")
    array, affine, _ = read_image(output_path(tmp_path / "out", cases[0]))
    assert array.shape == SHAPE and set(np.unique(array)) <= {0, 1}
    assert np.allclose(affine, read_image(cases[0].image_paths[0])[1], atol=1e-6)
    assert summary["cases"]["o"]["slices_predicted"] >= 1


def test_an_unreadable_volume_is_reported_and_the_others_done(tmp_path: Path) -> None:
    good = _case(tmp_path, "good", NEGATIVE, ".nii.gz")
    (tmp_path / "bad.nii.gz").write_bytes(b"not a volume")
    bad = Case("bad", "bad", (str(tmp_path / "bad.nii.gz"),))
    cfg = InferConfig(points_per_side=2, overlays=1)
    summary = infer_volumes(_box_model(), [bad, good], CONVERT, cfg, tmp_path / "out")
    assert summary["done"] == 1 and summary["failed"] == 1
    assert str(tmp_path / "bad.nii.gz") in summary["cases"]["bad"]["error"]
    assert summary["cases"]["good"]["voxels"]["1"] > 0
    path = _prompts(tmp_path, [{"case_id": c, "axis": "k", "slice": 1, "label": 1,
                                "box": [0, 0, 1, 1]} for c in ("bad", "good")])
    prompted = infer_volumes(_box_model(), [bad, good, _case(tmp_path, "other", NEGATIVE, ".nrrd")],
                             CONVERT, InferConfig(mode="prompts", prompts_file=path),
                             tmp_path / "out3")
    assert (prompted["done"], prompted["failed"], prompted["skipped"]) == (1, 1, 1)
    assert str(tmp_path / "bad.nii.gz") in prompted["cases"]["bad"]["error"]
    assert prompted["cases"]["other"]["skipped"] == f"no prompts in {path}"
    with pytest.raises(InferenceError, match="every case failed"):
        infer_volumes(_box_model(), [bad], CONVERT, cfg, tmp_path / "out2")
    assert "error" in json.loads((tmp_path / "out2" / "inference.json").read_text())[
        "cases"]["bad"]
