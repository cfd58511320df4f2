"""`finetune` end to end on tiny phantoms: prepare → train → evaluate → register in MLflow.

Runs run.py in a subprocess with a temporary ZenML/MLflow home and a fake HOME, then checks the
exports, the registered MLflow version and its tags, and the ZenML model version.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.pipelines.cli import REPO, clean_env, run_cli, tiny_phantoms
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess, Path]:
    tmp = tmp_path_factory.mktemp("finetune")
    (tmp / "home").mkdir()
    sets = [*tiny_phantoms(tmp), "model.img_size=128", "train.epochs=1", "train.batch_size=4",
            "registry.model_name=ft-test", "registry.floor=0.0",
            "eval.model_uri=models:/ft-test@champion", "train.qc_every=1",
            "train.export=[onnx]"]
    return run_cli("finetune", sets, clean_env(tmp / "home")), tmp


@pytest.fixture(scope="module")
def later_runs(run) -> dict[str, subprocess.CompletedProcess]:
    """After finetune, on the same state: retrain (same data → skipped), evaluate the champion
    from its MLflow URI, promote again (nothing changes)."""
    proc, tmp = run
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    env = clean_env(tmp / "home")
    sets = [a for a in proc.args if "=" in a and not a.startswith("-")]
    runs = {name: run_cli(name, sets + [f"output_dir={tmp / name}"], env)
            for name in ("retrain", "evaluate", "promote")}
    new_data = [f"output_dir={tmp / 'retrain_new'}", f"data.root={tmp / 'data_new'}",
                "data.phantoms.seed=1"]  # other volumes: another fingerprint
    runs["retrain_new"] = run_cli("retrain", sets + new_data, env)
    return runs


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
    for name in ("encoder.onnx", "decoder.onnx"):  # train.export: [onnx]
        assert (out / "training" / "weights" / name).is_file()
    assert (out / "training" / "curves.png").is_file()
    assert any((out / "qc").glob("*.png"))
    assert any((out / "training" / "qc").glob("epoch_0001_*.png"))  # QC during training


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
        "print('ZENML', mv.model.name, sorted(mv.run_metadata), 'STAGE', mv.stage)\n")
    env = clean_env(tmp / "home")
    env.update(ZENML_CONFIG_PATH=str(tmp / "state" / "zenml"), ZENML_ANALYTICS_OPT_IN="false",
               MLFLOW_DISABLE_TELEMETRY="true")
    check = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True,
                           text=True, timeout=300)
    assert check.returncode == 0, check.stderr[-3000:]
    tags = json.loads(check.stdout.splitlines()[0])
    for key in ("dataset_fingerprint", "config_hash", "test_instance_dice"):
        assert tags.get(key), (key, tags)
    zenml_line = next(line for line in check.stdout.splitlines() if line.startswith("ZENML"))
    assert "ft-test" in zenml_line and "model_uri" in zenml_line
    assert zenml_line.endswith("STAGE production")  # the champion's ZenML version follows


def test_nothing_written_to_home(run) -> None:
    _, tmp = run
    assert [p for p in (tmp / "home").rglob("*") if p.is_file()] == []


def test_volume_evaluation_outputs_and_first_champion(run) -> None:
    proc, tmp = run
    out = tmp / "out"
    for rel in ("metrics/volume.csv", "metrics/slice.csv", "metrics/global.json",
                "biomarkers.csv", "report.html"):
        assert (out / rel).is_file(), rel
    assert len(list((out / "predictions").glob("*.nrrd"))) == 1  # ASOCA NRRD in → NRRD out
    assert "volume Dice" in proc.stdout and "evaluation report" in proc.stdout
    promotion = json.loads((out / "promotion.json").read_text())
    assert promotion["applied"] and promotion["champion"] == "1"  # no champion + floor 0


def test_retrain_on_unchanged_data_skips_training(later_runs) -> None:
    proc = later_runs["retrain"]
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    text = proc.stdout + proc.stderr
    assert "training skipped" in text
    assert "train_model" not in proc.stdout.split("check_retrain")[-1]


def test_evaluate_champion_from_its_mlflow_uri(later_runs, run) -> None:
    proc = later_runs["evaluate"]
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = run[1] / "evaluate"
    g = json.loads((out / "metrics" / "global.json").read_text())
    assert "models:/ft-test@champion" in g["context"]["model"]
    assert (out / "report.html").is_file() and any((out / "predictions").iterdir())


def test_promote_again_changes_nothing(later_runs, run) -> None:
    proc = later_runs["promote"]
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    promotion = json.loads((run[1] / "promote" / "promotion.json").read_text())
    assert promotion["applied"] is False and promotion["champion"] == "1"


def test_retrain_on_new_data_trains_and_judges_against_the_champion(later_runs, run) -> None:
    proc = later_runs["retrain_new"]
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "train_model" in proc.stdout.split("check_retrain")[-1]  # the gate let it train
    promotion = json.loads((run[1] / "retrain_new" / "promotion.json").read_text())
    decision = promotion["decision"]
    assert promotion["challenger"] == "2" and decision["champion_mean"] is not None
    assert decision["pairs"] and all(p["champion"] is not None for p in decision["pairs"])
    if len(decision["pairs"]) < 2:  # one test volume is no evidence for a bootstrap CI
        assert not decision["promote"] and "at least 2" in decision["reason"]
    else:
        assert decision["ci_low"] is not None
    assert promotion["champion"] == ("2" if decision["promote"] else "1")
