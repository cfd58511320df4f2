"""The `infer` step outside ZenML (its entrypoint) and its inputs, from a folder or from the
data section's unlabelled cases; tests/pipelines/test_wiring.py checks the pipeline's plan."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from samtune.config import DataConfig, InferConfig, PhantomConfig
from samtune.data.cases import DataError
from samtune.data.io import read_image
from samtune.data.io_formats import write_volume
from samtune.inference.infer import find_inputs

TINY = {"name": "sam_tiny", "img_size": 64}
CONVERT = {"img_size": 64, "intensity": "window", "window": "cta"}


def _phantoms(root: Path) -> DataConfig:
    return DataConfig(layout="phantoms", root=root, phantoms=PhantomConfig(
        n_normal=1, n_diseased=1, n_test=1, shape=(32, 32, 16)))


def test_inputs_are_the_unlabelled_cases_or_a_folder(tmp_path: Path) -> None:
    data = _phantoms(tmp_path / "data")
    unlabelled = find_inputs(InferConfig(), data)
    assert [c.case_id for c in unlabelled] == ["Diseased_2", "Normal_2"]
    assert all("Testset_" in c.image_paths[0] for c in unlabelled)
    every = find_inputs(InferConfig(cases="all"), data)
    assert len(every) == 4 and all(c.label_path is None for c in every)
    folder = tmp_path / "new"
    write_volume(folder / "x.nrrd", np.zeros((8, 8, 8), np.int16), np.eye(4))
    (folder / "notes.txt").write_text("not a volume")
    assert [c.case_id for c in find_inputs(InferConfig(input=folder), data)] == ["x"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no volumes to infer on"):
        find_inputs(InferConfig(input=tmp_path / "empty"), data)


def test_step_entrypoint_writes_masks_overlays_and_summary(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from steps import infer_volumes as step_module

    torch.manual_seed(0)
    logged: list[dict] = []
    monkeypatch.setattr(step_module, "log_metadata", lambda metadata: logged.append(metadata))
    folder = tmp_path / "new"
    affine = np.diag([-0.7, 0.7, 1.5, 1.0])
    rng = np.random.default_rng(0)
    for name in ("a.nii.gz", "b.nrrd"):
        write_volume(folder / name, rng.normal(100, 50, (20, 20, 8)).astype(np.int16), affine)
    (folder / "broken.mha").write_bytes(b"ObjectType = Image\nNDims = 3\n")
    inference = InferConfig(input=folder, points_per_side=2, pred_iou_thresh=0.0,
                            stability_score_thresh=0.0, overlays=1).model_dump(mode="json")
    summary = step_module.infer_volumes.entrypoint(
        inference=inference, data={"layout": "folder"}, convert=CONVERT, model_config=TINY,
        model_uri=None, output_dir=str(tmp_path / "out"))
    assert (summary["done"], summary["failed"]) == (2, 1)
    assert "broken.mha" in summary["cases"]["broken"]["error"]
    for case_id, ext in (("a", ".nii.gz"), ("b", ".nrrd")):
        out = tmp_path / "out" / "inference" / f"{case_id}{ext}"
        array, written, _ = read_image(out)
        assert array.shape == (20, 20, 8) and np.allclose(written, affine)
        assert summary["cases"][case_id]["path"] == str(out)
    assert len(list((tmp_path / "out" / "inference" / "overlays").glob("*.png"))) == 2
    assert json.loads((tmp_path / "out" / "inference.json").read_text()) == summary
    assert logged == [{"mode": "automatic", "model": "sam_tiny (random weights)",
                       "cases_done": 2, "cases_failed": 1, "cases_skipped": 0}]



def test_demo_prompts_file_fits_the_demo_testset(tmp_path: Path) -> None:
    """configs/demo_prompts.json (one box per vessel on a key slice of each unlabelled demo
    phantom) names the demo's Testset cases and stays inside their volumes."""
    from samtune.config import load_config
    from samtune.inference.infer import check_prompts, find_inputs
    from samtune.inference.prompts_file import read_prompts

    cfg = load_config("demo", [f"data.root={tmp_path / 'demo-data'}"])
    cases = find_inputs(cfg.infer, cfg.data)
    grouped, failed = check_prompts(read_prompts(cfg.infer.prompts_file), cases,
                                    cfg.infer.prompts_file)
    assert sorted(grouped) == sorted(c.case_id for c in cases) and not failed
