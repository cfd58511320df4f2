"""The one place that talks to MLflow: run parameters, per-epoch metrics, artifacts, the model.

`mlflow` is imported inside the functions, so importing samtune never needs it. Run-level
logging goes to `run_id` when given, else to the active run (a ZenML step with the MLflow
experiment tracker has one); `tracking_uri=None` means MLflow's current tracking URI. Model
logging uses MLflow's fluent API: it logs into the active run when there is one.

The model is logged "from code" (a three-line script that builds `SamtuneSegmenter`, see
`samtune.lifecycle.flavour`) with the `samtune` package as a code path: no pickle in the artifact,
only the weights (a torch state dict), the resolved config (JSON) and the pixel statistics.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import re
import subprocess
import tempfile
from collections.abc import Iterator, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

MAX_PARAM_VALUE = 6000  # mlflow.utils.validation.MAX_PARAM_VAL_LENGTH (MLflow 3)
MAX_KEY = 250  # MAX_ENTITY_KEY_LENGTH
BATCH = 100  # MAX_PARAMS_TAGS_PER_BATCH
# Distributions the reloaded model needs (pinned to the versions installed when logging).
RUNTIME_PACKAGES = ("torch", "torchvision", "numpy", "pandas", "pillow", "pydantic", "pyyaml",
                    "segment-anything", "sam2", "mobilesam-mirror", "timm", "hydra-core", "iopath")
MODEL_SCRIPT = ("import mlflow\n"
                "from samtune.lifecycle.flavour import SamtuneSegmenter\n"
                "mlflow.models.set_model(SamtuneSegmenter())\n")


# ------------------------------------------------------------------ pure helpers
def _text(value: Any) -> str:
    """A parameter/tag value as text: strings as they are, everything else as JSON."""
    if isinstance(value, str):
        return value
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return json.dumps(value, default=str, sort_keys=True)


def _key(key: str) -> str:
    """MLflow keys allow alphanumerics, `_ - . / :` and spaces; anything else becomes `_`."""
    return re.sub(r"[^\w\-. /:]", "_", key)[:MAX_KEY]


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested dict → {"a.b.c": text}; lists and None are JSON (`[1, 2]`, `null`), values are
    truncated to MLflow's 6000 characters (ending in `...`); an empty dict becomes `{}`."""
    out: dict[str, str] = {}
    for k, v in config.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            out.update(flatten(v, f"{key}."))
            continue
        text = _text(v)
        if len(text) > MAX_PARAM_VALUE:
            text = text[:MAX_PARAM_VALUE - 3] + "..."
        out[_key(key)] = text
    return out


def config_hash(config: Mapping[str, Any]) -> str:
    """sha256 (hex, 16 characters) of the config as canonical JSON (sorted keys)."""
    text = json.dumps(config, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def git_commit(path: str | Path | None = None) -> str | None:
    """`git rev-parse HEAD` in `path` (default: the working directory); None outside a git
    repository, in one without commits, or without git."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=path, capture_output=True,
                             text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    sha = out.stdout.strip()
    return sha if out.returncode == 0 and re.fullmatch(r"[0-9a-f]{40,64}", sha) else None


def pip_requirements() -> list[str]:
    """`name==version` for each of RUNTIME_PACKAGES that is installed."""
    reqs = []
    for name in RUNTIME_PACKAGES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            reqs.append(f"{name}=={metadata.version(name)}")
    return reqs


# ------------------------------------------------------------------ run-level logging
def ensure_experiment(name: str, artifact_location: str | Path, *,
                      tracking_uri: str | None = None) -> str:
    """The id of experiment `name`, created with `artifact_location` when new. (A sqlite store
    otherwise puts artifacts under `./mlruns` of whatever the working directory is.) An existing
    experiment keeps its location; a different one is logged as a warning."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    location = Path(artifact_location).resolve().as_uri() \
        if "://" not in str(artifact_location) else str(artifact_location)
    found = client.get_experiment_by_name(name)
    if found is None:
        return client.create_experiment(name, artifact_location=location)
    if found.artifact_location.rstrip("/") != location.rstrip("/"):
        log.warning("experiment %s keeps its artifact location %s (not %s)", name,
                    found.artifact_location, location)
    return found.experiment_id


def _client_run(run_id: str | None, tracking_uri: str | None) -> tuple[Any, str]:
    import mlflow
    from mlflow import MlflowClient

    if run_id is None:
        run = mlflow.active_run()
        if run is None:
            raise RuntimeError("no active MLflow run: start one (mlflow.start_run) or pass run_id")
        run_id = run.info.run_id
    return MlflowClient(tracking_uri=tracking_uri), run_id


def log_params_flat(config: Mapping[str, Any], *, run_id: str | None = None,
                    tracking_uri: str | None = None) -> dict[str, str]:
    """Log `flatten(config)` as run parameters (batches of 100); returns what was logged."""
    from mlflow.entities import Param

    client, run_id = _client_run(run_id, tracking_uri)
    params = flatten(config)
    items = [Param(k, v) for k, v in params.items()]
    for i in range(0, len(items), BATCH):
        client.log_batch(run_id, params=items[i:i + BATCH])
    return params


def flatten_metrics(metrics: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """Nested dict → {"a.b": float} for numbers (int, float, numpy/torch scalars); None, bools,
    strings and other values are left out; NaN/inf are kept."""
    flat: dict[str, float] = {}
    for k, v in metrics.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            flat.update(flatten_metrics(v, f"{key}."))
        elif isinstance(v, bool) or v is None or isinstance(v, str):
            continue
        elif isinstance(v, (int, float)) or hasattr(v, "item"):
            with contextlib.suppress(TypeError, ValueError, RuntimeError):  # multi-element arrays
                flat[_key(key)] = float(v)
    return flat


def log_epoch(metrics: Mapping[str, Any], step: int, *, run_id: str | None = None,
              tracking_uri: str | None = None) -> dict[str, float]:
    """Log `flatten_metrics(metrics)` at `step` (e.g. the epoch, or the global step); returns
    what was logged."""
    import time

    from mlflow.entities import Metric

    client, run_id = _client_run(run_id, tracking_uri)
    flat = flatten_metrics(metrics)
    now = int(time.time() * 1000)
    items = [Metric(k, v, now, int(step)) for k, v in flat.items()]
    for i in range(0, len(items), 1000):  # MLflow's MAX_METRICS_PER_BATCH
        client.log_batch(run_id, metrics=items[i:i + 1000])
    return flat


def log_artifact(path: str | Path, artifact_path: str | None = None, *,
                 run_id: str | None = None, tracking_uri: str | None = None) -> None:
    """Upload a file (or a folder's contents) into the run's artifacts under `artifact_path`."""
    client, run_id = _client_run(run_id, tracking_uri)
    path = Path(path)
    if path.is_dir():
        client.log_artifacts(run_id, str(path), artifact_path)
    else:
        client.log_artifact(run_id, str(path), artifact_path)


def log_figure(path: str | Path, *, run_id: str | None = None,
               tracking_uri: str | None = None) -> None:
    """Upload a PNG (e.g. from `samtune.figures`) under the run's `figures/`."""
    log_artifact(path, "figures", run_id=run_id, tracking_uri=tracking_uri)


def log_config(config: Mapping[str, Any], *, name: str = "config.yaml", run_id: str | None = None,
               tracking_uri: str | None = None) -> None:
    """The resolved config as a YAML artifact (`config.yaml` at the run's artifact root)."""
    import yaml

    client, run_id = _client_run(run_id, tracking_uri)
    text = yaml.safe_dump(json.loads(json.dumps(config, default=str)), sort_keys=False)
    client.log_text(run_id, text, name)


# ------------------------------------------------------------------ model + registry
@contextlib.contextmanager
def _using(tracking_uri: str | None) -> Iterator[None]:
    """MLflow's fluent API pointed at `tracking_uri` for the block (None: left as it is)."""
    import mlflow

    if tracking_uri is None:
        yield
        return
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(tracking_uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(previous)


def log_model(weights_path: str | Path, config: Mapping[str, Any], *, input_example: Any,
              normalization: tuple[Any, Any] | None = None, name: str = "model",
              tracking_uri: str | None = None, extra_pip_requirements: list[str] | None = None
              ) -> str:
    """Log the fine-tuned model as an MLflow pyfunc (`SamtuneSegmenter`); returns its model URI.

    weights_path: the exported torch state dict of `build_model(config["model"])` (LoRA merged);
    config: the resolved config (`Config.to_dict()`, or just its `model` section);
    input_example: e.g. `{"image": H×W×3 uint8 array or nested list, "boxes": [[x0, y0, x1,
    y1]]}` (arrays are stored as lists) — the signature is inferred from it, then `image` is
    widened to any type (so a PNG path passes too) and `boxes` to a list of anything (int or
    float); normalization: (mean, std) 0–255 triples the model was trained with, e.g.
    `SliceDataset.normalization` (None: the model's own ImageNet statistics).
    """
    import mlflow
    from mlflow.models import infer_signature

    from samtune.lifecycle.flavour import input_signature

    weights_path = Path(weights_path)
    if not weights_path.is_file():
        raise FileNotFoundError(f"weights file {weights_path} not found")
    input_example = _plain_example(input_example)
    signature = input_signature(infer_signature(_example_frame(input_example)))
    samtune_dir = Path(__file__).resolve().parent
    with tempfile.TemporaryDirectory(prefix="samtune-model-") as tmp, _using(tracking_uri):
        tmp_dir = Path(tmp)
        (tmp_dir / "config.json").write_text(json.dumps(config, indent=2, default=str))
        prep = {} if normalization is None else {"mean": [float(x) for x in normalization[0]],
                                                 "std": [float(x) for x in normalization[1]]}
        (tmp_dir / "preprocessing.json").write_text(json.dumps(prep))
        script = tmp_dir / "samtune_segmenter.py"
        script.write_text(MODEL_SCRIPT)
        info = mlflow.pyfunc.log_model(
            name=name, python_model=str(script),
            artifacts={"weights": str(weights_path), "config": str(tmp_dir / "config.json"),
                       "preprocessing": str(tmp_dir / "preprocessing.json")},
            code_paths=[str(samtune_dir)], signature=signature, input_example=input_example,
            pip_requirements=pip_requirements() + list(extra_pip_requirements or []))
    log.info("logged model %s", info.model_uri)
    return info.model_uri


def _plain_example(example: Any) -> Any:
    """A dict example with numpy arrays/tensors as nested lists (what a JSON request holds)."""
    if isinstance(example, Mapping):
        return {k: v.tolist() if hasattr(v, "tolist") else v for k, v in example.items()}
    return example


def _example_frame(example: Any) -> Any:
    """A dict example as the one-row DataFrame MLflow turns it into at predict time."""
    import pandas as pd

    return pd.DataFrame({k: [v] for k, v in example.items()}) \
        if isinstance(example, Mapping) else example


def register_model(model_uri: str, name: str, tags: Mapping[str, Any] | None = None, *,
                   tracking_uri: str | None = None) -> str:
    """Register `model_uri` as a new version of the registered model `name` (created on first
    use), tagged with `tags` (e.g. dataset_fingerprint, config_hash, git_commit, test_dice);
    values become text (numbers as JSON), None values are left out. Returns the version."""
    import mlflow

    clean = {_key(str(k)): _text(v)[:MAX_PARAM_VALUE] for k, v in (tags or {}).items()
             if v is not None}
    with _using(tracking_uri):
        mv = mlflow.register_model(model_uri, name, tags=clean)
    log.info("registered %s version %s", name, mv.version)
    return str(mv.version)
