"""Folder-backed artifacts: a disk that fills while storing says where, and keeps nothing."""
from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

import pytest

from materializers.coco_dataset import CocoDatasetMaterializer
from samtune.data.datasets import CocoDataset
from samtune.data.storage import StorageFullError


def test_disk_full_while_storing_removes_the_partial_artifact(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch):
    src = tmp_path / "scratch" / "coco"
    (src / "images").mkdir(parents=True)
    for n in range(3):
        (src / "images" / f"s{n}.png").write_bytes(b"x" * 1000)
    (src / "annotations.json").write_text("{}")
    uri = tmp_path / "store" / "convert_to_coco" / "coco_slices" / "abc"
    calls = []

    def full(a, b, *args, **kwargs):  # hard links fail across devices, the copy fills the disk
        calls.append(b)
        if len(calls) > 2:
            raise OSError(errno.ENOSPC, "No space left on device", str(b))
        return shutil.copyfile(a, b)

    monkeypatch.setattr(os, "link", lambda a, b: (_ for _ in ()).throw(OSError(errno.EXDEV, "x")))
    monkeypatch.setattr(shutil, "copy2", full)
    data = CocoDataset(root=src, fingerprint="f", summary={}, temporary=True)
    with pytest.raises(StorageFullError) as err:
        CocoDatasetMaterializer(str(uri)).save(data)
    assert str(err.value).startswith(f"{uri}: no space left on the device while storing "
                                     "CocoDataset")
    assert "ZenML artifact store" in str(err.value) and err.value.needed_bytes == 3002
    assert not uri.exists() and not src.exists()  # no half artifact, no scratch folder
