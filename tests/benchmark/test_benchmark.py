"""The benchmark library: matrix expansion, dry-run lines, failing cells, peak memory, tables."""
from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

import run
import samtune.eval.volume_eval as volume_eval
import samtune.inference.model_source as model_source
import samtune.train.finetune as finetune
from samtune.benchmark import (
    PeakMemory,
    dataset_configs,
    dry_run_lines,
    expand_matrix,
    run_cell,
    write_benchmark,
)
from samtune.benchmark.report import best_cell, rank, to_markdown
from samtune.config import Config, ConfigError, load_config


def config(tmp_path: Path, **bench) -> Config:
    cfg = load_config("demo", [f"output_dir={tmp_path / 'out'}", f"data.root={tmp_path / 'd'}",
                               f"model.checkpoints_dir={tmp_path / 'ckpt'}"]).to_dict()
    cfg["benchmark"] = bench
    return Config.model_validate(cfg)


def test_matrix_is_datasets_by_models_by_methods_with_overrides(tmp_path: Path) -> None:
    cfg = config(tmp_path, models=["sam_tiny", "sam2_tiny"],
                 methods=["full", {"method": "lora", "lora": {"r": 4}}, "frozen"],
                 datasets=[{"name": "own"}, {"name": "small", "convert": {"img_size": 128}}],
                 overrides={"train.epochs": 2, "train.optimizer_kwargs.lr": 0.01})
    cells = expand_matrix(cfg)
    assert len(cells) == 2 * 2 * 3 and [c.index for c in cells] == list(range(12))
    assert [c.name for c in cells[:3]] == [
        "cell_0_sam_tiny_full_own", "cell_1_sam_tiny_lora_r4_own", "cell_2_sam_tiny_frozen_own"]
    assert [(c.dataset, c.model, c.method) for c in cells[9:]] == [
        ("small", "sam2_tiny", "full"), ("small", "sam2_tiny", "lora-r4"),
        ("small", "sam2_tiny", "frozen")]
    assert all(c.error is None and c.notes == () for c in cells)
    lora = cells[1].config
    assert lora["model"]["method"] == "lora" and lora["model"]["lora"]["r"] == 4
    assert lora["model"]["lora"]["alpha"] == 16.0  # the rest of the section kept
    assert cells[3].config["model"]["name"] == "sam2_tiny"
    for c in cells:
        assert c.config["train"]["epochs"] == 2 and c.config["train"]["optimizer_kwargs"] == {
            "lr": 0.01, "weight_decay": 0.01}
        assert c.config["output_dir"] == str(tmp_path / "out" / "benchmark" / "cells" / c.name)
        assert "benchmark" not in c.config
    assert {c.config["convert"]["img_size"] for c in cells[:6]} == {256}
    assert {c.config["convert"]["img_size"] for c in cells[6:]} == {128}
    assert {c.config["convert"]["window"] for c in cells} == {"cta"}  # merged, not replaced
    prepared = dataset_configs(cfg)
    assert list(prepared) == ["own", "small"]
    assert prepared["own"]["output_dir"] == str(tmp_path / "out")  # shares prepare's cache
    assert prepared["small"]["output_dir"] == str(tmp_path / "out" / "benchmark" / "datasets" /
                                                  "small")
    assert prepared["small"]["convert"]["img_size"] == 128
    named = dataset_configs(config(tmp_path, datasets=["demo"]))  # configs/demo.yaml as it is
    assert named["demo"]["data"]["root"] == ".samtune/demo-data"
    assert named["demo"]["output_dir"].endswith("benchmark/datasets/demo")


def test_empty_matrix_is_the_config_itself_and_names_bring_checkpoints(tmp_path: Path) -> None:
    (only,) = expand_matrix(config(tmp_path))
    assert (only.name, only.model, only.method, only.dataset) == ("cell_0_sam_tiny_full",
                                                                  "sam_tiny", "full", "demo")
    vit, custom = expand_matrix(config(tmp_path, models=[
        "sam_vit_b", {"name": "sam_tiny", "checkpoint": "mine.pt", "img_size": 128}]))
    assert vit.config["model"]["checkpoint"] == "sam_vit_b_01ec64.pth"  # the zoo's file
    assert vit.notes and "not found" in vit.notes[0] and "--download sam_vit_b" in vit.notes[0]
    assert custom.model == "sam_tiny-checkpointmine.pt-img_size128"
    assert custom.config["model"]["img_size"] == 128 and "mine.pt" in custom.notes[0]


def test_invalid_cells_carry_their_error(tmp_path: Path) -> None:
    cells = expand_matrix(config(tmp_path, models=["sam_tiny", "no_such_model",
                                                   {"name": "sam_tiny", "img_size": 100}],
                                 methods=["full", {"method": "lora", "lora": {"rr": 2}}],
                                 datasets=[{"name": "bad", "model": {}}, {"name": "own"},
                                           {"name": "worse", "convert": {"img_size": "x"}}]))
    assert len(cells) == 18
    assert all("keys ['model']" in c.error for c in cells[:6])  # dataset dict: data sections only
    assert all("dataset worse: convert.img_size" in c.error for c in cells[12:])
    assert list(dataset_configs(config(tmp_path, datasets=[{"name": "worse", "convert": {
        "img_size": "x"}}]))) == []  # never prepared
    cells = cells[:12]
    by_name = {(c.model, c.method): c for c in cells[6:]}
    assert by_name[("sam_tiny", "full")].error is None
    assert "model.lora.rr" in by_name[("sam_tiny", "lora-rr2")].error
    assert "unknown model 'no_such_model'" in by_name[("no_such_model", "full")].error
    assert "multiple of 16" in by_name[("sam_tiny-img_size100", "full")].error
    assert all(c.config is None for c in cells if c.error)
    with pytest.raises(ConfigError, match="overrides may not set"):
        load_config("demo", ["benchmark.overrides={convert.img_size: 64}"])


def test_dry_run_lists_cells(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code = run.main(["--pipeline", "benchmark", "--config", "demo", "--dry-run",
                     "--set", f"output_dir={tmp_path / 'out'}",
                     "--set", "benchmark.models=[sam_tiny, sam2_tiny]",
                     "--set", "benchmark.methods=[full, frozen, {method: lora, lora: {x: 1}}]"])
    out = capsys.readouterr().out
    assert code == 0 and not (tmp_path / "out").exists()
    assert "1 dataset(s) × 2 model(s) × 3 method(s) = 6 cells" in out
    for name in ("cell_0_sam_tiny_full", "cell_1_sam_tiny_frozen", "cell_4_sam2_tiny_frozen"):
        assert name in out
    assert out.count("INVALID") == 2 and "model.lora.x" in out
    lines = dry_run_lines(config(tmp_path, methods=["qlora"]))
    assert ("will fail: qlora needs a CUDA GPU" in "\n".join(lines)) != torch.cuda.is_available()


def test_failing_cells_fail_fast_and_are_recorded(tmp_path: Path) -> None:
    methods = ["full"] if torch.cuda.is_available() else ["full", "qlora"]
    cells = expand_matrix(config(tmp_path, models=[{"name": "sam_tiny", "checkpoint": "gone.pt"},
                                                   "sam_tiny"], methods=methods))
    missing = run_cell(cells[0], tmp_path / "no-dataset", [], {1: "artery"})
    assert missing["status"] == "failed" and "gone.pt does not exist" in missing["error"]
    assert missing["dice"] is None and missing["memory_kind"]
    folder = Path(missing["output_dir"])
    assert json.loads((folder / "record.json").read_text()) == missing
    assert "Traceback" in (folder / "error.txt").read_text()
    if not torch.cuda.is_available():
        qlora = run_cell(cells[-1], tmp_path / "no-dataset", [], {1: "artery"})
        assert qlora["status"] == "failed" and "qlora needs a CUDA GPU" in qlora["error"]
    invalid = expand_matrix(config(tmp_path, models=["nope"]))[0]
    record = run_cell(invalid.to_dict(), tmp_path, [], {})
    assert record["status"] == "failed" and "unknown model" in record["error"]
    assert record["output_dir"] is None


def test_the_matrix_goes_on_after_a_failed_cell(tmp_path: Path, monkeypatch) -> None:
    def fake_train(dataset_dir, model_cfg, train_cfg, out_dir, **_):
        if model_cfg.method == "frozen":
            raise RuntimeError("boom | on frozen\nsecond line")
        trainable = 10 if model_cfg.method == "lora" else 100
        return SimpleNamespace(root=out_dir, summary={"trainable_parameters": trainable,
                                                      "total_parameters": 100})

    def fake_evaluate(loaded, cases, convert, eval_cfg, out_dir, classes, **_):
        dice = 0.8 if loaded == "lora" else 0.6
        frame = pd.DataFrame({"case_id": ["a", "b"], "dice": [dice, dice], "iou": [0.5, 0.5],
                              "hd95_mm": [2.0, 4.0], "nsd": [np.nan, 0.9]})
        return SimpleNamespace(volume=frame)

    monkeypatch.setattr(finetune, "train_on_export", fake_train)
    monkeypatch.setattr(model_source, "load_model", lambda cfg, uri, **_: cfg.method)
    monkeypatch.setattr(volume_eval, "split_cases", lambda cases, d, split: cases)
    monkeypatch.setattr(volume_eval, "evaluate_volumes", fake_evaluate)
    cells = expand_matrix(config(tmp_path, methods=["frozen", "full", "lora", {"method": "x"}]))
    records = [run_cell(c, tmp_path, ["a", "b"], {1: "artery"}) for c in cells]
    assert [r["status"] for r in records] == ["failed", "ok", "ok", "failed"]
    assert records[1]["dice"] == 0.6 and records[1]["hd95_mm"] == 3.0 and records[1]["nsd"] == 0.9
    assert records[2]["trainable_params"] == 10 and records[2]["total_params"] == 100
    assert records[1]["train_seconds"] >= 0 and records[1]["peak_memory_mb"] > 0

    paths = write_benchmark(records, tmp_path / "bench")
    assert sorted(p.name for p in (tmp_path / "bench").iterdir()) == [
        "benchmark.csv", "benchmark.json", "benchmark.md"]  # no temporary files left
    table = pd.read_csv(paths["csv"])
    assert list(table["cell"]) == ["cell_2_sam_tiny_lora", "cell_1_sam_tiny_full",
                                   "cell_0_sam_tiny_frozen", "cell_3_sam_tiny_x"]
    assert ",10,100," in paths["csv"].read_text()  # parameter counts stay integers
    summary = json.loads(paths["json"].read_text())
    assert summary["best"] == "cell_2_sam_tiny_lora"
    assert (summary["ok"], summary["failed"]) == (2, 2)
    assert summary["cells"][2]["error"].startswith("RuntimeError: boom")
    md = paths["md"].read_text()
    assert "| ★ | cell_2_sam_tiny_lora | sam_tiny | lora | demo | 0.8000 | 0.5000 | 3.00 |" in md
    assert "10 / 100 (10.0 %)" in md
    assert md.index("cell_2_sam_tiny_lora") < md.index("cell_1_sam_tiny_full")
    failed = md[md.index("## Failed cells"):]
    assert "RuntimeError: boom \\| on frozen second line" in failed and "model.method" in failed


def test_ranking_and_best_cell() -> None:
    def row(cell: str, status: str, dice=None, iou=None, hd95=None) -> dict:
        return {"cell": cell, "model": "m", "method": "full", "dataset": "d", "status": status,
                "error": None if status == "ok" else "E", "dice": dice, "iou": iou,
                "hd95_mm": hd95, "nsd": None, "train_seconds": 1.0, "eval_seconds": 1.0,
                "trainable_params": None, "total_params": None, "peak_memory_mb": None}

    rows = [row("a", "ok"), row("b", "failed"), row("c", "ok", 0.7, 0.5, 3.0),
            row("d", "ok", 0.7, 0.5, 2.0)]
    assert [r["cell"] for r in rank(rows)] == ["d", "c", "a", "b"]
    assert best_cell(rows)["cell"] == "d" and best_cell(rows[:2]) is None
    md = to_markdown(rows[:2])
    assert "Best" not in md and "| ★" not in md and "- **b** (m, full, d): E" in md


def test_peak_memory_sees_a_transient_allocation(monkeypatch: pytest.MonkeyPatch) -> None:
    # this process only: helper processes of other tests (forkservers) come and go in a suite
    page = os.sysconf("SC_PAGE_SIZE") / 2**20
    monkeypatch.setattr(PeakMemory, "rss_mb", staticmethod(
        lambda: int(Path("/proc/self/statm").read_text().split()[1]) * page))
    import mmap

    with PeakMemory("cpu", interval_s=0.01) as memory:
        # fresh anonymous pages (malloc could reuse resident memory freed by earlier tests)
        block = mmap.mmap(-1, 64 * 2**20)
        block.write(b"\x01" * len(block))  # touched: resident
        for _ in range(100):
            if memory.peak_rss_mb - memory.start_rss_mb > 48:
                break
            torch.tensor(0.0).add_(1)
            __import__("time").sleep(0.01)
        block.close()
    assert memory.peak_mb - memory.start_rss_mb > 48
    assert memory.kind.startswith("process")


def test_dice_at_n_clicks_ranks_the_cells_and_is_checked_against_eval_clicks() -> None:
    from samtune.benchmark.runner import _score

    clicks = pd.DataFrame({"case_id": ["a", "a", "a"], "class": ["x"] * 3,
                           "model": ["evaluated", "evaluated", "zero-shot"],
                           "clicks": [1, 3, 3], "dice": [0.5, 0.8, 0.1]})
    assert _score("dice@3", 0.7, clicks) == 0.8 and _score("dice", 0.7, clicks) == 0.7
    base = {"status": "ok", "score_name": "dice@3", "iou": 0.5, "hd95_mm": 1.0, "nsd": 0.5,
            "model": "m", "method": "full", "dataset": "d", "error": None, "train_seconds": 1.0,
            "eval_seconds": 1.0, "trainable_params": 1, "total_params": 2, "peak_memory_mb": 1.0,
            "memory_kind": "rss", "start_rss_mb": 1.0}
    records = [{**base, "cell": "one_shot_better", "dice": 0.9, "score": 0.6},
               {**base, "cell": "clicks_better", "dice": 0.7, "score": 0.95}]
    assert [r["cell"] for r in rank(records)] == ["clicks_better", "one_shot_better"]
    assert best_cell(records)["cell"] == "clicks_better"
    assert "dice@3 0.9500" in to_markdown(records)
    assert load_config("demo", ["benchmark.score=dice@3"]).benchmark.score_clicks == 3
    with pytest.raises(ConfigError, match="must include 7"):
        load_config("demo", ["benchmark.score=dice@7"])
    with pytest.raises(ConfigError, match="pattern"):
        load_config("demo", ["benchmark.score=hd95"])
