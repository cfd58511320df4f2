"""Where a config's checkpoint should be and the message when it is not there."""
from __future__ import annotations

from pathlib import Path

import pytest

from samtune.config import load_config
from samtune.models.checkpoint_files import checkpoint_path, missing_checkpoint_message


def test_demo_needs_no_file_and_the_path_is_absolute(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    assert checkpoint_path(load_config("demo")) is None
    assert missing_checkpoint_message(load_config("demo")) is None
    monkeypatch.chdir(tmp_path)
    cfg = load_config("asoca", ["model.checkpoints_dir=ckpts"])
    assert checkpoint_path(cfg) == tmp_path / "ckpts" / "medsam_vit_b.pth"


def test_medsam_message_names_file_path_and_release_page(tmp_path: Path) -> None:
    cfg = load_config("asoca", [f"model.checkpoints_dir={tmp_path / 'ckpts'}"])
    msg = missing_checkpoint_message(cfg)
    assert msg is not None
    assert "medsam_vit_b.pth" in msg and str(tmp_path / "ckpts" / "medsam_vit_b.pth") in msg
    assert "drive.google.com/drive/folders/1ETWmi4AiniJeWOt6HAsYgTjYv_fkgzoN" in msg
    assert "--download cannot fetch it" in msg  # no direct URL in the zoo


def test_zoo_file_with_url_points_at_download(tmp_path: Path) -> None:
    cfg = load_config("asoca", ["model.name=sam_vit_b", "model.checkpoint=sam_vit_b_01ec64.pth",
                                f"model.checkpoints_dir={tmp_path}"])
    msg = missing_checkpoint_message(cfg)
    assert msg is not None and str(tmp_path / "sam_vit_b_01ec64.pth") in msg
    assert "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth" in msg
    assert "python run.py --download sam_vit_b" in msg


def test_own_file_is_not_the_zoo_one_and_a_present_file_passes(tmp_path: Path) -> None:
    cfg = load_config("asoca", ["model.checkpoint=mine.pt", f"model.checkpoints_dir={tmp_path}"])
    msg = missing_checkpoint_message(cfg)
    assert msg is not None and "mine.pt" in msg and "not the official file" in msg
    assert "medsam_vit_b.pth" in msg  # says which file the zoo would expect
    (tmp_path / "mine.pt").write_bytes(b"")
    assert missing_checkpoint_message(cfg) is None
