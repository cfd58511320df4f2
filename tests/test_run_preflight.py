"""run.py's preflight: folders the run writes are checked before any step (issue 12 §2)."""
from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

import pytest

import run
from samtune.cli.preflight import folders_written, write_problem
from samtune.config import load_config


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a 0o500 folder anyway")
def test_read_only_output_dir_stops_with_exit_2(tmp_path: Path,
                                                capsys: pytest.CaptureFixture) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        code = run.main(["--pipeline", "prepare", "--config", "demo", "--set",
                         f"output_dir={locked / 'out'}", "--set", f"stack.home={tmp_path / 'h'}"])
    finally:
        locked.chmod(0o700)
    out = capsys.readouterr().out
    assert code == 2 and "run stopped before any step" in out
    assert f"output_dir: cannot write into {locked / 'out'}" in out and "permission denied" in out
    assert not (tmp_path / "h").exists()


def test_read_only_file_system_names_each_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture) -> None:
    """A read-only mount (EROFS), simulated: works as root too."""
    ro = tmp_path / "ro"
    real = tempfile.mkstemp

    def mkstemp(*args, dir=None, **kwargs):  # noqa: A002  (tempfile's own name)
        if dir is not None and Path(dir).is_relative_to(ro):
            raise OSError(errno.EROFS, "Read-only file system", str(dir))
        return real(*args, dir=dir, **kwargs)

    ro.mkdir()
    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    code = run.main(["--pipeline", "finetune", "--config", "demo",
                     "--set", f"output_dir={ro / 'out'}", "--set", f"stack.home={ro / 'home'}",
                     "--set", f"train.cache_dir={tmp_path / 'cache'}"])
    out = capsys.readouterr().out
    assert code == 2
    assert f"output_dir: cannot write into {ro / 'out'} (its nearest existing parent {ro}): " \
           "read-only file system [Errno 30]; choose a writable folder (--set output_dir=PATH)" \
           in out
    assert "stack.home: cannot write" in out and "train.cache_dir" not in out
    assert list(ro.iterdir()) == [] and not (tmp_path / "cache").exists()


def test_folders_written_per_pipeline(tmp_path: Path) -> None:
    cfg = load_config("demo", [f"output_dir={tmp_path / 'o'}", f"data.root={tmp_path / 'd'}"])
    prepare = folders_written(cfg, "prepare", tmp_path)
    assert prepare == {"output_dir": tmp_path / "o", "stack.home": tmp_path / ".samtune",
                       "data.root": tmp_path / "d"}  # phantoms still to be generated
    assert "train.cache_dir" in folders_written(cfg, "finetune", tmp_path)
    assert write_problem(tmp_path / "new" / "deeper") is None
    assert not (tmp_path / "new").exists()  # probing creates nothing
    (tmp_path / "file").write_text("x")
    problem = write_problem(tmp_path / "file" / "sub")
    assert problem == f"{tmp_path / 'file'} is a file, not a folder"
