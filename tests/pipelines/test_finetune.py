"""`finetune` end to end on tiny phantoms: prepare → train → evaluate → register in MLflow.

Runs run.py in a subprocess with a temporary ZenML/MLflow home and a fake HOME, then checks the
exports, the registered MLflow version and its tags, and the ZenML model version.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess, Path]:
    tmp = tmp_path_factory.mktemp("finetune")
    (tmp / "home").mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ZENML_", "MLFLOW_"))}
    env.update(HOME=str(tmp / "home"), XDG_CONFIG_HOME=str(tmp / "home" / ".config"),
               XDG_CACHE_HOME=str(tmp / "home" / ".cache"))
    sets = [f"stack.home={tmp / 'state'}", f"output_dir={tmp / 'out'}", f"data.root={tmp / 'data'}",
            f"train.cache_dir={tmp / 'cache'}", "data.phantoms.n_normal=2",
            "data.phantoms.n_diseased=2", "data.phantoms.shape=[48,48,24]", "convert.img_size=128",
            "model.img_size=128", "train.epochs=1", "train.batch_size=4", "registry.model_name=ft-test"]
    cmd = [sys.executable, "run.py", "--pipeline", "finetune", "--config", "demo"]
    for s in sets:
        cmd += ["--set", s]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    return proc, tmp


def test_finetune_runs_end_to_end_and_reports_dice_vs_box_fill(run) -> None:
    proc, tmp = run
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "test Dice" in proc.stdout and "box-fill baseline Dice" in proc.stdout
    out = tmp / "out"
    report = json.loads((out / "metrics" / "slice_eval.json").read_text())
    assert 0.0 <= report["metrics"]["instance_dice"] <= 1.0
    assert 0.5 < report["metrics"]["instance_baseline_dice"] < 1.0  # boxes around blobs
    info = json.loads((out / "training" / "model.json").read_text())
    assert info["parameters"]["trainable"] == info["parameters"]["total"] > 0  # method full
    assert (out / "training" / "weights" / "full.pt").is_file()
    assert (out / "training" / "curves.png").is_file()
    assert any((out / "qc").glob("*.png"))


def test_model_registered_with_tags_and_linked_to_zenml(run) -> None:
    proc, tmp = run
    assert proc.returncode == 0
    code = (
        "import mlflow, json\n"
        f"c = mlflow.MlflowClient(tracking_uri='sqlite:///{tmp / 'state' / 'mlflow.db'}')\n"
        "v = c.get_model_version('ft-test', '1')\n"
        "print(json.dumps(v.tags))\n"
        "from zenml.client import Client\n"
        "mv = Client().get_model_version('ft-test')\n"
        "print('ZENML', mv.model.name, sorted(mv.run_metadata))\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ZENML_", "MLFLOW_"))}
    env.update(HOME=str(tmp / "home"), ZENML_CONFIG_PATH=str(tmp / "state" / "zenml"),
               ZENML_ANALYTICS_OPT_IN="false", MLFLOW_DISABLE_TELEMETRY="true")
    check = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True,
                           text=True, timeout=300)
    assert check.returncode == 0, check.stderr[-3000:]
    tags = json.loads(check.stdout.splitlines()[0])
    for key in ("dataset_fingerprint", "config_hash", "test_instance_dice"):
        assert tags.get(key), (key, tags)
    zenml_line = next(line for line in check.stdout.splitlines() if line.startswith("ZENML"))
    assert "ft-test" in zenml_line and "model_uri" in zenml_line


def test_nothing_written_to_home(run) -> None:
    _, tmp = run
    assert [p for p in (tmp / "home").rglob("*") if p.is_file()] == []
