"""SliceDataset, collate, make_loader and normalisation on small hand-built exports."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils

from samtune.data.cases import DataError
from samtune.data.export import export_splits
from samtune.data.intensity import compute_stats
from samtune.models.base import Embeddings
from samtune.train.data import (SliceDataset, collate, dataset_normalization, load_training_data,
                                make_loader, normalize, resolve_normalization)


def rle(mask: np.ndarray) -> dict:
    r = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": r["size"], "counts": r["counts"].decode()}


def write_split(split_dir: Path, slices: list[dict], size: int = 32, rgb: bool = False) -> None:
    """slices: [{"pixels": size×size uint8, "masks": [(class, bool mask)], "case": str}]."""
    (split_dir / "images").mkdir(parents=True)
    images, anns = [], []
    for i, sl in enumerate(slices):
        name = f"{sl.get('case', 'c0')}_{i:04d}.png"
        px = sl["pixels"]
        Image.fromarray(np.stack([px, px // 2, px // 4], -1) if rgb else px).save(
            split_dir / "images" / name)
        images.append({"id": 10 + i, "file_name": name, "width": size, "height": size,
                       "case_id": sl.get("case", "c0"), "patient_id": sl.get("case", "c0"),
                       "slice_index": i,
                       "transform": {"resized_shape": [size, size]}})
        for cls, m in sl.get("masks", []):
            anns.append({"id": len(anns) + 1, "image_id": 10 + i, "category_id": cls,
                         "segmentation": rle(m), "area": int(m.sum()), "iscrowd": 0})
    coco = {"images": images, "annotations": anns,
            "categories": [{"id": 1, "name": "vessel"}, {"id": 2, "name": "plaque"}]}
    (split_dir / "annotations.json").write_text(json.dumps(coco))


def box_mask(size: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    m = np.zeros((size, size), bool)
    m[y0:y1, x0:x1] = True
    return m


def make_slices(n: int, size: int = 32, seed: int = 0, empty_every: int = 3) -> list[dict]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        px = rng.integers(0, 256, (size, size), dtype=np.uint8)
        masks = [] if i % empty_every == empty_every - 1 else [
            (1, box_mask(size, 2, 8, 3, 9 + i)), (2, box_mask(size, 20, 30, 20, 22))]
        out.append({"pixels": px, "masks": masks, "case": f"case{i % 2}"})
    return out


def write_export(root: Path, n_train: int = 6, n_val: int = 3, size: int = 32,
                 stats: dict | None = None) -> Path:
    """An export folder like samtune.data.export writes (train/val + dataset.json)."""
    write_split(root / "train", make_slices(n_train, size, 0), size)
    write_split(root / "val", make_slices(n_val, size, 1), size)
    if stats is None:
        stats = compute_stats(root / "train")
    (root / "dataset.json").write_text(json.dumps({"fingerprint": "f" * 64, "stats": stats}))
    return root


def test_item_values_masks_labels_and_empty_slices(tmp_path):
    slices = make_slices(3)
    write_split(tmp_path / "train", slices)
    ds = SliceDataset(tmp_path / "train", 32)
    assert len(ds) == 3 and ds.n_instances == 4 and ds.n_positive == 2
    item = ds[1]
    assert item["image"].shape == (3, 32, 32) and item["image"].dtype == torch.float32
    px = torch.from_numpy(slices[1]["pixels"]).float()
    for c in range(3):  # grey replicated, 0–255 scale, not normalised
        assert torch.equal(item["image"][c], px)
    assert item["masks"].dtype == torch.bool and item["masks"].shape == (2, 32, 32)
    assert torch.equal(item["masks"][0], torch.from_numpy(box_mask(32, 2, 8, 3, 10)))
    assert torch.equal(item["masks"][1], torch.from_numpy(box_mask(32, 20, 30, 20, 22)))
    assert item["labels"].tolist() == [1, 2]
    assert item["image_id"] == 11 and item["case_id"] == "case1"
    empty = ds[2]  # kept, with no instances
    assert empty["masks"].shape == (0, 32, 32) and empty["labels"].numel() == 0
    assert ds.categories == {1: "vessel", 2: "plaque"}


def test_rgb_png_keeps_channels(tmp_path):
    slices = make_slices(1)
    write_split(tmp_path / "s", slices, rgb=True)
    img = SliceDataset(tmp_path / "s", 32)[0]["image"]
    px = slices[0]["pixels"].astype(np.float32)
    assert np.array_equal(img[1].numpy(), np.floor(px / 2)) and np.array_equal(
        img[2].numpy(), np.floor(px / 4))


def test_resize_bilinear_image_nearest_mask(tmp_path):
    px = np.zeros((16, 16), np.uint8)
    px[:, 8:] = 200
    write_split(tmp_path / "s", [{"pixels": px, "masks": [(1, box_mask(16, 4, 8, 2, 5))]}], 16)
    item = SliceDataset(tmp_path / "s", 64)[0]
    assert item["image"].shape == (3, 64, 64) and item["masks"].shape == (1, 64, 64)
    assert int(item["masks"][0].sum()) == 4 * 3 * 16  # nearest: every pixel → a 4×4 block
    assert torch.equal(item["masks"][0, 16:32, 8:20], torch.ones(16, 12, dtype=torch.bool))
    row = item["image"][0, 0]
    assert row[0] == 0 and row[-1] == 200 and 0 < row[31] < 200  # bilinear ramp at the edge
    down = SliceDataset(tmp_path / "s", 8)[0]
    # nearest-exact (pixel centres) samples odd rows/columns: rows 5, 7 and column 3
    assert down["masks"].shape == (1, 8, 8) and int(down["masks"].sum()) == 2 * 1


def test_instances_lost_by_downscaling_are_dropped(tmp_path):
    dot = np.zeros((16, 16), bool)
    dot[4, 4] = True  # nearest-exact 16 → 8 samples odd rows/columns only: this pixel vanishes
    write_split(tmp_path / "s", [{"pixels": np.zeros((16, 16), np.uint8),
                                  "masks": [(2, dot), (1, box_mask(16, 8, 12, 8, 12))]}], 16)
    item = SliceDataset(tmp_path / "s", 8)[0]
    assert item["labels"].tolist() == [1] and item["masks"].shape == (1, 8, 8)
    assert int(item["masks"].sum()) == 4


def test_polygon_and_uncompressed_rle(tmp_path):
    write_split(tmp_path / "s", [{"pixels": np.zeros((32, 32), np.uint8)}])
    coco = json.loads((tmp_path / "s" / "annotations.json").read_text())
    m = box_mask(32, 4, 10, 4, 10)
    unc = {"size": [32, 32], "counts": [int(c) for c in _rle_counts(m)]}
    coco["annotations"] = [
        {"id": 1, "image_id": 10, "category_id": 1,
         "segmentation": [[4, 4, 10, 4, 10, 10, 4, 10]]},
        {"id": 2, "image_id": 10, "category_id": 2, "segmentation": unc}]
    (tmp_path / "s" / "annotations.json").write_text(json.dumps(coco))
    item = SliceDataset(tmp_path / "s", 32)[0]
    assert torch.equal(item["masks"][1], torch.from_numpy(m))
    assert int(item["masks"][0].sum()) > 30 and bool(item["masks"][0, 6, 6])
    assert not bool(item["masks"][0, 20, 20])


def _rle_counts(m: np.ndarray) -> list[int]:
    flat = m.T.reshape(-1).astype(np.uint8)  # column-major, starts with a run of zeros
    runs, cur, n = [], 0, 0
    for v in flat:
        if v != cur:
            runs.append(n)
            cur, n = v, 0
        n += 1
    return runs + [n]


def test_collate_batch_dict_and_embeddings(tmp_path):
    write_split(tmp_path / "s", make_slices(3))
    ds = SliceDataset(tmp_path / "s", 32)
    items = [ds[i] for i in range(3)]
    for i, it in enumerate(items):
        it["embeddings"] = Embeddings(torch.full((1, 4, 2, 2), float(i)),
                                      [torch.full((1, 2, 4, 4), float(i))])
    batch = collate(items)
    assert batch["images"].shape == (3, 3, 32, 32)
    assert [m.shape[0] for m in batch["masks"]] == [2, 2, 0]
    assert [lab.tolist() for lab in batch["labels"]] == [[1, 2], [1, 2], []]
    assert batch["image_ids"] == [10, 11, 12] and batch["case_ids"] == ["case0", "case1", "case0"]
    assert batch["embeddings"].image[:, 0, 0, 0].tolist() == [0.0, 1.0, 2.0]
    assert batch["embeddings"].high_res[0].shape == (3, 2, 4, 4)
    assert "embeddings" not in collate([ds[0]])


def test_loader_order_comes_from_the_generator(tmp_path):
    write_split(tmp_path / "s", make_slices(9))
    ds = SliceDataset(tmp_path / "s", 32)

    def order(gen: torch.Generator) -> list[int]:
        return [i for b in make_loader(ds, 2, shuffle=True, generator=gen) for i in b["image_ids"]]

    gen = torch.Generator().manual_seed(3)
    state = gen.get_state()
    first, second = order(gen), order(gen)
    assert sorted(first) == list(range(10, 19)) and first != second  # reshuffled per epoch
    gen.set_state(state)  # restore → the same epoch again (exact resume)
    assert order(gen) == first
    assert order(torch.Generator().manual_seed(3)) == first
    assert [i for b in make_loader(ds, 4, shuffle=False) for i in b["image_ids"]] == list(
        range(10, 19))
    with pytest.raises(ValueError, match="Generator"):
        make_loader(ds, 2, shuffle=True)


def test_dataset_normalization_from_compute_stats(tmp_path):
    root = write_export(tmp_path / "exp")
    mean, std = dataset_normalization(root / "dataset.json")
    px = np.stack([s["pixels"] for s in make_slices(6, 32, 0)]).astype(np.float64)
    assert mean == pytest.approx((px.mean(),) * 3) and std == pytest.approx((px.std(),) * 3)
    images = torch.full((1, 3, 2, 2), float(mean[0]) + std[0])
    assert torch.allclose(normalize(images, mean, std), torch.ones(1, 3, 2, 2))
    (root / "dataset.json").write_text(json.dumps({"stats": {"mean_255": [10.0],
                                                             "std_255": [5.0]}}))
    assert dataset_normalization(root / "dataset.json") == ((10.0,) * 3, (5.0,) * 3)
    stats = json.loads((root / "dataset.json").read_text())["stats"]
    assert SliceDataset(root / "train", 32, normalization_stats=stats).normalization == (
        (10.0,) * 3, (5.0,) * 3)
    with pytest.raises(DataError, match="std > 0"):
        SliceDataset(root / "train", 32, normalization_stats=([1.0] * 3, [1.0, 0.0, 1.0]))
    (root / "dataset.json").write_text(json.dumps({"stats": None}))
    with pytest.raises(DataError, match="dataset.json.*no train-split pixel statistics"):
        dataset_normalization(root / "dataset.json")


def test_resolve_normalization_model_imagenet_dataset():
    class Fake(torch.nn.Module):
        pixel_mean = torch.tensor([1.0, 2.0, 3.0]).view(1, 3, 1, 1)
        pixel_std = torch.tensor([4.0, 5.0, 6.0]).view(1, 3, 1, 1)

    assert resolve_normalization("model", Fake()) is None  # the family's own model.normalize
    assert resolve_normalization("imagenet", Fake()) == ((123.675, 116.28, 103.53),
                                                         (58.395, 57.12, 57.375))
    with pytest.raises(ValueError, match="dataset.json"):
        resolve_normalization("dataset", Fake())


def test_load_training_data_and_its_errors(tmp_path):
    model = torch.nn.Module()
    root = write_export(tmp_path / "ok")
    train, val = load_training_data(root, 32, "dataset", model)
    assert len(train) == 6 and len(val) == 3
    assert train.normalization == dataset_normalization(root / "dataset.json")
    empty = tmp_path / "empty"
    write_split(empty / "train", [])
    (empty / "dataset.json").write_text(json.dumps({"stats": {"mean_255": [1], "std_255": [1]}}))
    with pytest.raises(DataError, match=r"empty/train: no training slices: check split ratios"):
        load_training_data(empty, 32, "dataset", model)
    neg = tmp_path / "neg"
    write_split(neg / "train", [{"pixels": np.zeros((32, 32), np.uint8)}])
    (neg / "dataset.json").write_text((empty / "dataset.json").read_text())
    with pytest.raises(DataError, match=r"neg/train: no positive training slices"):
        load_training_data(neg, 32, "dataset", model)


def test_malformed_or_missing_files_are_named(tmp_path):
    write_split(tmp_path / "s", make_slices(2))
    ann = tmp_path / "s" / "annotations.json"
    coco = json.loads(ann.read_text())
    ann.write_text("{not json")
    with pytest.raises(DataError, match=r"s/annotations.json: malformed annotations.json"):
        SliceDataset(tmp_path / "s", 32)
    ann.write_text(json.dumps({**coco, "annotations": [{"image_id": 99, "category_id": 1,
                                                        "segmentation": {}}]}))
    with pytest.raises(DataError, match=r"annotations.json: .*unknown image 99"):
        SliceDataset(tmp_path / "s", 32)
    ann.write_text(json.dumps({**coco, "annotations": [{"image_id": 10}]}))
    with pytest.raises(DataError, match=r"annotations.json: malformed annotation"):
        SliceDataset(tmp_path / "s", 32)
    ann.write_text(json.dumps(coco))
    (tmp_path / "s" / "images" / coco["images"][1]["file_name"]).unlink()
    with pytest.raises(DataError, match=r"case1_0001.png: image file not found"):
        SliceDataset(tmp_path / "s", 32)
    with pytest.raises(DataError, match=r"nowhere/annotations.json: annotations file not found"):
        SliceDataset(tmp_path / "nowhere", 32)


def test_reads_what_the_prepare_export_writes(tmp_path):
    write_split(tmp_path / "coco", make_slices(6))  # cases case0 / case1 = patients
    out = tmp_path / "export"
    export_splits(tmp_path / "coco", {"case0": "train", "case1": "val"}, out,
                  fingerprint="ab" * 32, method="random")
    train, val = load_training_data(out, 32, "dataset", torch.nn.Module())
    assert [len(train), len(val)] == [3, 3] and train.n_instances == 4
    assert {train[i]["case_id"] for i in range(3)} == {"case0"}
    px = np.stack([s["pixels"] for s in make_slices(6)[0::2]]).astype(np.float64)
    assert train.normalization[0] == pytest.approx((px.mean(),) * 3)
    assert train[0]["key"].startswith("abababababababab/train/10/")
    assert val[0]["key"].startswith("abababababababab/val/11/")
