"""`prepare` end to end on phantoms, in a temporary ZenML + MLflow home and a fake HOME.

One module-scoped sequence of runs (ZenML start-up dominates the cost):
fresh → unchanged (+ mtime touched) → split seed changed → one label file's content changed →
a threshold that cannot be met.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nrrd
import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from tests.pipelines.cli import REPO, clean_env
PREPARE_STEPS = ("ingest_volumes", "validate_volumes", "convert_to_coco", "split_dataset")
pytestmark = pytest.mark.slow


class Runner:
    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.home = tmp / "fakehome"
        self.home.mkdir()
        self.data = tmp / "data"
        self.out = tmp / "out"

    def __call__(self, *overrides: str) -> subprocess.CompletedProcess:
        env = clean_env(self.home)
        env.update(PYTHONUNBUFFERED="1")
        sets = [f"stack.home={self.tmp / 'state'}", f"output_dir={self.out}",
                f"data.root={self.data}", "data.phantoms.n_normal=2",
                "data.phantoms.n_diseased=2", "data.phantoms.shape=[48,48,32]",
                "convert.img_size=48", "convert.min_component_area=0", "convert.workers=2",
                "split.ratios=[0.5,0.25,0.25]", "validate.min_valid_fraction=0.5", *overrides]
        cmd = [sys.executable, "run.py", "--pipeline", "prepare", "--config", "demo"]
        for s in sets:
            cmd += ["--set", s]
        return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True,
                              timeout=600)


def statuses(proc: subprocess.CompletedProcess) -> dict[str, str]:
    found = {}
    for line in proc.stdout.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] in PREPARE_STEPS:
            found[parts[0]] = parts[1]
    return found


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    runner = Runner(tmp_path_factory.mktemp("prepare"))
    results: dict[str, object] = {"runner": runner}
    results["fresh"] = runner()
    if (runner.out / "dataset").is_dir():  # later runs replace the export: keep this one
        shutil.copytree(runner.out / "dataset", runner.tmp / "fresh_dataset")
    results["label_voxels"] = {
        p.stem: int(np.count_nonzero(nrrd.read(str(p))[0]))
        for p in sorted(runner.data.glob("*/Annotations/*.nrrd"))}
    label = runner.data / "Normal" / "Annotations" / "Normal_1.nrrd"
    os.utime(label, (1_000_000_000, 1_000_000_000))  # mtime only: content unchanged
    results["again"] = runner()
    results["reseed"] = runner("split.seed=7")
    arr, header = nrrd.read(str(label))
    arr[arr.shape[0] // 2, arr.shape[1] // 2, arr.shape[2] // 2] = 7  # an undeclared label
    nrrd.write(str(label), arr, header)
    results["changed"] = runner("split.seed=7")
    results["strict"] = runner("split.seed=7", "validate.min_valid_fraction=1.0")
    return results


def _ok(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]


def test_fresh_run_exports_coco_with_exact_voxel_counts(runs: dict) -> None:
    _ok(runs["fresh"])
    fresh = runs["runner"].tmp / "fresh_dataset"
    assert json.loads((fresh / "dataset.json").read_text())["fingerprint"]
    # No resize happens (48 px slices, img_size 48), so every mask decodes to its area and per
    # case the decoded masks add up to the label volume's foreground voxel count.
    per_case: dict[str, int] = {}
    for split in ("train", "val", "test"):
        coco = COCO(str(fresh / split / "annotations.json"))
        for ann in coco.dataset["annotations"]:
            pixels = int(mask_utils.decode(ann["segmentation"]).sum())
            assert pixels == ann["area"]
            case = coco.imgs[ann["image_id"]]["case_id"]
            per_case[case] = per_case.get(case, 0) + pixels
    assert per_case == runs["label_voxels"]
    assert sorted(per_case) == ["Diseased_1", "Diseased_2", "Normal_1", "Normal_2"]


def test_no_patient_in_two_splits(runs: dict) -> None:
    fresh = runs["runner"].tmp / "fresh_dataset"
    seen: dict[str, str] = {}
    for split in ("train", "val", "test"):
        images = json.loads((fresh / split / "annotations.json").read_text())["images"]
        for img in images:
            assert seen.setdefault(img["patient_id"], split) == split
            assert (fresh / split / "images" / img["file_name"]).is_file()
    assert len(seen) == 4
    splits = json.loads((fresh / "splits.json").read_text())
    assert set(splits["patients"]) >= set(seen)


def test_rerun_is_served_from_cache_even_after_touching_mtime(runs: dict) -> None:
    _ok(runs["again"])
    st = statuses(runs["again"])
    assert st["ingest_volumes"] == "completed"
    assert [st[s] for s in PREPARE_STEPS[1:]] == ["cached"] * 3, st


def test_config_change_reruns_only_the_step_it_affects(runs: dict) -> None:
    _ok(runs["reseed"])
    st = statuses(runs["reseed"])
    assert st["validate_volumes"] == "cached" and st["convert_to_coco"] == "cached", st
    assert st["split_dataset"] == "completed", st


def test_changed_file_content_invalidates_and_quarantines(runs: dict) -> None:
    _ok(runs["changed"])
    st = statuses(runs["changed"])
    assert st["validate_volumes"] == "completed" and st["convert_to_coco"] == "completed", st
    runner: Runner = runs["runner"]
    report = json.loads((runner.out / "reports" / "validation.json").read_text())
    text = json.dumps(report)
    assert "Normal_1" in text and "7" in text
    html = (runner.out / "reports" / "validation.html").read_text()
    assert "Normal_1" in html
    cases = json.loads((runner.out / "dataset" / "splits.json").read_text())["cases"]
    assert "Normal_1" not in cases and "Normal_2" in cases


def test_unmet_valid_fraction_stops_with_one_clear_message(runs: dict) -> None:
    proc = runs["strict"]
    assert proc.returncode == 1
    out = proc.stdout + proc.stderr
    assert "run failed" in out and "below validate.min_valid_fraction=1" in out
    assert "Normal_1: undeclared label values [7]" in out
    assert "Traceback" not in out


def test_nothing_written_to_home(runs: dict) -> None:
    runner: Runner = runs["runner"]
    leftovers = [p for p in runner.home.rglob("*") if p.is_file()]
    assert leftovers == []
