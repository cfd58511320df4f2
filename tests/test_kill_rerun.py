"""kill -9 at any file operation of prepare or training, then a re-run: nothing that looks
complete is left by the killed run, and the re-run's result equals an uninterrupted run's."""
from __future__ import annotations

import hashlib
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests import crash_helper
from tests.train.test_loop import weights_equal

REPO = Path(__file__).resolve().parents[1]


def _tree(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _killed(*args: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "tests.crash_helper", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The uninterrupted run; every run reads the same case files (their paths are hashed)."""
    root = tmp_path_factory.mktemp("reference")
    (root / "cases").mkdir()
    crash_helper.prepare(root / "cases", root / "out")
    return {"cases": root / "cases",
            **{name: _tree(root / "out" / name) for name in ("coco", "dataset")}}


# 62 operations in all (60 PNG/link/rename steps of convert and export, then the final swaps)
@pytest.mark.parametrize("kill_at", [1, 12, 31, 40, 55, 60, 62])
def test_prepare_killed_then_rerun_equals_uninterrupted(tmp_path: Path, kill_at: int,
                                                         reference: dict) -> None:
    out = tmp_path / "out"
    _killed("prepare", str(reference["cases"]), str(out), str(kill_at))
    for name in ("coco", "dataset"):  # absent, or complete: never a half-written folder
        if (out / name).exists():
            assert _tree(out / name) == reference[name], f"{name} half-written at {kill_at}"
    crash_helper.prepare(reference["cases"], out)
    for name in ("coco", "dataset"):
        assert _tree(out / name) == reference[name]


def test_training_killed_while_checkpointing_resumes_to_the_uninterrupted_weights(
        tmp_path: Path) -> None:
    whole_model, _ = crash_helper.train_run(tmp_path / "whole")
    out = tmp_path / "killed"
    _killed("train", str(out), "4")  # epoch 2's torch.save: epoch 1's last.pt stays whole
    resumed_model, resumed = crash_helper.train_run(out, resume=out / "last.pt")
    assert resumed.steps == 9 and weights_equal(resumed_model, whole_model)  # bit for bit
