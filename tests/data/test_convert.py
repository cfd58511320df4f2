"""Volumes → COCO slices: content, policies, determinism, atomicity, exact geometry round trip."""
from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

import samtune.data.convert as convert_mod
from samtune.config import ConvertConfig
from samtune.data.cases import Case, CaseCollection, DataError
from samtune.data.convert import compute_stats, convert_collection
from samtune.data.slicing import mask_to_original

from .test_slicing import AFFINES, blob_labels

LABELS = {1: "vessel", 2: "plaque", 3: "calcium"}


def write_case(root: Path, case_id: str, image: np.ndarray, label: np.ndarray | None,
               affine: np.ndarray = np.eye(4), modality: str = "CT") -> Case:
    nib.save(nib.Nifti1Image(image, affine), root / f"{case_id}.nii.gz")
    label_path = None
    if label is not None:
        label_path = str(root / f"{case_id}_label.nii.gz")
        nib.save(nib.Nifti1Image(label, affine), label_path)
    return Case(case_id, f"patient_{case_id}", (str(root / f"{case_id}.nii.gz"),), label_path,
                group="normal", modality=modality)


def make_collection(root: Path, n: int = 2, shape=(32, 24, 10), affine=np.eye(4)) -> CaseCollection:
    rng = np.random.default_rng(0)
    cases = []
    for c in range(n):
        image = rng.integers(-1000, 1500, shape, dtype=np.int16)
        cases.append(write_case(root, f"case{c}", image, blob_labels(shape, seed=c), affine))
    return CaseCollection("test", str(root), cases, dict(LABELS))


def load(out: Path) -> dict:
    return json.loads((out / "annotations.json").read_text())


def decode(ann: dict) -> np.ndarray:
    return mask_utils.decode(ann["segmentation"]).astype(bool)


def test_coco_loads_and_every_annotation_decodes_to_its_area(tmp_path):
    col = make_collection(tmp_path)
    summary = convert_collection(col, ConvertConfig(img_size=48, channels=1), tmp_path / "out")
    coco = COCO(str(tmp_path / "out" / "annotations.json"))
    assert summary["images"] == len(coco.imgs) > 0 and summary["annotations"] == len(coco.anns)
    for ann in coco.anns.values():
        m = decode(ann)
        assert m.shape == (48, 48) and m.sum() == ann["area"] > 0
        np.testing.assert_allclose(ann["bbox"], mask_utils.toBbox(ann["segmentation"]))
    assert [c["id"] for c in coco.dataset["categories"]] == [1, 2, 3]
    img = coco.dataset["images"][0]
    assert img["file_name"] == f"case0_axial_{img['slice_index']:04d}.png"
    assert Image.open(tmp_path / "out" / "images" / img["file_name"]).mode == "L"
    assert coco.dataset["info"]["collection_hash"] == col.content_hash()


def test_masks_sum_to_label_counts_without_resize(tmp_path):
    col = make_collection(tmp_path, n=1)
    cfg = ConvertConfig(img_size=32, min_component_area=0, empty_slices="all")  # slices 24×32
    convert_collection(col, cfg, tmp_path / "out")
    data = load(tmp_path / "out")
    label = np.asarray(nib.load(col.cases[0].label_path).dataobj)
    for img in data["images"]:
        k = img["slice_index"]
        for value in LABELS:
            anns = [a for a in data["annotations"]
                    if a["image_id"] == img["id"] and a["category_id"] == value]
            total = sum(int(decode(a).sum()) for a in anns)
            assert total == int((label[:, :, k] == value).sum())


def test_small_components_dropped_and_counted(tmp_path):
    label = np.zeros((20, 20, 3), np.uint8)
    label[2:6, 2:6, 1] = 1
    label[12:16, 12:16, 1] = 1  # two blobs on slice 1 → two annotations
    label[18, 1, 1] = 1  # one-pixel speck
    label[10, 10, 2] = 2  # only a speck on slice 2
    case = write_case(tmp_path, "c", np.zeros(label.shape, np.int16), label)
    col = CaseCollection("test", str(tmp_path), [case], dict(LABELS))
    summary = convert_collection(col, ConvertConfig(img_size=20, min_component_area=2),
                                 tmp_path / "out")
    data = load(tmp_path / "out")
    assert summary["dropped_small_components"] == 2
    assert [img["slice_index"] for img in data["images"]] == [1]
    assert sorted(a["area"] for a in data["annotations"]) == [16, 16]
    assert sorted(a["instance_index"] for a in data["annotations"]) == [0, 1]


@pytest.mark.parametrize("policy,fraction", [("none", 0), ("all", 0), ("fraction", 0.5)])
def test_empty_slice_policies(tmp_path, policy, fraction):
    label = np.zeros((16, 16, 12), np.uint8)
    label[4:9, 4:9, 3:5] = 1
    case = write_case(tmp_path, "c", np.zeros(label.shape, np.int16), label)
    col = CaseCollection("test", str(tmp_path), [case], dict(LABELS))
    cfg = ConvertConfig(img_size=16, empty_slices=policy, empty_fraction=fraction, seed=3)
    convert_collection(col, cfg, tmp_path / "a")
    kept = [img["slice_index"] for img in load(tmp_path / "a")["images"]]
    expected = {"none": 2, "all": 12, "fraction": 2 + 5}[policy]
    assert len(kept) == expected and {3, 4} <= set(kept)
    convert_collection(col, cfg, tmp_path / "b")
    assert kept == [img["slice_index"] for img in load(tmp_path / "b")["images"]]


def test_unlabelled_case_gives_all_slices_and_no_annotations(tmp_path):
    case = write_case(tmp_path, "c", np.zeros((16, 16, 5), np.int16), None)
    summary = convert_collection(CaseCollection("t", str(tmp_path), [case], dict(LABELS)),
                                 ConvertConfig(img_size=16), tmp_path / "out")
    data = load(tmp_path / "out")
    assert len(data["images"]) == 5 and data["annotations"] == []
    assert summary["unlabelled_cases"] == 1 and not data["images"][0]["has_label"]


def test_workers_give_identical_output(tmp_path):
    col = make_collection(tmp_path, n=3)
    cfg = ConvertConfig(img_size=40, channels=3)
    convert_collection(col, cfg.model_copy(update={"workers": 1}), tmp_path / "w1")
    convert_collection(col, cfg.model_copy(update={"workers": 2}), tmp_path / "w2")
    a, b = (tmp_path / "w1"), (tmp_path / "w2")
    assert (a / "annotations.json").read_bytes() == (b / "annotations.json").read_bytes()
    names = sorted(p.name for p in (a / "images").iterdir())
    assert names == sorted(p.name for p in (b / "images").iterdir())
    assert all((a / "images" / n).read_bytes() == (b / "images" / n).read_bytes() for n in names)
    ids = [img["id"] for img in load(a)["images"]]
    assert ids == list(range(1, len(ids) + 1))


def test_failure_mid_run_leaves_old_output_untouched(tmp_path, monkeypatch):
    col = make_collection(tmp_path, n=3)
    out = tmp_path / "out"
    out.mkdir()
    (out / "annotations.json").write_text("old")
    real = convert_mod.convert_volume

    def flaky(vol, *args):  # fails on the second case, after the first wrote its PNGs
        if vol.case.case_id == "case1":
            raise RuntimeError("disk full")
        return real(vol, *args)

    monkeypatch.setattr(convert_mod, "convert_volume", flaky)
    with pytest.raises(RuntimeError, match="disk full"):
        convert_collection(col, ConvertConfig(img_size=32, workers=1), out)
    with pytest.raises(RuntimeError):
        convert_collection(col, ConvertConfig(img_size=32, workers=1), tmp_path / "fresh")
    assert (out / "annotations.json").read_text() == "old"
    assert not (tmp_path / "fresh").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith((".tmp-", ".old-"))]


@pytest.mark.parametrize("workers", [1, 2])
def test_unreadable_case_names_its_file(tmp_path, workers):
    col = make_collection(tmp_path, n=2)
    Path(col.cases[1].image_paths[0]).write_bytes(b"\x1f\x8b\x08 truncated")
    with pytest.raises(DataError) as err:
        convert_collection(col, ConvertConfig(img_size=32, workers=workers), tmp_path / "out")
    assert err.value.path == col.cases[1].image_paths[0]
    assert not (tmp_path / "out").exists()


def test_picture_case_comes_out_unrotated(tmp_path):
    rgb = np.random.default_rng(5).integers(0, 256, (12, 20, 3), dtype=np.uint8)  # rows × cols
    Image.fromarray(rgb).save(tmp_path / "pic.png")
    case = Case("pic", "p", (str(tmp_path / "pic.png"),), None, modality="RGB")
    col = CaseCollection("coco", str(tmp_path), [case], {1: "thing"})
    convert_collection(col, ConvertConfig(img_size=20, channels=3), tmp_path / "rgb")
    out = np.asarray(Image.open(tmp_path / "rgb" / "images" / "pic_axial_0000.png"))
    np.testing.assert_array_equal(out[:12], rgb)
    assert np.all(out[12:] == 0)
    convert_collection(col, ConvertConfig(img_size=20, channels=1), tmp_path / "grey")
    grey = np.asarray(Image.open(tmp_path / "grey" / "images" / "pic_axial_0000.png"))
    np.testing.assert_array_equal(grey[:12], np.asarray(Image.fromarray(rgb).convert("L")))


def test_picked_channels_of_multichannel_volume(tmp_path):
    rng = np.random.default_rng(4)
    chans = [rng.normal(m, 10, (16, 16, 4)).astype(np.float32) for m in (0, 500)]
    for c, arr in enumerate(chans):
        nib.save(nib.Nifti1Image(arr, np.eye(4)), tmp_path / f"mr_{c:04d}.nii.gz")
    case = Case("mr", "p", tuple(str(tmp_path / f"mr_{c:04d}.nii.gz") for c in range(2)),
                None, modality="MR")
    col = CaseCollection("t", str(tmp_path), [case], {1: "tumour"})
    cfg = ConvertConfig(img_size=16, channels=3, input_channels=[1, 0, 1])
    convert_collection(col, cfg, tmp_path / "out")
    out = np.asarray(Image.open(tmp_path / "out" / "images" / "mr_axial_0002.png"))
    np.testing.assert_array_equal(out[..., 0], out[..., 2])
    assert not np.array_equal(out[..., 0], out[..., 1])
    with pytest.raises(DataError, match="input_channels"):
        convert_collection(col, ConvertConfig(img_size=16, channels=3), tmp_path / "bad")


def reassemble(out: Path, shape: tuple[int, int, int]) -> np.ndarray:
    data = load(out)
    volume = np.full(shape, 255, dtype=np.uint8)
    for img in data["images"]:
        plane = np.zeros((img["height"], img["width"]), np.uint8)
        for ann in (a for a in data["annotations"] if a["image_id"] == img["id"]):
            plane[decode(ann)] = ann["category_id"]
        arr, index = mask_to_original(plane, img)
        volume[index] = arr
    return volume


@pytest.mark.parametrize("axis", ["axial", "coronal", "sagittal"])
@pytest.mark.parametrize("affine_name", ["negative_lps_like", "oblique_aniso", "permuted"])
def test_convert_round_trip_is_exact(tmp_path, axis, affine_name):
    shape = (32, 24, 20)
    label = blob_labels(shape, seed=7)
    case = write_case(tmp_path, "c", np.zeros(shape, np.int16), label, AFFINES[affine_name])
    col = CaseCollection("t", str(tmp_path), [case], dict(LABELS))
    cfg = ConvertConfig(axis=axis, img_size=32, min_component_area=0, empty_slices="all")
    convert_collection(col, cfg, tmp_path / "out")
    np.testing.assert_array_equal(reassemble(tmp_path / "out", shape), label)


def test_convert_round_trip_with_downscaling(tmp_path):
    shape = (64, 48, 12)
    grid = np.indices(shape)
    label = np.zeros(shape, np.uint8)
    label[((grid - np.array([20, 20, 6])[:, None, None, None]) ** 2).sum(0) < 100] = 1
    label[((grid - np.array([46, 30, 6])[:, None, None, None]) ** 2).sum(0) < 144] = 2
    case = write_case(tmp_path, "c", np.zeros(shape, np.int16), label, AFFINES["oblique_aniso"])
    col = CaseCollection("t", str(tmp_path), [case], dict(LABELS))
    convert_collection(col, ConvertConfig(img_size=24, empty_slices="all"), tmp_path / "out")
    back = reassemble(tmp_path / "out", shape)
    for v in (1, 2):
        dice = 2 * np.sum((back == v) & (label == v)) / (np.sum(back == v) + np.sum(label == v))
        assert dice > 0.9


def test_compute_stats_known_values(tmp_path):
    image = np.full((16, 8, 4), -1000, np.int16)
    image[:, :4] = 1000  # half the content white (255), half black, after the window
    label = np.zeros(image.shape, np.uint8)
    label[2:5, 2:5, 1:3] = 1
    label[10:12, 2:5, 2] = 2
    case = write_case(tmp_path, "c", image, label)
    col = CaseCollection("t", str(tmp_path), [case], dict(LABELS))
    convert_collection(col, ConvertConfig(img_size=16, channels=1, window="soft_tissue",
                                                     empty_slices="all"),
                       tmp_path / "out")  # slices 8×16: rows 8…15 are padding, excluded
    stats = compute_stats(tmp_path / "out")
    assert stats["n_images"] == 4
    np.testing.assert_allclose(stats["mean_255"], [127.5])
    np.testing.assert_allclose(stats["std_255"], [127.5])
    np.testing.assert_allclose(stats["mean_01"], [0.5])
    assert stats["percentiles"] == {"1": [0], "50": [0], "99": [255]}
    assert stats["slices_per_class"] == {"vessel": 2, "plaque": 1, "calcium": 0}
    assert stats["instances_per_class"] == {"vessel": 2, "plaque": 1, "calcium": 0}
    ids = [img["id"] for img in load(tmp_path / "out")["images"] if img["slice_index"] == 2]
    sub = compute_stats(tmp_path / "out", image_ids=ids, max_images=1)
    assert sub["n_images"] == 1 and sub["slices_per_class"]["plaque"] == 1


@pytest.mark.parametrize("level", [0, 1, 6])
@pytest.mark.parametrize("shape", [(13, 7), (9, 11, 3)])
def test_write_png_reads_back_exactly(tmp_path, level, shape):
    pixels = np.random.default_rng(level).integers(0, 256, shape, dtype=np.uint8)
    pixels[2:5] = 77  # runs, as in real slices
    convert_mod.write_png(tmp_path / "a.png", pixels, level)
    with Image.open(tmp_path / "a.png") as img:
        assert img.mode == ("L" if len(shape) == 2 else "RGB")
        np.testing.assert_array_equal(np.asarray(img), pixels)


def test_label_lost_by_downscaling_gives_no_annotation(tmp_path):
    label = np.zeros((64, 64, 2), np.uint8)
    label[0, 0, 0] = 1  # a single voxel (view pixel 63, 63) that nearest-exact ÷4 never samples
    only_speck = label.copy()
    label[20:40, 20:40, 1] = 1
    cases = [write_case(tmp_path, "c", np.zeros(label.shape, np.int16), label),
             write_case(tmp_path, "d", np.zeros(label.shape, np.int16), only_speck)]
    col = CaseCollection("t", str(tmp_path), cases, dict(LABELS))
    convert_collection(col, ConvertConfig(img_size=16, min_component_area=0), tmp_path / "out")
    data = load(tmp_path / "out")
    assert [(img["case_id"], img["slice_index"]) for img in data["images"]] == [("c", 1)]
    assert [a["area"] for a in data["annotations"]] == [25]
