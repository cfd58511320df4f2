"""Slice evaluation: pure metrics on hand-computed masks, a perfect and a blind fake model, and
the tiny SAM from the registry on a small export read by SliceDataset."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils

from samtune.config import ModelConfig
from samtune.eval.slice_eval import (
    SliceMetrics,
    box_fill,
    dice_iou,
    evaluate_slices,
    summarize,
    union_by_class,
)
from samtune.figures import qc_overlay
from samtune.models.base import Embeddings, PromptableModel, Prompts


def _masks(*shapes: tuple[slice, slice], size: int = 8) -> torch.Tensor:
    out = torch.zeros(len(shapes), size, size, dtype=torch.bool)
    for k, (ys, xs) in enumerate(shapes):
        out[k, ys, xs] = True
    return out


# ------------------------------------------------------------------ pure functions
def test_dice_iou_hand_computed() -> None:
    pred = _masks((slice(0, 2), slice(0, 2)), (slice(0, 0), slice(0, 0)),
                  (slice(0, 0), slice(0, 0)), (slice(4, 6), slice(4, 6)))
    gt = _masks((slice(0, 2), slice(0, 3)), (slice(3, 5), slice(3, 5)),
                (slice(0, 0), slice(0, 0)), (slice(4, 6), slice(4, 6)))
    dice, iou = dice_iou(pred, gt)
    # 4 px inside 6 px: Dice 2·4/(4+6), IoU 4/6; empty prediction: 0, never dropped;
    # both empty: 1; identical: 1.
    assert dice.tolist() == pytest.approx([0.8, 0.0, 1.0, 1.0])
    assert iou.tolist() == pytest.approx([4 / 6, 0.0, 1.0, 1.0])
    assert dice.dtype == torch.float64


def test_dice_iou_prediction_without_ground_truth_is_zero_and_shapes_checked() -> None:
    pred = _masks((slice(1, 3), slice(1, 3)))
    gt = torch.zeros_like(pred)
    dice, iou = dice_iou(pred, gt)
    assert dice.item() == 0.0 and iou.item() == 0.0
    assert [len(t) for t in dice_iou(pred[:0], gt[:0])] == [0, 0]
    with pytest.raises(ValueError, match="N×H×W"):
        dice_iou(pred, gt[:, :4])


def test_box_fill_of_an_l_shape() -> None:
    gt = torch.zeros(1, 6, 6, dtype=torch.bool)
    gt[0, 1, 2] = gt[0, 2, 2] = gt[0, 2, 3] = True  # an L of 3 px in the 2×2 box x 2–3, y 1–2
    boxes, fill = box_fill(gt)
    assert boxes.tolist() == [[2.0, 1.0, 3.0, 2.0]]
    assert fill.sum().item() == 4 and fill[0, 1:3, 2:4].all()
    dice, iou = dice_iou(fill, gt)
    assert dice.item() == pytest.approx(6 / 7) and iou.item() == pytest.approx(3 / 4)


def test_union_by_class_and_summarize() -> None:
    masks = _masks((slice(0, 1), slice(0, 1)), (slice(1, 2), slice(1, 2)),
                   (slice(2, 3), slice(2, 3)))
    unions = union_by_class(masks, torch.tensor([1, 2, 1]))
    assert sorted(unions) == [1, 2]
    assert unions[1].sum().item() == 2 and unions[1][0, 0] and unions[1][2, 2]
    assert unions[2].sum().item() == 1
    assert summarize([0.0, 1.0, 0.5]) == {"mean": 0.5, "std": pytest.approx(math.sqrt(1 / 6)),
                                          "min": 0.0, "max": 1.0, "n": 3}
    assert summarize([]) == {"mean": None, "std": None, "min": None, "max": None, "n": 0}


# ------------------------------------------------------------------ fake models
class BrightPixelModel(PromptableModel):
    """Segments the bright pixels inside each box (so with GT boxes it returns GT logits);
    `blind` predicts nothing at all. Full-resolution "low-res" logits: upscale is the identity."""

    family = "fake"

    def __init__(self, img_size: int, blind: bool = False):
        super().__init__(img_size, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
        self.image_encoder = torch.nn.Identity()
        self.prompt_encoder = torch.nn.Identity()
        self.mask_decoder = torch.nn.Identity()
        self.blind = blind
        self.encoded = 0

    def encode(self, images: torch.Tensor) -> Embeddings:
        self.encoded += len(images)
        return Embeddings(images)

    def decode(self, emb: Embeddings, b: int, prompts: Prompts, multimask: bool = False):
        bright = emb.image[b, 0] > 128
        ys = torch.arange(self.img_size).view(-1, 1)
        xs = torch.arange(self.img_size).view(1, -1)
        out = []
        for x0, y0, x1, y1 in prompts.boxes.tolist():
            inside = (xs >= x0) & (xs <= x1) & (ys >= y0) & (ys <= y1)
            hit = inside & bright & (not self.blind)
            out.append(torch.where(hit, 10.0, -10.0))
        logits = torch.stack(out)[:, None]
        return logits, torch.ones(len(out), 1)


def _disk(size: int, cy: int, cx: int, r: int) -> torch.Tensor:
    ys, xs = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    return (ys - cy) ** 2 + (xs - cx) ** 2 <= r * r


def _item(image_id: int, masks: list[torch.Tensor], labels: list[int], size: int = 32) -> dict:
    stacked = torch.stack(masks) if masks else torch.zeros(0, size, size, dtype=torch.bool)
    image = torch.full((3, size, size), 20.0)
    image[:, stacked.any(dim=0)] = 200.0
    return {"image": image, "masks": stacked, "labels": torch.tensor(labels, dtype=torch.int64),
            "image_id": image_id, "case_id": f"case{image_id // 10}", "key": str(image_id)}


class ListDataset(list):
    categories = {1: "vessel", 2: "plaque"}


def _dataset(size: int = 32) -> ListDataset:
    lshape = torch.zeros(size, size, dtype=torch.bool)
    lshape[4:14, 20:23] = True
    lshape[11:14, 20:30] = True
    empty = torch.zeros(size, size, dtype=torch.bool)
    return ListDataset([
        _item(10, [_disk(size, 8, 8, 4), lshape], [1, 2]),
        _item(11, [], []),  # no instance: not prompted, counted
        _item(20, [_disk(size, 22, 10, 5), empty], [1, 1]),  # one empty instance: skipped
    ])


def test_perfect_model_scores_one_and_box_fill_less_for_non_rectangles(tmp_path) -> None:
    model = BrightPixelModel(32)
    report = evaluate_slices(model, _dataset(), batch_size=2, device="cpu", qc_slices=1)
    frame = report.to_frame()
    assert list(frame.columns[:7]) == ["image_id", "case_id", "class", "class_id", "dice", "iou",
                                       "baseline_dice"]
    assert len(frame) == 3 and frame["image_id"].tolist() == [10, 10, 20]
    assert frame["class"].tolist() == ["vessel", "plaque", "vessel"]
    assert frame["dice"].tolist() == [1.0, 1.0, 1.0] and frame["iou"].tolist() == [1.0] * 3
    # Disk r=4 (49 px) in its 9×9 box: Dice 2·49/(49+81); the L (51 px) in its 10×10 box.
    assert frame["baseline_dice"].iloc[0] == pytest.approx(2 * 49 / (49 + 81))
    assert frame["baseline_iou"].iloc[1] == pytest.approx(51 / 100)
    assert (frame["baseline_dice"] < 1).all()
    summary = report.summary()
    assert summary["counts"] == {"slices": 3, "evaluated_slices": 2, "empty_slices": 1,
                                 "instances": 3, "empty_instances": 1}
    inst = summary["instance"]
    assert inst["overall"]["model"]["dice"] == {"mean": 1.0, "std": 0.0, "min": 1.0, "max": 1.0,
                                                "n": 3}
    assert inst["overall"]["baseline"]["dice"]["mean"] == pytest.approx(
        frame["baseline_dice"].mean())
    assert inst["per_class"]["plaque"]["model"]["iou"]["n"] == 1
    assert summary["slice"]["overall"]["model"]["dice"]["n"] == 3  # (10, 1), (10, 2), (20, 1)
    assert model.encoded == 2  # only the two slices with instances went through the encoder
    assert len(report.qc) == 1 and report.qc[0]["image"].shape == (32, 32, 3)
    assert np.array_equal(report.qc[0]["pred_masks"], report.qc[0]["gt_masks"])
    json.dumps(report.to_dict(), allow_nan=False)
    qc = report.qc[0]
    png = qc_overlay(qc["image"], qc["gt_masks"], {"boxes": qc["boxes"]}, qc["pred_masks"],
                     tmp_path / "qc.png")
    with Image.open(png) as img:
        assert img.size == (4 * 32, 32)


def test_empty_prediction_counts_as_zero_and_batching_does_not_matter() -> None:
    blind = evaluate_slices(BrightPixelModel(32, blind=True), _dataset(), batch_size=1,
                            device="cpu")
    assert blind.to_frame()["dice"].tolist() == [0.0, 0.0, 0.0]
    assert blind.summary()["instance"]["overall"]["model"]["dice"]["n"] == 3
    one = evaluate_slices(BrightPixelModel(32), _dataset(), batch_size=1, device="cpu")
    three = evaluate_slices(BrightPixelModel(32), _dataset(), batch_size=3, device="cpu")
    assert one.to_dict() == three.to_dict()
    assert blind.metrics()["instance_baseline_dice"] == one.metrics()["instance_baseline_dice"]


def test_slice_rows_use_the_union_per_class() -> None:
    acc = SliceMetrics({1: "a"})
    gt = _masks((slice(0, 2), slice(0, 2)), (slice(4, 6), slice(4, 6)))
    pred = _masks((slice(0, 2), slice(0, 2)), (slice(0, 0), slice(0, 0)))
    acc.add(7, "c", torch.tensor([1, 1]), gt, pred, gt)
    assert [r["dice"] for r in acc.report.instances] == [1.0, 0.0]
    (row,) = acc.report.slices
    assert row["n_instances"] == 2 and row["class"] == "a"
    assert row["dice"] == pytest.approx(2 * 4 / (4 + 8)) and row["baseline_dice"] == 1.0


# ------------------------------------------------------------------ tiny SAM on an export
def _write_split(split_dir, size: int = 64) -> None:
    (split_dir / "images").mkdir(parents=True)
    images, anns = [], []
    for i in range(2):
        disk = _disk(size, 20 + 10 * i, 30, 8).numpy()
        pixels = np.where(disk, 200, 30).astype(np.uint8)
        Image.fromarray(pixels).save(split_dir / "images" / f"s{i}.png")
        images.append({"id": i + 1, "file_name": f"s{i}.png", "width": size, "height": size,
                       "case_id": "caseA"})
        rle = mask_utils.encode(np.asfortranarray(disk.astype(np.uint8)))
        anns.append({"id": i + 1, "image_id": i + 1, "category_id": 1, "iscrowd": 0,
                     "segmentation": {"size": rle["size"], "counts": rle["counts"].decode()}})
    coco = {"images": images, "annotations": anns,
            "categories": [{"id": 1, "name": "vessel"}]}
    (split_dir / "annotations.json").write_text(json.dumps(coco))


def test_tiny_sam_from_the_registry_on_a_slice_dataset(tmp_path) -> None:
    from samtune.models.registry import build_model
    from samtune.train.data import SliceDataset

    _write_split(tmp_path / "test")
    dataset = SliceDataset(tmp_path / "test", 256)
    torch.manual_seed(0)
    model = build_model(ModelConfig(name="sam_tiny")).train()
    report = evaluate_slices(model, dataset, batch_size=2, device="cpu")
    assert model.training  # mode restored
    frame = report.to_frame()
    assert len(frame) == 2 and set(frame["class"]) == {"vessel"}
    assert frame[["dice", "iou"]].apply(lambda c: c.between(0, 1)).all().all()
    # The baseline depends only on the ground truth: the upsampled disk against its box.
    for item, (_, row) in zip((dataset[0], dataset[1]), frame.iterrows()):
        gt = item["masks"]
        _, fill = box_fill(gt)
        assert row["baseline_dice"] == pytest.approx(
            2 * gt.sum().item() / (gt.sum().item() + fill.sum().item()))


def test_loose_boxes_hurt_box_fill_not_a_content_model() -> None:
    tight = evaluate_slices(BrightPixelModel(32), _dataset(), batch_size=2, device="cpu")
    loose = evaluate_slices(BrightPixelModel(32), _dataset(), batch_size=2, device="cpu",
                            bbox_shift=4, seed=1)
    t, lo = tight.metrics(), loose.metrics()
    assert lo["instance_dice"] == pytest.approx(t["instance_dice"])  # it segments the content
    assert lo["instance_baseline_dice"] < t["instance_baseline_dice"] - 0.1  # fills more box
    again = evaluate_slices(BrightPixelModel(32), _dataset(), batch_size=2, device="cpu",
                            bbox_shift=4, seed=1).metrics()
    assert again == lo  # the jitter is seeded
