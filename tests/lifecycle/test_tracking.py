"""MLflow tracking against a temporary sqlite store: params, metrics per step, artifacts, the
pyfunc model (logged, reloaded, predicting) and the registered version's tags."""
from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image

from samtune.lifecycle import tracking


# ------------------------------------------------------------------ pure helpers
def test_flatten_dotted_keys_json_values_and_truncation() -> None:
    flat = tracking.flatten({"model": {"name": "sam_tiny", "lora": {"r": 8, "targets": ["a"]}},
                             "train": {"lr": 1e-4, "resume": None, "amp": True, "kw": {}},
                             "odd key!": "x" * 7000})
    assert flat["model.name"] == "sam_tiny"
    assert flat["model.lora.r"] == "8" and flat["model.lora.targets"] == '["a"]'
    assert flat["train.lr"] == "0.0001" and flat["train.resume"] == "null"
    assert flat["train.amp"] == "true" and flat["train.kw"] == "{}"
    assert len(flat["odd key_"]) == 6000 and flat["odd key_"].endswith("...")


def test_config_hash_ignores_key_order() -> None:
    a = tracking.config_hash({"a": 1, "b": {"c": [1, 2]}})
    assert a == tracking.config_hash({"b": {"c": [1, 2]}, "a": 1})
    assert a != tracking.config_hash({"a": 2, "b": {"c": [1, 2]}})
    assert len(a) == 16


def test_git_commit(tmp_path) -> None:
    assert tracking.git_commit(tmp_path) is None  # not a repository
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.org", "-c",
           "commit.gpgsign=false"]
    subprocess.run(git + ["init", "-q", str(tmp_path)], check=True)
    assert tracking.git_commit(tmp_path) is None  # no commit yet
    subprocess.run(git + ["-C", str(tmp_path), "commit", "-q", "--allow-empty", "-m", "x"],
                   check=True)
    head = subprocess.run(["git", "-C", str(tmp_path), "rev-parse", "HEAD"], check=True,
                          capture_output=True, text=True).stdout.strip()
    assert tracking.git_commit(tmp_path) == head and len(head) == 40


# ------------------------------------------------------------------ against a sqlite store
@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One temporary sqlite tracking store per module (creating its tables takes seconds) and
    an experiment whose artifacts live beside it; MLflow's tracking URI is restored after."""
    import os

    import mlflow

    tmp = tmp_path_factory.mktemp("mlflow")
    previous_uri, previous_bar = mlflow.get_tracking_uri(), \
        os.environ.get("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR")
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    uri = f"sqlite:///{tmp}/mlflow.db"
    mlflow.set_tracking_uri(uri)
    experiment = mlflow.create_experiment("samtune-test", artifact_location=str(tmp / "art"))
    yield uri, experiment
    if mlflow.active_run():
        mlflow.end_run()
    mlflow.set_tracking_uri(previous_uri)
    if previous_bar is None:
        os.environ.pop("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", None)
    else:
        os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = previous_bar


def test_params_metrics_and_artifacts(store, tmp_path) -> None:
    import mlflow

    uri, experiment = store
    config = {"model": {"name": "sam_tiny", "lora": {"r": 8}}, "train": {"epochs": 2}}
    png = tmp_path / "curves.png"
    Image.new("RGB", (4, 4)).save(png)
    with mlflow.start_run(experiment_id=experiment) as run:
        tracking.log_params_flat(config)
        for step, (loss, dice) in enumerate([(0.9, 0.2), (0.5, 0.6)], start=1):
            logged = tracking.log_epoch({"loss": loss, "val": {"dice": np.float32(dice)},
                                         "note": "skip", "missing": None}, step)
        tracking.log_config(config)
        tracking.log_figure(png)
    assert logged == {"loss": 0.5, "val.dice": pytest.approx(0.6)}
    client = mlflow.MlflowClient(uri)
    data = client.get_run(run.info.run_id).data
    assert data.params == {"model.name": "sam_tiny", "model.lora.r": "8", "train.epochs": "2"}
    history = client.get_metric_history(run.info.run_id, "val.dice")
    assert [(m.step, round(m.value, 4)) for m in history] == [(1, 0.2), (2, 0.6)]
    assert "note" not in data.metrics and "missing" not in data.metrics
    files = {f.path for f in client.list_artifacts(run.info.run_id)}
    assert files == {"config.yaml", "figures"}
    assert [f.path for f in client.list_artifacts(run.info.run_id, "figures")] == \
        ["figures/curves.png"]
    local = client.download_artifacts(run.info.run_id, "config.yaml", str(tmp_path))
    assert yaml.safe_load(open(local)) == config
    # an explicit run id works after the run ended; no run at all is an error
    tracking.log_epoch({"test_dice": 0.7}, 0, run_id=run.info.run_id, tracking_uri=uri)
    assert client.get_run(run.info.run_id).data.metrics["test_dice"] == 0.7
    with pytest.raises(RuntimeError, match="no active MLflow run"):
        tracking.log_epoch({"x": 1.0}, 0)


def test_model_logged_reloaded_predicting_and_registered(store, tmp_path) -> None:
    import mlflow

    from samtune.config import ModelConfig
    from samtune.lifecycle.flavour import segment_boxes
    from samtune.models.registry import build_model

    uri, experiment = store
    torch.manual_seed(0)
    model = build_model(ModelConfig(name="sam_tiny")).eval()
    weights = tmp_path / "weights.pt"
    torch.save(model.state_dict(), weights)
    config = {"name": "demo", "model": {"name": "sam_tiny", "checkpoint": "missing.pth"}}
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)
    boxes = [[5, 5, 20, 25], [30.5, 10, 55, 35]]
    with mlflow.start_run(experiment_id=experiment):
        model_uri = tracking.log_model(
            weights, config, tracking_uri=uri,
            input_example={"image": image, "boxes": boxes[:1]})  # array: stored as lists
    assert mlflow.get_tracking_uri() == uri

    loaded = mlflow.pyfunc.load_model(model_uri)
    masks = loaded.predict({"image": image.tolist(), "boxes": boxes})
    assert len(masks) == 2
    assert all(m.shape == (40, 60) and m.dtype == np.uint8 for m in masks)
    assert set(np.unique(np.stack(masks)).tolist()) <= {0, 1}
    # the reloaded weights are the logged ones: same masks as the model in this process
    expected = segment_boxes(model, image, np.asarray(boxes, float))
    assert all(np.array_equal(a, b) for a, b in zip(masks, expected))
    assert any(m.any() for m in masks) or not any(e.any() for e in expected)
    # and they are the official predictor's (segment_anything.SamPredictor) masks
    from samtune.inference.fidelity import official_predict

    for box, mask in zip(boxes, masks):
        official = official_predict(model, image, box=np.asarray(box, float)).mask
        assert np.array_equal(official.astype(np.uint8), mask)
    # a PNG path works as well; a DataFrame gives the masks of all rows' boxes in order
    Image.fromarray(image).save(tmp_path / "slice.png")
    from_png = loaded.predict({"image": str(tmp_path / "slice.png"), "boxes": boxes})
    assert all(np.array_equal(a, b) for a, b in zip(from_png, masks))
    frame = pd.DataFrame({"image": [image.tolist(), image[:20].tolist()],
                          "boxes": [boxes, [[0, 0, 9, 9]]]})
    rows = loaded.predict(frame)
    assert [m.shape for m in rows] == [(40, 60), (40, 60), (20, 60)]
    assert loaded.metadata.signature.inputs.input_names() == ["image", "boxes"]

    tags = {"dataset_fingerprint": "abc123", "config_hash": tracking.config_hash(config),
            "git_commit": None, "test_dice": 0.8125}
    version = tracking.register_model(model_uri, "samtune-test", tags, tracking_uri=uri)
    again = tracking.register_model(model_uri, "samtune-test", {"test_dice": 0.9})
    assert (version, again) == ("1", "2")
    mv = mlflow.MlflowClient(uri).get_model_version("samtune-test", version)
    assert mv.tags == {"dataset_fingerprint": "abc123", "config_hash": tags["config_hash"],
                       "test_dice": "0.8125"}


def test_log_model_needs_the_weights_file(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="weights"):
        tracking.log_model(tmp_path / "none.pt", {"model": {"name": "sam_tiny"}},
                           input_example={"image": [[[0, 0, 0]]], "boxes": [[0, 0, 0, 0]]})


def test_pip_requirements_pin_installed_versions() -> None:
    from importlib.metadata import version

    reqs = tracking.pip_requirements()
    assert f"torch=={version('torch')}" in reqs
    assert f"segment-anything=={version('segment-anything')}" in reqs
    assert all(r.count("==") == 1 for r in reqs)


def test_segmenter_loads_complete_weights_with_training_statistics(tmp_path) -> None:
    from types import SimpleNamespace

    from samtune.config import ModelConfig
    from samtune.lifecycle.flavour import SamtuneSegmenter
    from samtune.models.registry import build_model

    model = build_model(ModelConfig(name="sam_tiny"))
    full, partial = tmp_path / "full.pt", tmp_path / "partial.pt"
    torch.save(model.state_dict(), full)
    torch.save({k: v for k, v in model.state_dict().items() if "mask_decoder" in k}, partial)
    torch.save({"version": 1, "model": model.state_dict(), "step": 3}, tmp_path / "ckpt.pt")
    (tmp_path / "config.json").write_text(json.dumps({"model": {"name": "sam_tiny"}}))
    (tmp_path / "prep.json").write_text(json.dumps({"mean": [10, 20, 30], "std": [2, 2, 2]}))

    def context(weights):
        return SimpleNamespace(artifacts={"weights": str(weights), "preprocessing":
                                          str(tmp_path / "prep.json"),
                                          "config": str(tmp_path / "config.json")})

    segmenter = SamtuneSegmenter()
    segmenter.load_context(context(full))
    assert segmenter.stats == ([10, 20, 30], [2, 2, 2])
    for name, value in model.state_dict().items():
        assert torch.equal(segmenter.model.state_dict()[name], value), name
    assert segmenter.predict(None, {"image": np.zeros((8, 8), np.uint8), "boxes": []}) == []
    with pytest.raises(RuntimeError, match="Missing key"):
        segmenter.load_context(context(partial))
    with pytest.raises(ValueError, match="not a state dict"):
        segmenter.load_context(context(tmp_path / "ckpt.pt"))


def test_flatten_metrics_keeps_numbers_only() -> None:
    flat = tracking.flatten_metrics({"loss": 1, "val": {"dice": np.float32(0.5),
                                                       "iou": torch.tensor(0.25)},
                                     "ok": True, "name": "x", "none": None,
                                     "vec": np.zeros(3), "nan": float("nan")})
    assert set(flat) == {"loss", "val.dice", "val.iou", "nan"}
    assert (flat["loss"], flat["val.dice"], flat["val.iou"]) == (1.0, 0.5, 0.25)
    assert np.isnan(flat["nan"])


def test_ensure_experiment_pins_the_artifact_location(store, tmp_path) -> None:
    import mlflow

    uri, _ = store
    first = tracking.ensure_experiment("pinned", tmp_path / "artifacts", tracking_uri=uri)
    again = tracking.ensure_experiment("pinned", tmp_path / "elsewhere", tracking_uri=uri)
    assert first == again
    location = mlflow.MlflowClient(uri).get_experiment(first).artifact_location
    assert location == (tmp_path / "artifacts").resolve().as_uri()
