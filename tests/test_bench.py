"""Every benchmark under bench/ runs end to end at a tiny size and ends with its JSON line.

The figures themselves are not checked here (speed belongs to the benchmarks, not to timed
tests); what is checked is that each script still runs against the library as it is now and
reports the keys its documentation promises."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
RUNS = {
    "convert": (["--quick", "--n-small", "1", "--n-large", "1", "--n-naive", "1",
                 "--distinct", "1"], ["speedup_vs_naive", "samtune_s_per_vol"]),
    "fidelity": (["--models", "sam_tiny", "--repeats", "1"], ["min_mask_iou"]),
    "infer": (["--repeats", "1", "--shape", "32", "32", "16", "--depth", "8"],
              ["volume_slices_per_s", "extra_prompt_over_encoder"]),
    "train3d": (["--model", "sam_med3d_tiny", "--rounds", "1", "--repeats", "1", "--quick"],
                ["samples_per_s", "click_round_vs_encoder"]),
    "train": (["--quick", "--models", "sam_tiny", "--method-models", "sam_tiny",
               "--speed-model", "sam_tiny", "--speed-size", "64", "--speed-epochs", "2",
               "--model-3d", "sam_med3d_tiny", "--vit-slices", "2", "--cache-size", "64"],
              ["cache_ratio_vit_b", "speedup_vs_reference"]),
}


@pytest.mark.parametrize("name", RUNS)
def test_benchmark_runs_and_ends_with_its_json_line(name: str, tmp_path: Path) -> None:
    args, keys = RUNS[name]
    proc = subprocess.run([sys.executable, str(REPO / "bench" / f"{name}.py"), *args],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    last = proc.stdout.strip().splitlines()[-1]
    result = json.loads(last)
    for key in keys:
        assert isinstance(result[key], (int, float)) and math.isfinite(result[key]), key
