"""Volume IO: round trips, geometry against SimpleITK, bad files, label handling, real data."""
from __future__ import annotations

import gzip
import hashlib
import json

import nibabel as nib
import nrrd
import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image

from samtune.data.cases import Case, DataError, VolumeReadError
from samtune.data.io import file_sha256, integral_labels, load_volume, read_image, write_volume


def _rotation(theta: float) -> np.ndarray:
    c, s = np.cos(theta), np.sin(theta)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]]) @ np.array(
        [[1, 0, 0], [0, np.cos(0.2), -np.sin(0.2)], [0, np.sin(0.2), np.cos(0.2)]])


def _affine(kind: str) -> np.ndarray:
    a = np.eye(4)
    if kind == "negative":  # like brain1: y direction flipped
        a[:3, :3] = np.diag([0.78, -0.78, 6.5])
    elif kind == "oblique":
        a[:3, :3] = _rotation(0.4) @ np.diag([0.7, 0.8, 1.25])
    else:
        a[:3, :3] = np.diag([1.0, 2.0, 3.0])
    a[:3, 3] = [-99.6, 12.5, -78.0]
    return a


def _volume(dtype, shape=(8, 7, 4), seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.random(shape) * 1000 - 200).astype(dtype)


EXTS = [".nii", ".nii.gz", ".nrrd", ".mha"]


@pytest.mark.parametrize("ext", EXTS)
@pytest.mark.parametrize("kind", ["plain", "negative", "oblique"])
@pytest.mark.parametrize("dtype", [np.int16, np.float32, np.uint8, np.int32])
def test_round_trip_keeps_array_dtype_and_affine(tmp_path, ext, kind, dtype):
    x, a = _volume(dtype), _affine(kind)
    path = write_volume(tmp_path / f"v{ext}", x, a)
    y, b, fmt = read_image(path)
    assert fmt == {".nii": "nifti", ".nii.gz": "nifti", ".nrrd": "nrrd", ".mha": "mha"}[ext]
    assert y.dtype == x.dtype
    np.testing.assert_array_equal(y, x)
    np.testing.assert_allclose(b, a, atol=1e-5)
    assert [p.name for p in tmp_path.iterdir()] == [f"v{ext}"]  # no temp file left


@pytest.mark.parametrize("ext", EXTS)
def test_world_coordinates_agree_with_simpleitk(tmp_path, ext):
    """Our RAS affine and ITK's LPS geometry name the same world point for every voxel."""
    a = _affine("oblique")
    path = write_volume(tmp_path / f"v{ext}", _volume(np.int16), a)
    img = sitk.ReadImage(str(path))
    for ijk in [(0, 0, 0), (7, 6, 3), (3, 1, 2)]:
        lps = np.array(img.TransformContinuousIndexToPhysicalPoint([float(v) for v in ijk]))
        ras = (a @ np.array([*ijk, 1.0]))[:3]
        np.testing.assert_allclose(ras, lps * [-1, -1, 1], atol=1e-4)


def test_detached_headers_written_by_other_tools(tmp_path):
    x, a = _volume(np.int16), _affine("oblique")
    img = sitk.ReadImage(str(write_volume(tmp_path / "v.mha", x, a)))
    sitk.WriteImage(img, str(tmp_path / "v.mhd"), True)  # .mhd + .zraw
    hdr = nrrd.read_header(str(write_volume(tmp_path / "v.nrrd", x, a)))
    nrrd.write(str(tmp_path / "d.nhdr"), x, hdr, detached_header=True, index_order="F")
    for name in ("v.mhd", "d.nhdr"):
        y, b, _ = read_image(tmp_path / name)
        np.testing.assert_array_equal(y, x)
        np.testing.assert_allclose(b, a, atol=1e-5)


def test_nifti_scaling(tmp_path):
    x = _volume(np.int16)
    img = nib.Nifti1Image(x, np.eye(4))
    img.header.set_slope_inter(1.0, 0.0)  # explicit identity scaling: keep int16
    nib.save(img, str(tmp_path / "one.nii.gz"))
    assert read_image(tmp_path / "one.nii.gz")[0].dtype == np.int16
    img.header.set_slope_inter(2.0, -1.0)  # real scaling: floats
    nib.save(img, str(tmp_path / "two.nii.gz"))
    y = read_image(tmp_path / "two.nii.gz")[0]
    assert np.issubdtype(y.dtype, np.floating)
    np.testing.assert_allclose(y, 2.0 * x - 1.0)


def test_nrrd_is_written_in_lps_with_gzip(tmp_path):
    path = write_volume(tmp_path / "v.nrrd", _volume(np.int16), _affine("negative"))
    hdr = nrrd.read_header(str(path))
    assert hdr["space"] == "left-posterior-superior"
    assert hdr["encoding"] == "gzip"
    np.testing.assert_allclose(hdr["space directions"], np.diag([-0.78, 0.78, 6.5]))
    np.testing.assert_allclose(hdr["space origin"], [99.6, -12.5, -78.0])


@pytest.mark.parametrize("space,flip", [
    ("RAS", [1, 1, 1]), ("right-anterior-superior", [1, 1, 1]),
    ("left-anterior-superior", [-1, 1, 1]), ("LPS", [-1, -1, 1])])
def test_nrrd_space_spellings(tmp_path, space, flip):
    dirs = np.array([[0.5, 0, 0], [0, -0.6, 0], [0, 0, 2.0]])
    nrrd.write(str(tmp_path / "v.nrrd"), _volume(np.int16), {
        "space": space, "space directions": dirs, "space origin": np.array([1.0, 2.0, 3.0])})
    _, a, _ = read_image(tmp_path / "v.nrrd")
    np.testing.assert_allclose(a[:3, :3], np.array(flip)[:, None] * dirs.T)
    np.testing.assert_allclose(a[:3, 3], np.array(flip) * [1, 2, 3])


def test_nrrd_vector_axis_becomes_components(tmp_path):
    x = _volume(np.float32, (3, 8, 7, 4))  # ITK puts the component axis first
    nrrd.write(str(tmp_path / "v.nrrd"), x, {
        "space": "left-posterior-superior", "kinds": ["vector", "domain", "domain", "domain"],
        "space directions": np.array([[np.nan] * 3, [1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]])})
    arr, _, _ = read_image(tmp_path / "v.nrrd")
    assert arr.shape == (8, 7, 4, 3)
    np.testing.assert_array_equal(arr[..., 2], x[2])
    vol = load_volume(Case("c", "c", (str(tmp_path / "v.nrrd"),), modality="RGB"))
    assert vol.image.shape == (3, 8, 7, 4)
    with pytest.raises(VolumeReadError, match=r"v\.nrrd: RGB-valued voxels .* scalar CT"):
        load_volume(Case("c", "c", (str(tmp_path / "v.nrrd"),)))  # CT: scalar voxels only


def test_picture_geometry_matches_simpleitk(tmp_path):
    rows = np.arange(6 * 10, dtype=np.uint8).reshape(6, 10)  # height 6, width 10
    Image.fromarray(rows).save(tmp_path / "p.png")
    arr, a, fmt = read_image(tmp_path / "p.png")
    assert fmt == "png" and arr.shape == (10, 6, 1)
    assert arr[9, 2, 0] == rows[2, 9]  # i = column, j = row
    np.testing.assert_array_equal(a, np.diag([-1.0, -1.0, 1.0, 1.0]))
    itk = sitk.ReadImage(str(tmp_path / "p.png"))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(itk).T, arr[..., 0])
    assert itk.GetDirection() == (1.0, 0.0, 0.0, 1.0)


def test_rgb_picture_gives_three_channels(tmp_path):
    rgb = np.zeros((4, 5, 3), np.uint8)
    rgb[1, 3] = (10, 20, 30)
    Image.fromarray(rgb).save(tmp_path / "p.png")
    vol = load_volume(Case("p", "p", (str(tmp_path / "p.png"),)))
    assert vol.image.shape == (3, 5, 4, 1)
    assert vol.image[:, 3, 1, 0].tolist() == [10, 20, 30]


def _nii(path, arr, affine=None):
    nib.save(nib.Nifti1Image(arr, np.eye(4) if affine is None else affine), str(path))
    return str(path)


def test_load_volume_stacks_channels_and_casts_float_labels(tmp_path):
    c0 = _nii(tmp_path / "c_0000.nii.gz", _volume(np.int16))
    c1 = _nii(tmp_path / "c_0001.nii.gz", _volume(np.int16, seed=1))
    lab = (np.arange(8 * 7 * 4).reshape(8, 7, 4) % 3).astype(np.float32)
    lp = _nii(tmp_path / "lab.nii.gz", lab)
    vol = load_volume(Case("c", "c", (c0, c1), lp))
    assert vol.image.shape == (2, 8, 7, 4) and vol.image.dtype == np.int16
    np.testing.assert_array_equal(vol.image[1], _volume(np.int16, seed=1))
    assert vol.label.dtype == np.uint8
    np.testing.assert_array_equal(vol.label, lab.astype(np.uint8))


def test_non_integral_float_label_is_returned_unchanged():
    lab = np.array([[[0.0, 0.5], [1.0, 1.0]]], np.float32)
    out = integral_labels(lab)
    assert out.dtype == np.float32 and np.array_equal(out, lab)
    assert integral_labels(np.array([[[0.0, 300.0]]])).dtype == np.int16
    assert integral_labels(np.array([[[np.nan, 1.0]]])).dtype == np.float64


def test_channels_of_different_shape_are_refused(tmp_path):
    a = _nii(tmp_path / "a.nii", _volume(np.int16))
    b = _nii(tmp_path / "b.nii", _volume(np.int16, (8, 7, 5)))
    with pytest.raises(VolumeReadError, match="b.nii.*channel shape"):
        load_volume(Case("c", "c", (a, b)))


def test_trailing_singleton_dimension_is_dropped(tmp_path):
    p = _nii(tmp_path / "a.nii.gz", _volume(np.int16, (8, 7, 4, 1)))
    assert load_volume(Case("c", "c", (p,))).image.shape == (1, 8, 7, 4)


def test_2d_nifti_where_3d_expected(tmp_path):
    p = _nii(tmp_path / "slice.nii.gz", _volume(np.int16, (8, 7)))
    with pytest.raises(VolumeReadError, match=r"slice\.nii\.gz.*2D image of shape 8×7"):
        load_volume(Case("c", "c", (p,)))
    assert load_volume(Case("c", "c", (p,)), require_3d=False).image.shape == (1, 8, 7, 1)


def test_4d_nifti_where_3d_expected(tmp_path):
    p = _nii(tmp_path / "dyn.nii.gz", _volume(np.int16, (8, 7, 4, 3)))
    with pytest.raises(VolumeReadError, match=r"dyn\.nii\.gz.*4D image of shape 8×7×4×3"):
        load_volume(Case("c", "c", (p,)))
    # Decathlon multi-modal files: the nnU-Net layout marks the 4th axis as channels
    vol = load_volume(Case("c", "c", (p,), meta={"channels_in_4th_axis": True}))
    assert vol.image.shape == (3, 8, 7, 4)


def test_truncated_gzip_names_the_file(tmp_path):
    p = tmp_path / "cut.nii.gz"
    _nii(p, _volume(np.float32, (16, 16, 16)))
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    with pytest.raises(VolumeReadError) as err:
        read_image(p)
    assert err.value.path == str(p) and "cannot read nifti file" in err.value.problem
    assert "\n" not in err.value.problem


@pytest.mark.parametrize("name,content,problem", [
    ("junk.nii", b"this is not nifti at all" * 20, "cannot read nifti"),
    ("junk.nrrd", b"NRRD0004\ntype: what\n", "cannot read nrrd"),
    ("junk.mha", b"ObjectType = Image\nNDims = x\n", "cannot read mha"),
    ("junk.png", b"\x89PNG broken", "cannot read png"),
    ("scan.dcm", b"DICM", "unknown file format '.dcm'"),
    ("notgz.nii.gz", gzip.compress(b"x" * 10), "cannot read nifti"),
])
def test_unreadable_files(tmp_path, name, content, problem):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(VolumeReadError, match=problem) as err:
        load_volume(Case("c", "c", (str(tmp_path / name),)))
    assert err.value.path == str(tmp_path / name)
    assert isinstance(err.value, DataError)


def test_missing_file(tmp_path):
    with pytest.raises(VolumeReadError, match="file not found"):
        read_image(tmp_path / "nope.nii.gz")


def test_failed_write_leaves_the_old_file(tmp_path):
    path = write_volume(tmp_path / "v.nrrd", _volume(np.int16), np.eye(4))
    before = path.read_bytes()
    with pytest.raises(ValueError, match="float16"):
        write_volume(path, _volume(np.float16), np.eye(4))
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["v.nrrd"]
    with pytest.raises(ValueError, match="cannot write '.png'"):
        write_volume(tmp_path / "v.png", _volume(np.int16), np.eye(4))


def test_file_sha256(tmp_path):
    (tmp_path / "f").write_bytes(b"abc" * 1000)
    assert file_sha256(tmp_path / "f") == hashlib.sha256(b"abc" * 1000).hexdigest()


def _coco(tmp_path, anns, width=10, height=6):
    Image.fromarray(np.zeros((height, width, 3), np.uint8)).save(tmp_path / "p.jpg")
    data = {"images": [{"id": 7, "file_name": "p.jpg", "width": width, "height": height}],
            "annotations": anns, "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]}
    (tmp_path / "ann.json").write_text(json.dumps(data))
    return Case("p", "p", (str(tmp_path / "p.jpg"),), str(tmp_path / "ann.json"),
                modality="RGB", meta={"coco_image_id": 7})


def test_coco_annotations_are_rasterised_later_ones_on_top(tmp_path):
    from pycocotools import mask as mask_utils

    m = np.zeros((6, 10), np.uint8, order="F")
    m[4:6, 0:2] = 1  # rows 4-5, columns 0-1
    rle = mask_utils.encode(m)
    rle["counts"] = rle["counts"].decode()
    anns = [{"id": 1, "image_id": 7, "category_id": 1, "segmentation": [[0, 0, 6, 0, 6, 4, 0, 4]]},
            {"id": 2, "image_id": 7, "category_id": 2,
             "segmentation": [[4, 0, 10, 0, 10, 4, 4, 4]]},
            {"id": 3, "image_id": 7, "category_id": 2, "segmentation": rle},
            {"id": 4, "image_id": 7, "category_id": 1, "segmentation": [], "bbox": [0, 0, 9, 5]}]
    vol = load_volume(_coco(tmp_path, anns))
    assert vol.image.shape == (3, 10, 6, 1) and vol.label.shape == (10, 6, 1)
    lab = vol.label[..., 0].T  # back to rows × columns
    assert lab[1, 1] == 1 and lab[1, 5] == 2 and lab[1, 8] == 2  # overlap: the later wins
    assert lab[5, 0] == 2 and lab[5, 5] == 0
    assert np.array_equal(np.unique(lab), [0, 1, 2])


def test_coco_size_mismatch(tmp_path):
    case = _coco(tmp_path, [])
    data = json.loads((tmp_path / "ann.json").read_text())
    data["images"][0]["width"] = 11
    (tmp_path / "ann.json").write_text(json.dumps(data))
    with pytest.raises(VolumeReadError, match="annotated size 11×6"):
        load_volume(case)


def test_mask_picture_holds_class_ids(tmp_path):
    Image.fromarray(np.zeros((4, 5, 3), np.uint8)).save(tmp_path / "a.png")
    mask = np.zeros((4, 5), np.uint8)
    mask[2, 3] = 4
    Image.fromarray(mask).save(tmp_path / "a_mask.png")
    vol = load_volume(Case("a", "a", (str(tmp_path / "a.png"),), str(tmp_path / "a_mask.png")))
    assert vol.label.shape == (5, 4, 1) and vol.label[3, 2, 0] == 4 and vol.label.sum() == 4


# -- real data (../shared/data) -------------------------------------------------------------

def test_real_nrrd_affine_matches_header(shared_data):
    path = shared_data / "nrrd_mri" / "brain1_image.nrrd"
    hdr = nrrd.read_header(str(path))
    arr, a, fmt = read_image(path)
    assert fmt == "nrrd" and arr.shape == (256, 256, 25) and arr.dtype == np.int16
    lps_dirs = np.asarray(hdr["space directions"])
    assert lps_dirs[1, 1] < 0  # the file's negative y direction …
    np.testing.assert_allclose(a[:3, :3], np.diag([-1, -1, 1]) @ lps_dirs.T)
    assert a[1, 1] > 0  # … becomes +y in RAS (negated with the LPS → RAS flip)
    np.testing.assert_allclose(a[:3, 3], [-1, -1, 1] * np.asarray(hdr["space origin"]))
    itk = sitk.ReadImage(str(path))
    lps = itk.TransformIndexToPhysicalPoint((10, 20, 5))
    np.testing.assert_allclose((a @ [10, 20, 5, 1])[:3], np.array(lps) * [-1, -1, 1], atol=1e-4)


def test_real_float_label_becomes_integer(shared_data):
    d = shared_data / "spinal_mri"
    vol = load_volume(Case("s", "s", (str(d / "sub-unf01_T1w.nii.gz"),),
                           str(d / "sub-unf01_T1w_seg-manual.nii.gz"), modality="MR"))
    assert nib.load(d / "sub-unf01_T1w_seg-manual.nii.gz").get_data_dtype() == np.float32
    assert np.issubdtype(vol.label.dtype, np.integer)
    assert set(np.unique(vol.label).tolist()) == {0, 1}
    assert vol.label.shape == vol.shape == (131, 141, 16)


def test_real_ct_shape_spacing_dtype(shared_data):
    d = shared_data / "ct_mr_multiorgan"
    vol = load_volume(Case("ct", "ct", (str(d / "example_ct_sm.nii.gz"),),
                           str(d / "example_seg.nii.gz")))
    assert vol.shape == (122, 101, 30) and vol.image.dtype == np.int16
    np.testing.assert_allclose(vol.spacing, (3.0, 3.0, 3.0))
    assert vol.label.shape == (122, 101, 30) and {1, 5, 52} <= set(np.unique(vol.label).tolist())
