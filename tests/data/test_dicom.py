"""DICOM series: geometry round trip against the source's RAS affine, rescale, every bad-series
reason, label lookup, ingest through the `dicom` layout, and validate → convert → export3d →
oracle evaluation on a tiny DICOM dataset."""
from __future__ import annotations

import json
import locale
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from samtune.config import ConvertConfig, DataConfig, EvalConfig, ModelConfig, ValidateConfig
from samtune.data.cases import VolumeReadError
from samtune.data.io import load_volume, write_volume
from samtune.data.io_dicom import read_dicom_series, read_header
from samtune.data.layouts import ingest

LPS = np.array([-1.0, -1.0, 1.0])


@pytest.fixture(autouse=True)
def _keep_locale():
    """GDCM's writer (used here to make test series; samtune only reads) leaves the C locale
    behind, after which open() decodes as ASCII in later tests: put the locale back."""
    saved = locale.setlocale(locale.LC_ALL, None)
    yield
    locale.setlocale(locale.LC_ALL, saved)


def _rotation(theta: float) -> np.ndarray:
    c, s = np.cos(theta), np.sin(theta)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]]) @ np.array(
        [[1, 0, 0], [0, np.cos(0.2), -np.sin(0.2)], [0, np.sin(0.2), np.cos(0.2)]])


def _affine(kind: str) -> np.ndarray:
    """RAS affines; all right-handed in LPS (DICOM stacks slices along row × column)."""
    a = np.eye(4)
    if kind == "negative":  # x and z run backwards: slices stacked head → feet
        a[:3, :3] = np.diag([0.78, -0.78, -2.5])
    elif kind == "oblique":
        a[:3, :3] = _rotation(0.4) @ np.diag([0.7, 0.8, 1.25])
    elif kind == "left_handed":  # test_io's "negative": k runs against row × column
        a[:3, :3] = np.diag([0.78, -0.78, 6.5])
    else:
        a[:3, :3] = np.diag([1.0, 2.0, 3.0])
    a[:3, 3] = [-99.6, 12.5, -78.0]
    return a


def _volume(shape=(8, 7, 5), seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.integers(-600, 900, shape) * 2).astype(np.int16)  # even: slope 2 stays exact


def _fmt(values) -> str:
    return "\\".join(f"{float(v):.10g}" for v in values)


def write_series(folder: Path, volume: np.ndarray, affine: np.ndarray, *, uid: str = "1.2.3.4",
                 patient: str = "P 001", modality: str = "CT", slope: float = 1,
                 intercept: float = -1024, seed: int = 0, tags=None, ks=None,
                 names=None) -> list[Path]:
    """One file per slice k of an I×J×K int16 (or float) volume with a RAS affine, in shuffled
    name order (InstanceNumber shuffled too). `tags(k)` → per-slice tag overrides."""
    folder.mkdir(parents=True, exist_ok=True)
    m = LPS[:, None] * affine[:3, :3]
    spacing = np.linalg.norm(m, axis=0)
    direction = m / spacing
    origin = LPS * affine[:3, 3]
    ks = list(range(volume.shape[2])) if ks is None else ks
    perm = np.random.default_rng(seed).permutation(len(ks))
    writer = sitk.ImageFileWriter()
    writer.SetImageIO("GDCMImageIO")  # also for names without .dcm, as scanners write them
    writer.KeepOriginalImageUIDOn()
    out = []
    for n, k in enumerate(ks):
        out.append(_write_slice(writer, folder, volume[:, :, k], spacing, direction,
                                origin + k * m[:, 2], int(perm[n]), names and names[n],
                                {"0020|000e": uid, "0010|0020": patient, "0008|0060": modality,
                                 "0028|1052": f"{intercept:g}", "0028|1053": f"{slope:g}",
                                 **(tags(k) if tags else {})}))
    return out


def _write_slice(writer, folder: Path, plane: np.ndarray, spacing, direction, position,
                 number: int, name: str | None, extra: dict) -> Path:
    """One 2D slice (I×J plane) with its geometry and `extra` tags (they win)."""
    img = sitk.GetImageFromArray(np.ascontiguousarray(plane.T))  # rows = j, columns = i
    img.SetSpacing((float(spacing[0]), float(spacing[1])))
    values = {"0020|0011": "3", "0020|0013": str(number + 1), "0020|0032": _fmt(position),
              "0020|0037": _fmt(list(direction[:, 0]) + list(direction[:, 1])),
              "0028|0030": _fmt([spacing[1], spacing[0]]), "0018|0050": "2.5"}
    if plane.dtype.kind == "f":  # GDCM stores floats as int16 through the rescale
        values.update({"0028|0100": "16", "0028|0101": "16", "0028|0102": "15",
                       "0028|0103": "1"})
    for key, value in {**values, **extra}.items():
        img.SetMetaData(key, value)
    path = folder / (name or f"IM{number:04d}.dcm")
    writer.SetFileName(str(path))
    writer.Execute(img)
    return path


def _world(affine: np.ndarray, shape) -> np.ndarray:
    idx = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1).reshape(-1, 3)
    return idx @ affine[:3, :3].T + affine[:3, 3]


@pytest.mark.parametrize("kind", ["plain", "negative", "oblique"])
def test_round_trip_matches_the_source_affine_and_voxels(tmp_path, kind):
    x, a = _volume(), _affine(kind)
    files = write_series(tmp_path / "s", x, a)
    assert [p.name for p in files] != sorted(p.name for p in files)  # name order is shuffled
    raw = read_dicom_series(sorted(files))
    assert raw.format == "dicom" and raw.array.shape == x.shape
    np.testing.assert_allclose(raw.affine, a, atol=1e-4)
    np.testing.assert_array_equal(raw.array, x)  # intercept -1024 written, applied on read


def test_a_left_handed_source_comes_back_with_k_reversed_at_the_same_world_points(tmp_path):
    x, a = _volume(), _affine("left_handed")
    raw = read_dicom_series(write_series(tmp_path / "s", x, a))
    np.testing.assert_array_equal(raw.array, x[:, :, ::-1])
    flip = np.eye(4)
    flip[2, 2], flip[2, 3] = -1, x.shape[2] - 1
    np.testing.assert_allclose(raw.affine, a @ flip, atol=1e-4)
    np.testing.assert_allclose(_world(raw.affine, x.shape).reshape(*x.shape, 3)[:, :, ::-1],
                               _world(a, x.shape).reshape(*x.shape, 3), atol=1e-4)


def test_rescale_slope_and_intercept_are_applied(tmp_path):
    x = _volume(shape=(6, 5, 3))
    files = write_series(tmp_path / "s", x, _affine("plain"), slope=2, intercept=-1024)
    stored = np.frombuffer(files[0].read_bytes()[-6 * 5 * 2:], "<i2").reshape(5, 6).T
    k = round((read_header(files[0]).position[2] - _affine("plain")[2, 3]) / 3.0)
    np.testing.assert_array_equal(stored, (x[:, :, k] + 1024) // 2)  # the file holds raw values
    np.testing.assert_array_equal(read_dicom_series(files).array, x)
    # per-slice rescales (one fractional): read as float32, nothing truncated
    y = (np.arange(6 * 5 * 3).reshape(6, 5, 3) * 2 + np.array([0, 0, 0.5])).astype(np.float32)
    files = write_series(tmp_path / "t", y, _affine("plain"), tags=lambda k: {
        "0028|1053": ["1", "2", "1"][k], "0028|1052": ["0", "0", "0.5"][k]})
    raw = read_dicom_series(files)
    assert raw.array.dtype == np.float32
    np.testing.assert_array_equal(raw.array, y)


def _bad_series(folder: Path, problem: str) -> list[Path]:
    x, a = _volume(shape=(6, 5, 6)), _affine("plain")
    if problem == "mixed orientations":
        oblique = _fmt([1, 0, 0, 0, np.cos(0.3), np.sin(0.3)])
        return write_series(folder, x, a, tags=lambda k: {"0020|0037": oblique} if k % 2 else {})
    if problem == "missing slices":
        return write_series(folder, x, a, ks=[0, 1, 2, 4, 5])
    if problem == "non-uniform slice spacing":
        shifted = _fmt(LPS * a[:3, 3] + [0, 0, 3 * 3 + 1.1])
        return write_series(folder, x, a, tags=lambda k: {"0020|0032": shifted} if k == 3 else {})
    if problem == "multi-frame":
        folder.mkdir(parents=True)
        img = sitk.GetImageFromArray(np.zeros((4, 5, 6), np.uint16))
        img.SetMetaData("0020|000e", "1.2.3.4")
        writer = sitk.ImageFileWriter()
        writer.KeepOriginalImageUIDOn()
        writer.SetFileName(str(folder / "mf.dcm"))
        writer.Execute(img)
        return [folder / "mf.dcm"]
    if problem == "4D or repeated slices":
        return write_series(folder, x, a, ks=[0, 1, 2, 3, 4, 5] * 2,
                            names=[f"T{n // 6}_{n % 6}.dcm" for n in range(12)])
    if problem == "localiser mixed in":
        files = write_series(folder, x, a)
        scout = sitk.GetImageFromArray(np.zeros((9, 11), np.int16))
        for key, value in {"0020|000e": "1.2.3.4", "0010|0020": "P 001", "0008|0060": "CT",
                           "0020|0032": "0\\0\\0", "0020|0037": "1\\0\\0\\0\\0\\-1",
                           "0028|0030": "1\\1"}.items():
            scout.SetMetaData(key, value)
        writer = sitk.ImageFileWriter()
        writer.KeepOriginalImageUIDOn()
        writer.SetFileName(str(folder / "scout.dcm"))
        writer.Execute(scout)
        return [*files, folder / "scout.dcm"]
    raise AssertionError(problem)


BAD = ["mixed orientations", "missing slices", "non-uniform slice spacing", "multi-frame",
       "4D or repeated slices", "localiser mixed in"]


@pytest.mark.parametrize("problem", BAD)
def test_each_bad_series_is_refused_and_quarantined_with_its_reason(tmp_path, problem):
    files = _bad_series(tmp_path / "ds" / "P1" / "bad", problem)
    with pytest.raises(VolumeReadError) as err:
        read_dicom_series(files)
    assert problem in str(err.value) and str(tmp_path) in str(err.value)  # names a file
    write_series(tmp_path / "ds" / "P2" / "good", _volume(), _affine("plain"), uid="1.2.3.5",
                 patient="P2")
    collection = ingest(DataConfig(layout="dicom", root=tmp_path / "ds", include_unlabelled=True))
    assert [c.case_id for c in collection.cases] == ["P2_good"]
    reasons = {k: v for k, v in collection.skipped.items() if "series 1.2.3.4" in k}
    assert len(reasons) == 1 and problem in next(iter(reasons.values()))
    if problem == "missing slices":
        assert "about 1 slice(s) missing" in next(iter(reasons.values()))


def test_nested_and_flat_folders_ingest_with_meta_and_fingerprints(tmp_path):
    root = tmp_path / "ds"
    a = write_series(root / "P001" / "study1" / "CT", _volume(), _affine("oblique"),
                     uid="1.2.3.1", patient="P 001")
    write_series(root / "flat", _volume(seed=1), _affine("plain"), uid="1.2.3.2", patient="Q2",
                 modality="MR", intercept=0, tags=lambda k: {"0020|0011": "7"})  # no rescale:
    # with one GDCM may write Enhanced MR, whose geometry sits in functional groups
    write_series(root / "flat", _volume(seed=2), _affine("negative"), uid="1.2.3.3",
                 patient="Q2", tags=lambda k: {"0020|0011": "8"}, seed=3,
                 names=[f"B{n}" for n in range(5)])  # beside the other, no extension
    (root / "flat" / "notes.txt").write_text("ignored")
    (root / "flat" / "junk.bin").write_bytes(b"not dicom")
    col = ingest(DataConfig(layout="dicom", root=root, include_unlabelled=True))
    by_id = {c.case_id: c for c in col.cases}
    assert sorted(by_id) == ["P001_study1_CT", "flat_s7", "flat_s8"]
    ct = by_id["P001_study1_CT"]
    assert ct.patient_id == "P 001" and ct.modality == "CT" and by_id["flat_s7"].modality == "MR"
    assert ct.meta["rows"] == 7 and ct.meta["columns"] == 8 and ct.meta["modality"] == "CT"
    np.testing.assert_allclose(ct.meta["pixel_spacing_mm"], [0.8, 0.7], atol=1e-6)
    assert ct.meta["slice_thickness_mm"] == 2.5
    assert ct.meta["slice_spacing_mm"] == pytest.approx(1.25, abs=1e-5)
    assert sorted(ct.image_paths) == sorted(str(p) for p in a)  # every slice, in slice order
    assert set(col.fingerprints) >= set(ct.image_paths) and len(col.fingerprints) == 15
    assert list(col.skipped) == [str(root / "flat" / "junk.bin")]
    vol = load_volume(ct)
    assert vol.source_format == "dicom" and vol.image.shape == (1, 8, 7, 5)
    np.testing.assert_allclose(vol.affine, _affine("oblique"), atol=1e-4)
    np.testing.assert_array_equal(load_volume(by_id["flat_s8"]).image[0], _volume(seed=2))


def test_an_enhanced_mr_series_is_skipped_naming_its_iod(tmp_path):
    """Enhanced MR Image Storage: GDCM keeps its geometry in functional groups only."""
    write_series(tmp_path / "ds" / "mr", _volume(), _affine("plain"), modality="MR",
                 tags=lambda k: {"0008|0016": "1.2.840.10008.5.1.4.1.1.4.1"})
    write_series(tmp_path / "ds" / "ct", _volume(), _affine("plain"), uid="1.2.3.9")
    col = ingest(DataConfig(layout="dicom", root=tmp_path / "ds", include_unlabelled=True))
    assert [c.case_id for c in col.cases] == ["ct"]
    reason = col.skipped[f"{tmp_path / 'ds' / 'mr'} (series 1.2.3.4)"]
    assert "ImagePositionPatient (0020,0032) missing" in reason and "enhanced" in reason


def test_label_keys_uid_folder_path_folder_name_patient_and_ambiguous(tmp_path):
    root = tmp_path / "ds"
    x, a = _volume(), _affine("plain")
    for patient, uid in (("A", "1.9.1"), ("B", "1.9.2"), ("C", "1.9.3"), ("D", "1.9.4"),
                         ("E", "1.9.5")):
        write_series(root / patient / "series", x, a, uid=uid, patient=patient)
    write_series(root / "E" / "other", x, a, uid="1.9.6", patient="E")  # patient E: 2 series
    lab = (x > 0).astype(np.uint8)
    for key in ("1.9.1", "B_series", "D", "E", "series"):  # "series" names 5 folders: unused
        write_volume(root / "labels" / f"{key}.nii.gz", lab, a)
    write_volume(root / "labels" / "C_series.nrrd", lab, a)
    col = ingest(DataConfig(layout="dicom", root=root))
    keys = {c.case_id: c.meta["label_key"] for c in col.cases}
    assert keys == {"A_series": "1.9.1", "B_series": "B_series", "C_series": "C_series",
                    "D_series": "D"}
    assert np.array_equal(load_volume(col.cases[0]).label, lab)
    assert "label missing for series 1.9.5" in col.skipped[f"{root / 'E' / 'series'} "
                                                           "(series 1.9.5)"]
    assert "without a usable series" in col.skipped[str(root / "labels" / "E.nii.gz")]
    assert "without a usable series" in col.skipped[str(root / "labels" / "series.nii.gz")]


def _tiny_dataset(root: Path) -> DataConfig:
    """Two labelled CT series of a bright ball (HU 300 in -100) on oblique/negative grids."""
    shape = (24, 20, 6)
    ii, jj, kk = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    ball = ((ii - 12) ** 2 + (jj - 10) ** 2 + ((kk - 2.5) * 3) ** 2) < 40
    for n, kind in enumerate(("oblique", "negative")):
        x = np.where(ball, 300, -100).astype(np.int16)
        write_series(root / f"P{n}" / "ct", x, _affine(kind), uid=f"1.7.{n}", patient=f"P{n}")
        write_volume(root / "labels" / f"1.7.{n}.nii.gz", ball.astype(np.uint8), _affine(kind))
    return DataConfig(layout="dicom", root=root, labels={1: "ball"})


def test_a_dicom_dataset_validates_converts_and_exports(tmp_path):
    from samtune.data.convert import convert_collection
    from samtune.data.export3d import export_3d, read_case3d
    from samtune.data.validate import collect_facts, run_expectations

    col = ingest(_tiny_dataset(tmp_path / "ds"))
    assert [c.case_id for c in col.cases] == ["P0_ct", "P1_ct"]
    cfg = ValidateConfig(min_valid_fraction=0.0)
    result = run_expectations(collect_facts(col, cfg), cfg)
    assert result.passed == ["P0_ct", "P1_ct"], result.failed
    facts = result.facts.set_index("case_id")
    assert facts.loc["P1_ct", "spacing_k"] == pytest.approx(2.5, abs=1e-4)
    assert facts.loc["P1_ct", "orientation"] == "RPI"  # x and z run backwards (see _affine)
    convert = ConvertConfig(img_size=32, intensity="window", empty_slices="all", workers=1)
    summary = convert_collection(col, convert, tmp_path / "coco")
    coco = json.loads((tmp_path / "coco" / "annotations.json").read_text())
    assert len(coco["images"]) == 12 and len(coco["annotations"]) > 0, summary
    export_3d(col.cases, {"P0_ct": "train", "P1_ct": "val"}, tmp_path / "exp", (1.0, 1.0, 1.0))
    image, label, affine = read_case3d(tmp_path / "exp", "P1_ct")
    assert label is not None and label.max() == 1 and image.max() == pytest.approx(300, abs=1)


def test_the_oracle_scores_dice_one_on_a_dicom_dataset(tmp_path):
    from samtune.eval.volume_eval import evaluate_volumes
    from samtune.inference.model_source import load_model

    col = ingest(_tiny_dataset(tmp_path / "ds"))
    loaded = load_model(ModelConfig(name="oracle"), device="cpu")
    ev = EvalConfig(slice_metrics=False, qc_cases=0, biomarkers={})
    convert = ConvertConfig(img_size=32, intensity="window", empty_slices="all", workers=1)
    res = evaluate_volumes(loaded, col.cases, convert, ev, tmp_path / "run", {1: "ball"})
    assert list(res.volume["case_id"]) == ["P0_ct", "P1_ct"]
    assert min(res.volume["dice"]) >= 0.99
