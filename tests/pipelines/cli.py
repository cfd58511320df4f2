"""Run `run.py` the way a user does, in a subprocess that cannot see the developer's ZenML /
MLflow settings and has a throw-away HOME (tests then check nothing was written there)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def clean_env(home: Path) -> dict[str, str]:
    """os.environ without ZENML_* / MLFLOW_*, with HOME and the XDG folders under `home`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ZENML_", "MLFLOW_"))}
    env.update(HOME=str(home), XDG_CONFIG_HOME=str(home / ".config"),
               XDG_CACHE_HOME=str(home / ".cache"))
    return env


def tiny_phantoms(tmp: Path) -> list[str]:
    """--set values: state, outputs, data and cache under `tmp`; 4 small phantoms, 128 px."""
    return [f"stack.home={tmp / 'state'}", f"output_dir={tmp / 'out'}",
            f"data.root={tmp / 'data'}", f"train.cache_dir={tmp / 'cache'}",
            "data.phantoms.n_normal=2", "data.phantoms.n_diseased=2",
            "data.phantoms.shape=[48,48,24]", "convert.img_size=128"]


def run_cli(pipeline: str, sets: list[str], env: dict[str, str], *, config: str = "demo",
            timeout: int = 900) -> subprocess.CompletedProcess:
    """`python run.py --pipeline PIPELINE --config CONFIG --set …` from the repository root."""
    cmd = [sys.executable, "run.py", "--pipeline", pipeline, "--config", config]
    for s in sets:
        cmd += ["--set", s]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout)
