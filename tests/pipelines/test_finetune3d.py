"""`finetune` and `infer` with a 3D model (sam_med3d_tiny, 32³ crops) end to end on phantoms:
the 3D export, crop training, crop evaluation beside 3D box-fill, volume + click evaluation,
registration, and prompted 3D inference."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.pipelines.cli import clean_env, run_cli, tiny_phantoms

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, subprocess.CompletedProcess],
                                                            Path]:
    tmp = tmp_path_factory.mktemp("finetune3d")
    (tmp / "home").mkdir()
    env = clean_env(tmp / "home")
    # 20 epochs × 16 foreground crops of the one training phantom (80 steps): enough to leave
    # the all-background plateau a from-scratch model sits on first (~5–10 epochs).
    sets = [*tiny_phantoms(tmp), "model.name=sam_med3d_tiny", "train.epochs=20",
            "train.crops_per_case=16", "train.crop_foreground=1.0", "train.warmup_steps=5",
            "train.optimizer_kwargs.lr=0.003", "train.scheduler=null", "train.patience=null",
            "train.pixel_loss_weight=0.2",
            "train.batch_size=4", "registry.model_name=ft3d-test", "registry.floor=0.0",
            "eval.clicks=[1,3]", f"eval.model_uri={tmp / 'out' / 'training'}"]
    out = {"finetune": run_cli("finetune", sets, env)}
    prompts = tmp / "prompts.json"  # the unlabelled Testset phantoms of tiny_phantoms
    prompts.write_text(json.dumps([{"case_id": c, "axis": "k", "slice": 12, "label": 1,
                                    "box": [10, 10, 37, 37]} for c in ("Diseased_3", "Normal_3")]))
    out["infer"] = run_cli("infer", [*sets, f"infer.prompts_file={prompts}"], env)
    return out, tmp / "out"


def test_finetune_trains_on_crops_and_scores_them_beside_3d_box_fill(runs) -> None:
    procs, out = runs
    proc = procs["finetune"]
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    index = json.loads((out / "dataset_3d" / "volumes3d" / "index.json").read_text())
    assert index["spacing"] == [1.5, 1.5, 1.5] and index["cases"]
    info = json.loads((out / "training" / "model.json").read_text())
    assert info["summary"]["img_size"] == 32 and info["summary"]["steps"] == 80
    report = json.loads((out / "metrics" / "slice_eval.json").read_text())
    n_test = sum(r["split"] == "test" for r in index["cases"].values())
    crops = {(r["case_id"], r["class_id"]) for r in report["instances"]}
    assert len(report["instances"]) == n_test == len(crops)  # one crop per (test case, class)
    assert 0.0 < report["metrics"]["instance_baseline_dice"] < 1.0
    # the fine-tuned tiny model beats filling the class's 3D box (measured 0.47 vs 0.24)
    assert report["metrics"]["instance_dice"] > report["metrics"]["instance_baseline_dice"]
    clicks = (out / "metrics" / "clicks.csv").read_text().splitlines()
    assert clicks[0] == "case_id,class,model,clicks,dice"
    rows = [line.split(",") for line in clicks[1:]]  # 2 click counts × (model, zero-shot base)
    assert sorted((r[2], r[3]) for r in rows) == sorted(
        [(m, c) for m in ("evaluated", "zero-shot") for c in ("1", "3")] * n_test)
    assert (out / "metrics" / "volume.csv").is_file() and (out / "report.html").is_file()
    assert "Created version '1' of model 'ft3d-test'" in proc.stdout + proc.stderr


def test_infer_clicks_each_prompt_row_in_its_crop(runs) -> None:
    procs, out = runs
    proc = procs["infer"]
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    summary = json.loads((out / "inference.json").read_text())
    assert summary["done"] == 2 and summary["failed"] == 0
    for record in summary["cases"].values():
        assert record["crops_predicted"] == 1 and Path(record["path"]).is_file()
