"""`benchmark` end to end on tiny demo phantoms: a 2 × 2 matrix (sam_tiny, sam2_tiny × full,
frozen) plus a model whose checkpoint file is missing (two cells that must fail and be recorded
while the others run), in one ZenML pipeline with a temporary ZenML/MLflow home and a fake HOME.
"""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from tests.pipelines.cli import clean_env, run_cli, tiny_phantoms
pytestmark = pytest.mark.slow
MATRIX = ("benchmark.models=[sam_tiny, sam2_tiny, {name: sam_tiny, checkpoint: missing.pt}]",
          "benchmark.methods=[full, frozen]",
          "benchmark.overrides={train.epochs: 1, train.max_steps: 2, train.batch_size: 4, "
          "model.img_size: 128, train.device: cpu, train.patience: null, eval.qc_cases: 1}")


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess, Path]:
    tmp = tmp_path_factory.mktemp("benchmark")
    (tmp / "home").mkdir()
    sets = [*tiny_phantoms(tmp), "registry.model_name=bench-test", *MATRIX]
    return run_cli("benchmark", sets, clean_env(tmp / "home"), timeout=1200), tmp


def test_two_by_two_matrix_runs_and_failures_are_recorded(run) -> None:
    proc, tmp = run
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    bench = tmp / "out" / "benchmark"
    table = pd.read_csv(bench / "benchmark.csv")
    assert len(table) == 6
    ok = table[table["status"] == "ok"]
    pairs = sorted(zip(ok["model"], ok["method"]))
    assert pairs == [("sam2_tiny", "frozen"), ("sam2_tiny", "full"), ("sam_tiny", "frozen"),
                     ("sam_tiny", "full")]
    assert ok["dice"].between(0, 1).all() and ok["iou"].between(0, 1).all()
    assert (ok["dice"].diff().dropna() <= 0).all()  # ranked by Dice
    assert (ok["hd95_mm"] >= 0).all() and (ok["train_seconds"] > 0).all()
    full = ok[ok["method"] == "full"]
    frozen = ok[ok["method"] == "frozen"]
    assert (full["trainable_params"] == full["total_params"]).all()
    assert (frozen["trainable_params"] < frozen["total_params"]).all()
    assert (ok["peak_memory_mb"] > 0).all()
    failed = table[table["status"] == "failed"]
    assert len(failed) == 2 and failed["error"].str.contains("missing.pt").all()
    summary = json.loads((bench / "benchmark.json").read_text())
    assert summary["ok"] == 4 and summary["failed"] == 2 and summary["best"] == ok["cell"].iloc[0]
    md = (bench / "benchmark.md").read_text()
    assert f"★ | {summary['best']}" in md and "## Failed cells" in md
    for cell in ok["cell"]:
        assert (bench / "cells" / cell / "training" / "weights" / "full.pt").is_file()
        assert (bench / "cells" / cell / "evaluation" / "metrics" / "volume.csv").is_file()
    assert f"benchmark: {bench / 'benchmark.md'}" in proc.stdout


def test_nothing_written_to_home(run) -> None:
    _, tmp = run
    assert [p for p in (tmp / "home").rglob("*") if p.is_file()] == []
