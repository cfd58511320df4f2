"""export_3d: files, index, atomicity and the reader's round trip."""
from __future__ import annotations

import json

import numpy as np
import pytest

import samtune.data.export3d as export3d
from samtune.data.cases import Case, DataError
from samtune.data.export3d import export_3d, load_index, read_case3d
from samtune.data.grid3d import Grid3D
from samtune.data.io import load_volume, write_volume
from samtune.data.phantoms import make_phantom, phantom_affine


def _cases(tmp_path, n: int = 2) -> list[Case]:
    cases = []
    for i in range(n):
        spacing = (0.9, 1.2, 2.0) if i % 2 else (2.0, 2.0, 2.0)
        image, label = make_phantom((24, 20, 16), spacing, seed=i)
        affine = phantom_affine((24, 20, 16), spacing, negative_direction=bool(i % 2))
        img, lab = tmp_path / "src" / f"case{i}.nii.gz", tmp_path / "src" / f"case{i}_seg.nrrd"
        write_volume(img, image, affine)
        write_volume(lab, label * (i + 1), affine)
        cases.append(Case(f"case{i}", f"p{i}", (str(img),), str(lab)))
    return cases


def test_export_writes_images_labels_and_index_that_round_trip(tmp_path) -> None:
    cases = _cases(tmp_path)
    cases.append(Case("nolabel", "p9", cases[0].image_paths))
    splits = {"case0": "train", "case1": "val", "nolabel": "infer"}
    out = export_3d(cases, splits, tmp_path / "ds", classes={1: "artery", 2: "vein"})
    assert out == tmp_path / "ds" / "volumes3d"
    index = load_index(tmp_path / "ds")
    assert index["spacing"] == [1.5, 1.5, 1.5]
    assert index["classes"] == {"1": "artery", "2": "vein"}
    assert sorted(index["cases"]) == ["case0", "case1", "nolabel"]
    for case in cases[:2]:
        rec = index["cases"][case.case_id]
        assert rec["split"] == splits[case.case_id]
        assert rec["image"] == f"images/{case.case_id}.nii.gz"
        assert rec["label"] == f"labels/{case.case_id}.nii.gz"
        assert rec["source_path"] == case.image_paths[0] and rec["source_shape"] == [24, 20, 16]
        grid = Grid3D.build(load_volume(case))
        image, label, affine = read_case3d(tmp_path / "ds", case.case_id)
        assert image.dtype == np.float32 and np.issubdtype(label.dtype, np.integer)
        assert list(image.shape) == rec["shape"] == list(grid.shape)
        assert np.array_equal(image, grid.image) and np.array_equal(label, grid.label)
        assert np.allclose(affine, grid.affine, atol=1e-5)
        assert np.allclose(rec["affine"], grid.affine) and np.allclose(
            rec["source_affine"], load_volume(case).affine)
    assert index["cases"]["case1"]["shape"] == [14, 16, 21]  # 24·0.9/1.5, 20·1.2/1.5, 16·2/1.5
    image, label, _ = read_case3d(out, "nolabel", index)
    assert label is None and index["cases"]["nolabel"]["label"] is None
    assert not any(p.name.startswith(".") for p in (tmp_path / "ds").iterdir())


def test_a_failure_mid_way_leaves_no_export_and_keeps_the_previous(tmp_path, monkeypatch) -> None:
    cases = _cases(tmp_path)
    splits = {"case0": "train", "case1": "val"}
    export_3d(cases[:1], splits, tmp_path / "ds")
    before = (tmp_path / "ds" / "volumes3d" / "index.json").read_text()
    real, calls = export3d.write_volume, []

    def failing(path, array, affine):  # the second case's label write dies
        calls.append(path)
        if len(calls) == 4:
            raise OSError("disk full")
        return real(path, array, affine)

    monkeypatch.setattr(export3d, "write_volume", failing)
    with pytest.raises(OSError, match="disk full"):
        export_3d(cases, splits, tmp_path / "ds")
    assert (tmp_path / "ds" / "volumes3d" / "index.json").read_text() == before
    assert [p.name for p in (tmp_path / "ds").iterdir()] == ["volumes3d"]
    assert not (tmp_path / "ds" / "volumes3d" / "images" / "case1.nii.gz").exists()


def test_an_unreadable_case_is_an_error_naming_its_file(tmp_path) -> None:
    cases = _cases(tmp_path)
    bad = tmp_path / "src" / "case1.nii.gz"
    bad.write_bytes(b"not a nifti")
    with pytest.raises(DataError, match="case1.nii.gz"):
        export_3d(cases, {"case0": "train", "case1": "val"}, tmp_path / "ds")
    assert not (tmp_path / "ds" / "volumes3d").exists()
    assert list((tmp_path / "ds").iterdir()) == []


def test_bad_ids_missing_splits_and_foreign_folders_are_refused(tmp_path) -> None:
    cases = _cases(tmp_path, 1)
    with pytest.raises(DataError, match="no split"):
        export_3d(cases, {}, tmp_path / "ds")
    with pytest.raises(DataError, match="unique file names"):
        export_3d([Case("a/b", "p", cases[0].image_paths)], {"a/b": "train"}, tmp_path / "ds")
    foreign = tmp_path / "ds" / "volumes3d"
    foreign.mkdir(parents=True)
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="not a 3D export"):
        export_3d(cases, {"case0": "train"}, tmp_path / "ds")
    assert (foreign / "notes.txt").read_text() == "mine"


def test_reader_errors_name_the_file(tmp_path) -> None:
    with pytest.raises(DataError, match="index.json"):
        load_index(tmp_path)
    export_3d(_cases(tmp_path, 1), {"case0": "test"}, tmp_path)
    with pytest.raises(DataError, match="no case 'x'"):
        read_case3d(tmp_path, "x")
    index = tmp_path / "volumes3d" / "index.json"
    data = json.loads(index.read_text())
    data["cases"]["case0"]["shape"] = [1, 2, 3]
    index.write_text(json.dumps(data))
    with pytest.raises(DataError, match="case0.nii.gz.*differs"):
        read_case3d(tmp_path, "case0")
