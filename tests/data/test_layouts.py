"""Dataset layouts: tiny fixture folders shaped exactly as users have them, bad input, real data."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from samtune.config import DataConfig, PhantomConfig
from samtune.data.cases import LayoutError
from samtune.data.io import file_sha256, load_volume, read_image, write_volume
from samtune.data.layouts import LAYOUTS, ingest, list_layouts
from samtune.data.layouts import phantoms as phantoms_layout

AFFINE = np.diag([0.5, 0.5, 1.25, 1.0])


def vol(path: Path, value: int = 0, dtype=np.int16) -> Path:
    arr = np.full((8, 8, 4), value, dtype)
    arr[2:4, 2:4, 1:3] = value + 1
    return write_volume(path, arr, AFFINE)


def cfg(layout: str, root, **kw) -> DataConfig:
    return DataConfig(layout=layout, root=root, **kw)


def ids(coll) -> list[str]:
    return [c.case_id for c in coll.cases]


# -- ASOCA -----------------------------------------------------------------------------------

@pytest.fixture
def asoca_root(tmp_path) -> Path:
    root = tmp_path / "ASOCA"
    for g in ("Normal", "Diseased"):
        for n in (1, 2):
            vol(root / g / "CTCA" / f"{g}_{n}.nrrd", n)
    for name in ("Normal_1", "Normal_2", "Diseased_1", "Diseased_3"):  # Diseased_2 has no label
        vol(root / name.split("_")[0] / "Annotations" / f"{name}.nrrd", dtype=np.uint8)
    vol(root / "Normal" / "Testset_Normal" / "Normal_10.nrrd")
    vol(root / "Diseased" / "Testset_Diseased" / "Diseased_10.nrrd")
    return root


def test_asoca(asoca_root):
    coll = ingest(cfg("asoca", asoca_root))
    assert coll.layout == "asoca" and coll.root == str(asoca_root)
    assert ids(coll) == ["Diseased_1", "Normal_1", "Normal_2"]
    assert [c.group for c in coll.cases] == ["Diseased", "Normal", "Normal"]
    assert [c.patient_id for c in coll.cases] == ids(coll)
    assert {c.modality for c in coll.cases} == {"CT"} and coll.labels == {1: "coronary_artery"}
    n1 = coll.cases[1]
    assert n1.image_paths == (str(asoca_root / "Normal/CTCA/Normal_1.nrrd"),)
    assert n1.label_path == str(asoca_root / "Normal/Annotations/Normal_1.nrrd")
    missing = str(asoca_root / "Diseased/CTCA/Diseased_2.nrrd")
    orphan = str(asoca_root / "Diseased/Annotations/Diseased_3.nrrd")
    assert set(coll.skipped) == {missing, orphan}
    assert str(asoca_root / "Diseased/Annotations/Diseased_2.nrrd") in coll.skipped[missing]
    assert "label without image" in coll.skipped[orphan]
    assert coll.fingerprints == {f: file_sha256(f) for c in coll.cases for f in c.files}


def test_asoca_unlabelled_test_set(asoca_root):
    coll = ingest(cfg("asoca", asoca_root, include_unlabelled=True))
    test = [c for c in coll.cases if c.split == "infer"]
    assert [(c.case_id, c.group, c.label_path) for c in test] == [
        ("Diseased_10", "Diseased", None), ("Normal_10", "Normal", None)]
    assert len(coll.cases) == 5


def test_fingerprints_follow_content_not_mtime(asoca_root):
    before = ingest(cfg("asoca", asoca_root)).content_hash()
    f = asoca_root / "Normal/CTCA/Normal_1.nrrd"
    os.utime(f, (1, 1))
    assert ingest(cfg("asoca", asoca_root)).content_hash() == before
    vol(f, 5)
    assert ingest(cfg("asoca", asoca_root)).content_hash() != before


def test_asoca_without_groups(tmp_path):
    (tmp_path / "CTCA").mkdir()
    with pytest.raises(LayoutError, match="expected Normal/ and Diseased/.*CTCA"):
        ingest(cfg("asoca", tmp_path))


# -- ImageCAS --------------------------------------------------------------------------------

@pytest.mark.parametrize("sub", ["Data", ""])
def test_imagecas(tmp_path, sub):
    data = tmp_path / sub
    for n in (1, 2, 10):
        vol(data / f"{n}.img.nii.gz", n)
    for n in (1, 10, 11):
        vol(data / f"{n}.label.nii.gz", dtype=np.uint8)
    (data / "notes.txt").write_text("ignored companion")
    vol(data / "odd.nii.gz")
    coll = ingest(cfg("imagecas", tmp_path, labels={2: "plaque"}))
    assert ids(coll) == ["1", "10"] and [c.patient_id for c in coll.cases] == ["1", "10"]
    assert coll.labels == {1: "coronary_artery", 2: "plaque"}
    assert coll.cases[0].label_path == str(data / "1.label.nii.gz")
    assert set(coll.skipped) == {str(data / f) for f in
                                 ("2.img.nii.gz", "11.label.nii.gz", "odd.nii.gz")}
    assert str(data / "2.label.nii.gz") in coll.skipped[str(data / "2.img.nii.gz")]


# -- nnU-Net ---------------------------------------------------------------------------------

def _nnunet_v2(root: Path, channels=("T2", "ADC")) -> Path:
    dj = {"channel_names": {str(i): c for i, c in enumerate(channels)},
          "labels": {"background": 0, "peripheral": 1, "transition": 2, "whole": [1, 2]},
          "file_ending": ".nii.gz", "numTraining": 2}
    root.mkdir(parents=True)
    (root / "dataset.json").write_text(json.dumps(dj))
    for case in ("prostate_00", "prostate_01", "prostate_02"):
        for ch in range(len(channels)):
            vol(root / "imagesTr" / f"{case}_{ch:04d}.nii.gz", ch)
    for case in ("prostate_00", "prostate_01", "prostate_09"):
        vol(root / "labelsTr" / f"{case}.nii.gz", dtype=np.uint8)
    for ch in range(len(channels)):
        vol(root / "imagesTs" / f"prostate_05_{ch:04d}.nii.gz")
    return root


def test_nnunet_v2(tmp_path):
    root = _nnunet_v2(tmp_path / "Dataset005_Prostate")
    coll = ingest(cfg("nnunet", root, include_unlabelled=True))
    assert ids(coll) == ["prostate_00", "prostate_01", "prostate_05"]
    assert coll.labels == {1: "peripheral", 2: "transition"}
    c0 = coll.cases[0]
    assert c0.image_paths == tuple(str(root / "imagesTr" / f"prostate_00_{c:04d}.nii.gz")
                                   for c in (0, 1))
    assert c0.label_path == str(root / "labelsTr/prostate_00.nii.gz") and c0.modality == "MR"
    assert [c.split for c in coll.cases] == [None, None, "infer"]
    reason = coll.skipped[str(root / "imagesTr/prostate_02_0000.nii.gz")]
    assert "labelsTr/prostate_02.nii.gz" in reason
    assert "label without image" in coll.skipped[str(root / "labelsTr/prostate_09.nii.gz")]
    assert load_volume(c0).image.shape == (2, 8, 8, 4)


def test_nnunet_ct_modality_and_missing_channel(tmp_path):
    root = _nnunet_v2(tmp_path / "d", channels=("CT",))
    assert {c.modality for c in ingest(cfg("nnunet", root)).cases} == {"CT"}
    root = _nnunet_v2(tmp_path / "e")
    (root / "imagesTr/prostate_01_0001.nii.gz").unlink()
    with pytest.raises(LayoutError, match=r"prostate_01_0000.*case 'prostate_01' has channels \[0\]"
                                          r" but dataset.json lists channels \[0, 1\]"):
        ingest(cfg("nnunet", root))


def test_decathlon_v1(tmp_path):
    root = tmp_path / "Task01_BrainTumour"
    dj = {"modality": {"0": "FLAIR", "1": "T1w"}, "labels": {"0": "background", "1": "edema"},
          "training": [{"image": f"./imagesTr/BRATS_00{n}.nii.gz",
                        "label": f"./labelsTr/BRATS_00{n}.nii.gz"} for n in (1, 2, 3)],
          "test": ["./imagesTs/BRATS_100.nii.gz"]}
    root.mkdir()
    (root / "dataset.json").write_text(json.dumps(dj))
    four_d = np.stack([np.full((8, 8, 4), c, np.int16) for c in (3, 7)], axis=-1)
    import nibabel as nib  # 4D multi-modal files as the Decathlon ships them
    (root / "imagesTr").mkdir()
    (root / "imagesTs").mkdir()
    nib.save(nib.Nifti1Image(four_d, AFFINE), str(root / "imagesTr/BRATS_001.nii.gz"))
    nib.save(nib.Nifti1Image(four_d, AFFINE), str(root / "imagesTs/BRATS_100.nii.gz"))
    for c in (0, 1):  # nnU-Net v1 converted: per-channel files, json lists the case name
        vol(root / "imagesTr" / f"BRATS_002_{c:04d}.nii.gz", c)
    for n in (1, 2):
        vol(root / "labelsTr" / f"BRATS_00{n}.nii.gz", dtype=np.uint8)
    coll = ingest(cfg("nnunet", root, include_unlabelled=True))
    assert ids(coll) == ["BRATS_001", "BRATS_002", "BRATS_100"]
    assert coll.labels == {1: "edema"} and coll.cases[0].modality == "MR"
    assert coll.cases[0].meta == {"channels_in_4th_axis": True}
    assert len(coll.cases[1].image_paths) == 2 and coll.cases[2].split == "infer"
    assert list(coll.skipped) == [str(root / "imagesTr/BRATS_003.nii.gz")]
    v = load_volume(coll.cases[0])
    assert v.image.shape == (2, 8, 8, 4) and v.image[1].max() == 7


# -- folder ----------------------------------------------------------------------------------

def test_folder_with_patients(tmp_path):
    vol(tmp_path / "images/a1.nii.gz")
    vol(tmp_path / "images/a2.nrrd")
    vol(tmp_path / "images/b1.mha")
    vol(tmp_path / "images/c1.nii")
    vol(tmp_path / "labels/a1.nrrd", dtype=np.uint8)  # label extension may differ
    vol(tmp_path / "labels/a2.nrrd", dtype=np.uint8)
    vol(tmp_path / "labels/b1.nii.gz", dtype=np.uint8)
    vol(tmp_path / "labels/z9.nii.gz", dtype=np.uint8)
    (tmp_path / "images/scan.dcm").write_bytes(b"DICM")
    (tmp_path / "patients.csv").write_text("case_id,patient_id,group\na1,P1,left\na2,P1,right\n"
                                           "b1,P2,left\n")
    coll = ingest(cfg("folder", tmp_path))
    assert ids(coll) == ["a1", "a2", "b1"]
    assert [c.patient_id for c in coll.cases] == ["P1", "P1", "P2"]
    assert [c.group for c in coll.cases] == ["left", "right", "left"]
    assert {c.modality for c in coll.cases} == {"MR"} and coll.labels == {1: "foreground"}
    assert coll.cases[0].label_path == str(tmp_path / "labels/a1.nrrd")
    assert str(tmp_path / "labels/c1.nii") in coll.skipped[str(tmp_path / "images/c1.nii")]
    assert "label without image" in coll.skipped[str(tmp_path / "labels/z9.nii.gz")]
    assert "not a supported volume format" in coll.skipped[str(tmp_path / "images/scan.dcm")]


def test_folder_overrides_and_unlabelled(tmp_path):
    vol(tmp_path / "images/x.nii.gz")
    with pytest.raises(LayoutError, match="no cases found.*all unlabelled"):
        ingest(cfg("folder", tmp_path))
    coll = ingest(cfg("folder", tmp_path, include_unlabelled=True, modality="CT",
                      labels={3: "tumour"}))
    assert [(c.case_id, c.label_path, c.modality) for c in coll.cases] == [("x", None, "CT")]
    assert coll.labels == {3: "tumour"}


def test_duplicate_case_ids_name_both_files(tmp_path):
    vol(tmp_path / "images/a.nii.gz")
    vol(tmp_path / "images/a.nrrd")
    with pytest.raises(LayoutError) as err:
        ingest(cfg("folder", tmp_path, include_unlabelled=True))
    assert "duplicate image 'a'" in str(err.value)
    assert "a.nii.gz" in str(err.value) and "a.nrrd" in str(err.value)


def test_duplicate_ids_across_groups(tmp_path):
    root = tmp_path / "ASOCA"
    for g in ("Normal", "Diseased"):
        vol(root / g / "CTCA/case_1.nrrd")
        vol(root / g / "Annotations/case_1.nrrd")
    with pytest.raises(LayoutError, match="duplicate case id 'case_1'") as err:
        ingest(cfg("asoca", root))
    assert "Normal/CTCA/case_1.nrrd" in str(err.value)
    assert "Diseased/CTCA/case_1.nrrd" in str(err.value)


def test_patients_csv_missing_column(tmp_path):
    vol(tmp_path / "images/a.nii.gz")
    (tmp_path / "patients.csv").write_text("case,patient\na,P1\n")
    with pytest.raises(LayoutError, match=r"patients.csv: missing column\(s\) case_id, "
                                          r"patient_id; found columns: case, patient"):
        ingest(cfg("folder", tmp_path, include_unlabelled=True))


# -- CSV manifest ----------------------------------------------------------------------------

def test_csv_manifest(tmp_path):
    vol(tmp_path / "scans/s1.nii.gz")
    vol(tmp_path / "scans/s2.nii.gz")
    vol(tmp_path / "masks/s1.nii.gz", dtype=np.uint8)
    outside = vol(tmp_path.parent / f"{tmp_path.name}_abs.nrrd")
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists/m.csv").write_text(
        "image,label,patient_id,group,case_id,split\n"
        "../scans/s1.nii.gz,../masks/s1.nii.gz,P1,g1,,train\n"
        f"{outside},,P2,,abs,valid\n"
        "../scans/s2.nii.gz,../masks/s2.nii.gz,P3,g2,,\n"
        "../scans/s3.nii.gz,,P4,,,\n")
    coll = ingest(cfg("csv", tmp_path, manifest=tmp_path / "lists/m.csv", include_unlabelled=True))
    assert ids(coll) == ["abs", "s1"]
    s1 = coll.cases[1]
    assert (s1.patient_id, s1.group, s1.split) == ("P1", "g1", "train")
    assert s1.image_paths == (str(tmp_path / "scans/s1.nii.gz"),)
    assert coll.cases[0].split == "val" and coll.cases[0].label_path is None
    assert "does not exist" in coll.skipped[str(tmp_path / "scans/s3.nii.gz")]
    assert str(tmp_path / "masks/s2.nii.gz") in coll.skipped[str(tmp_path / "scans/s2.nii.gz")]


def test_csv_missing_columns_and_default_manifest(tmp_path):
    (tmp_path / "manifest.csv").write_text("img,mask\na.nii.gz,b.nii.gz\n")
    with pytest.raises(LayoutError, match=r"manifest.csv: missing column\(s\) image, label, "
                                          r"patient_id; found columns: img, mask"):
        ingest(cfg("csv", tmp_path))


# -- COCO 2D ---------------------------------------------------------------------------------

def _picture(path: Path, w=12, h=8) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((h, w, 3), 90, np.uint8)).save(path)


def _roboflow(folder: Path, stems, patient=None) -> None:
    images, anns = [], []
    for i, stem in enumerate(stems):
        _picture(folder / f"{stem}.jpg")
        rec = {"id": i, "file_name": f"{stem}.jpg", "width": 12, "height": 8}
        if patient:
            rec["patient_id"] = patient
        images.append(rec)
        anns.append({"id": i, "image_id": i, "category_id": 1 + i % 2,
                     "segmentation": [[1, 1, 6, 1, 6, 5, 1, 5]], "area": 20, "bbox": [1, 1, 5, 4]})
    cats = [{"id": 0, "name": "vessels", "supercategory": "none"},
            {"id": 1, "name": "artery", "supercategory": "vessels"},
            {"id": 2, "name": "vein", "supercategory": "vessels"},
            {"id": 3, "name": "unused", "supercategory": "vessels"}]
    (folder / "_annotations.coco.json").write_text(
        json.dumps({"images": images, "annotations": anns, "categories": cats}))


def test_coco_roboflow_splits(tmp_path):
    _roboflow(tmp_path / "train", ["a", "b", "shared"])
    _roboflow(tmp_path / "valid", ["c", "shared"], patient="P7")
    _roboflow(tmp_path / "test", ["d"])
    coll = ingest(cfg("coco2d", tmp_path))
    assert ids(coll) == ["a", "b", "c", "d", "train_shared", "valid_shared"]
    by = {c.case_id: c for c in coll.cases}
    assert [by[i].split for i in ids(coll)] == ["train", "train", "val", "test", "train", "val"]
    assert by["c"].patient_id == "P7" and by["a"].patient_id == "a"
    assert coll.labels == {1: "artery", 2: "vein"}  # super-category and unused ones dropped
    assert by["b"].label_path == str(tmp_path / "train/_annotations.coco.json")
    assert by["b"].meta == {"coco_image_id": 1} and by["b"].modality == "RGB"
    v = load_volume(by["b"])
    assert v.image.shape == (3, 12, 8, 1) and v.label[3, 3, 0] == 2 and v.label[0, 0, 0] == 0


def test_coco_single_folder(tmp_path):
    _roboflow(tmp_path, ["x", "y"])
    os.remove(tmp_path / "y.jpg")
    coll = ingest(cfg("coco2d", tmp_path))
    assert ids(coll) == ["x"] and coll.cases[0].split is None
    assert "not found" in coll.skipped[str(tmp_path / "y.jpg")]


@pytest.mark.parametrize("content,problem", [
    ("{not json", "not valid COCO JSON"),
    (json.dumps({"images": []}), "no 'annotations' list"),
    (json.dumps({"images": [{"id": 1, "file_name": "x.jpg"}],
                 "annotations": [{"id": 5, "image_id": 2, "category_id": 1}]}),
     "points at unknown image 2"),
    (json.dumps({"images": [{"id": 1, "file_name": "x.jpg"}], "categories": [{"id": 1}],
                 "annotations": [{"id": 5, "image_id": 1, "category_id": 9}]}),
     "annotation 5 has an unknown category 9"),
    (json.dumps({"images": [{"id": 1, "file_name": "../../etc/passwd"}], "annotations": []}),
     "'../../etc/passwd' points outside"),
    (json.dumps({"images": [{"id": 1, "file_name": "/etc/passwd"}], "annotations": []}),
     "points outside"),
])
def test_malformed_coco(tmp_path, content, problem):
    (tmp_path / "train").mkdir()
    (tmp_path / "train/_annotations.coco.json").write_text(content)
    with pytest.raises(LayoutError, match=problem) as err:
        ingest(cfg("coco2d", tmp_path))
    assert err.value.path == str(tmp_path / "train/_annotations.coco.json")


def test_coco_images_and_masks(tmp_path):
    for stem in ("p1", "p2"):
        _picture(tmp_path / "images" / f"{stem}.png")
    mask = np.zeros((8, 12), np.uint8)
    mask[2, 5] = 3
    (tmp_path / "masks").mkdir()
    Image.fromarray(mask).save(tmp_path / "masks/p1.png")
    Image.fromarray(mask).save(tmp_path / "masks/p9.png")
    coll = ingest(cfg("coco2d", tmp_path, labels={3: "lesion"}))
    assert ids(coll) == ["p1"] and coll.labels == {3: "lesion"}
    assert str(tmp_path / "masks/p2.png") in coll.skipped[str(tmp_path / "images/p2.png")]
    assert str(tmp_path / "masks/p9.png") in coll.skipped
    assert load_volume(coll.cases[0]).label[5, 2, 0] == 3


# -- registry, root, phantoms ----------------------------------------------------------------

def test_unknown_layout_lists_valid_names():
    bad = DataConfig.model_construct(layout="brats", root=None, labels={}, modality=None,
                                     manifest=None, include_unlabelled=False, phantoms=None)
    with pytest.raises(LayoutError, match="unknown dataset layout 'brats'; valid layouts: asoca, "
                                          "imagecas, nnunet, folder, dicom, csv, coco2d, phantoms"):
        ingest(bad)


@pytest.mark.parametrize("layout", sorted(set(LAYOUTS) - {"phantoms"}))
def test_missing_root(tmp_path, layout):
    with pytest.raises(LayoutError, match="data.root is not set"):
        ingest(cfg(layout, None))
    with pytest.raises(LayoutError, match="dataset folder does not exist") as err:
        ingest(cfg(layout, tmp_path / "nowhere"))
    assert err.value.path == str(tmp_path / "nowhere")


def test_list_layouts():
    names = list_layouts()
    assert list(names) == list(LAYOUTS)
    assert all(d and "\n" not in d for d in names.values())


def test_phantoms_delegates_to_the_written_layout(tmp_path, monkeypatch):
    calls = []

    def write_dataset(root: Path, pcfg: PhantomConfig) -> Path:
        calls.append((root, pcfg))
        vol(root / "Data/1.img.nii.gz")
        vol(root / "Data/1.label.nii.gz", dtype=np.uint8)
        return root

    monkeypatch.setattr(phantoms_layout, "write_dataset", write_dataset)
    coll = ingest(cfg("phantoms", tmp_path / "ph", phantoms=PhantomConfig(layout="imagecas")))
    assert coll.layout == "phantoms(imagecas)" and ids(coll) == ["1"]
    assert calls[0][0] == tmp_path / "ph" and calls[0][1].layout == "imagecas"
    with pytest.raises(LayoutError, match="data.root is not set"):
        ingest(cfg("phantoms", None))


def test_real_phantoms(tmp_path):
    pytest.importorskip("samtune.data.phantoms")
    small = PhantomConfig(n_normal=1, n_diseased=1, n_test=1, shape=(32, 32, 16))
    coll = ingest(cfg("phantoms", tmp_path, phantoms=small, include_unlabelled=True))
    assert coll.layout == "phantoms(asoca)"
    assert sorted(c.group for c in coll.cases) == ["Diseased", "Diseased", "Normal", "Normal"]
    assert sum(c.split == "infer" for c in coll.cases) == 2
    v = load_volume(next(c for c in coll.cases if c.label_path))
    assert v.shape == (32, 32, 16) and v.label.max() >= 1


# -- real data -------------------------------------------------------------------------------

def test_folder_of_symlinks_into_shared_data(tmp_path, shared_data):
    links = {"images/brain1.nrrd": "nrrd_mri/brain1_image.nrrd",
             "labels/brain1.nrrd": "nrrd_mri/brain1_label.nrrd",
             "images/ct.nii.gz": "ct_mr_multiorgan/example_ct_sm.nii.gz",
             "labels/ct.nii.gz": "ct_mr_multiorgan/example_seg.nii.gz"}
    for link, target in links.items():
        (tmp_path / link).parent.mkdir(exist_ok=True)
        (tmp_path / link).symlink_to(shared_data / target)
    coll = ingest(cfg("folder", tmp_path))
    assert ids(coll) == ["brain1", "ct"]
    assert coll.cases[0].image_paths == (str(tmp_path / "images/brain1.nrrd"),)  # link kept
    assert coll.fingerprints[str(tmp_path / "images/ct.nii.gz")] == file_sha256(
        shared_data / links["images/ct.nii.gz"])
    brain, ct = (load_volume(c) for c in coll.cases)
    assert brain.shape == (256, 256, 25) and ct.shape == (122, 101, 30)
    np.testing.assert_allclose(ct.spacing, (3, 3, 3))
    np.testing.assert_allclose(brain.spacing, (0.78125, 0.78125, 6.5))
    original = read_image(shared_data / links["images/brain1.nrrd"])[1]
    np.testing.assert_allclose(brain.affine, original)
    np.testing.assert_allclose(brain.label_affine, brain.affine, atol=1e-4)
    assert brain.label.shape == brain.shape and set(np.unique(brain.label).tolist()) == {0, 1}
