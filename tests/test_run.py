"""The CLI: dry runs for every shipped config, listings, exit codes."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import run
from pipelines import PIPELINES
from samtune.config import CONFIGS_DIR

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", sorted(p.stem for p in CONFIGS_DIR.glob("*.yaml")))
def test_dry_run_every_config(name: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code = run.main(["--pipeline", "prepare", "--config", name,
                     "--set", f"data.root={tmp_path}", "--dry-run"])
    out = capsys.readouterr().out
    assert code == 0
    assert f"root: {tmp_path}" in out
    for step_name, _ in PIPELINES["prepare"].plan:
        assert step_name in out


def test_dry_run_runs_nothing(tmp_path: Path) -> None:
    out_dir = tmp_path / "out"
    assert run.main(["--pipeline", "prepare", "--config", "demo", "--dry-run",
                     "--set", f"output_dir={out_dir}", "--set", f"stack.home={tmp_path / 'h'}"]) == 0
    assert not out_dir.exists() and not (tmp_path / "h").exists()


def test_exit_codes(capsys: pytest.CaptureFixture) -> None:
    assert run.main(["--pipeline", "prepare", "--config", "demo", "--set", "convert.img_sze=3",
                     "--dry-run"]) == 2
    assert "did you mean 'img_size'" in capsys.readouterr().out
    assert run.main(["--pipeline", "prepare", "--config", "missing_cfg"]) == 2
    assert run.main(["--config", "demo"]) == 2
    with pytest.raises(SystemExit) as exc:
        run.main(["--pipeline", "nope"])
    assert exc.value.code == 2


def test_listings(capsys: pytest.CaptureFixture) -> None:
    assert run.main(["--list-datasets", "--list-pipelines"]) == 0
    out = capsys.readouterr().out
    for layout in ("asoca", "imagecas", "nnunet", "folder", "csv", "coco2d", "phantoms"):
        assert f"  {layout} " in out
    assert "prepare" in out


def test_cli_entry_point_as_script() -> None:
    proc = subprocess.run([sys.executable, "run.py", "--list-pipelines"], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "prepare" in proc.stdout


def test_k8s_dry_run_resolves_remote_stack_and_step_pods(capsys: pytest.CaptureFixture) -> None:
    assert run.main(["--pipeline", "retrain", "--config", "retrain_k8s", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "# remote stack:" in out and "orchestrator" in out and "[kubernetes]" in out
    train = next(line for line in out.splitlines() if line.strip().startswith("train_model "))
    assert "gpu" in train and "nvidia.com/gpu" in train
    split = next(line for line in out.splitlines() if line.strip().startswith("split_dataset "))
    assert split.split()[1] == "cpu:" and "nvidia.com/gpu" not in split
    assert "cron '0 3 * * 1'" in out


def test_schedule_on_the_local_stack_is_refused(tmp_path: Path,
                                                capsys: pytest.CaptureFixture) -> None:
    code = run.main(["--pipeline", "retrain", "--config", "retrain", "--set",
                     "schedule.cron=0 3 * * 1", "--set", f"stack.home={tmp_path / 'state'}",
                     "--set", f"output_dir={tmp_path / 'out'}"])
    assert code == 1 and "no scheduler" in capsys.readouterr().out
    assert not (tmp_path / "out").exists()


def test_unreachable_mlflow_fails_before_any_step(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture) -> None:
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code = run.main(["--pipeline", "finetune", "--config", "demo", "--set",
                     f"stack.home={tmp_path / 'state'}", "--set", f"output_dir={tmp_path / 'out'}",
                     "--set", f"stack.mlflow_tracking_uri=http://127.0.0.1:{port}"])
    out = capsys.readouterr().out
    assert code == 1 and f"http://127.0.0.1:{port}" in out and "unreachable" in out
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name", ["asoca", "imagecas", "msseg", "ich", "nnunet"])
def test_real_configs_dry_run_with_medsam_and_warn_of_the_missing_file(
        name: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code = run.main(["--pipeline", "finetune", "--config", name, "--dry-run", "--set",
                     f"data.root={tmp_path}", "--set", f"model.checkpoints_dir={tmp_path / 'ck'}"])
    out = capsys.readouterr().out
    assert code == 0 and "name: medsam_vit_b" in out and "img_size: 1024" in out
    warning = next(line for line in out.splitlines() if line.startswith("WARNING")
                   and "checkpoint" in line)
    assert str(tmp_path / "ck" / "medsam_vit_b.pth") in warning and "would stop" in warning
    for step_name, _ in PIPELINES["finetune"].plan:
        assert step_name in out


@pytest.mark.parametrize("extra", [[], ["--download"]])
def test_missing_checkpoint_fails_before_zenml_is_touched(
        extra: list[str], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code = run.main(["--pipeline", "finetune", "--config", "asoca", *extra,
                     "--set", f"data.root={tmp_path / 'data'}",
                     "--set", f"model.checkpoints_dir={tmp_path / 'ck'}",
                     "--set", f"stack.home={tmp_path / 'state'}",
                     "--set", f"output_dir={tmp_path / 'out'}"])
    out = capsys.readouterr().out
    assert code == 1
    assert str(tmp_path / "ck" / "medsam_vit_b.pth") in out and "drive.google.com" in out
    assert "run failed before any step" in out
    assert ("yourself and put it at" in out) == bool(extra)  # --download tried, said why not
    assert not (tmp_path / "state").exists() and not (tmp_path / "out").exists()
    assert not (tmp_path / "ck" / "medsam_vit_b.pth").exists()


def test_prepare_needs_no_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert run.main(["--pipeline", "prepare", "--config", "asoca", "--dry-run", "--set",
                     f"data.root={tmp_path}", "--set", f"model.checkpoints_dir={tmp_path}"]) == 0
    assert "medsam_vit_b.pth not found" not in capsys.readouterr().out
