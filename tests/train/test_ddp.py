"""Distributed training on the CPU: 2 gloo ranks under torchrun, on sam_tiny with a frozen encoder
and in-memory embeddings (fast).

The `ranks` fixture starts ONE torchrun job (`ddp.launch`; starting processes is what costs
here) running this module as its entry point (`_jobs`): each rank trains (a) the equivalence
run, (b) a run whose NaN shows on rank 1 only, (c) an uninterrupted run, a run stopped at
max_steps and its resume, and (d) runs `ddp_worker.main` on a tiny export, as
`run_distributed` has it do; the tests read what each rank saved. `run_distributed` itself is
tested with a stand-in for torchrun.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils

from samtune.config import ModelConfig, PromptConfig, TrainConfig
from samtune.models.base import Embeddings, PromptableModel
from samtune.train import ddp
from samtune.train import state as ckpt
from samtune.train.bookkeeping import peak_memory_mb
from samtune.train.embedding_store import EmbeddingStore
from samtune.train.loop import train
from samtune.train import ddp_worker
from samtune.train.step import EMPTY_BATCH, batch_order, epoch_batches
from tests.train.test_loop import Blobs, tiny_cfg, tiny_model, weights_equal
from tests.train.test_resume import RESUME_CFG

REPO = Path(__file__).resolve().parents[2]
WORLD, B = 2, 2  # ranks, per-rank batch: global batches of 4 over 9 slices → 4, 4, 1
# Deterministic prompts (no jitter, no points, all instances): the runs can match exactly.
# SGD, not Adam: some gradients are 0 in exact arithmetic (attention key biases: softmax ignores
# them) and rounding noise there, which Adam divides by its own size, would move them ~lr apart.
EQUIV = {"epochs": 2, "prompts": PromptConfig(bbox_shift=0), "optimizer": "SGD",
         "optimizer_kwargs": {"lr": 0.05, "momentum": 0.9}}
EXPORT_MODEL = ModelConfig(name="sam_tiny", img_size=64, method="frozen")


def frozen_model() -> PromptableModel:
    model = tiny_model()
    model.image_encoder.requires_grad_(False)
    return model


def cached(data: Blobs) -> Blobs:
    """`data` with the frozen encoder's embeddings in its items (the embedding cache's job)."""
    model = frozen_model()
    with torch.no_grad():
        embs = model.encode(model.normalize(torch.stack([it["image"] for it in data.items])))
    for i, item in enumerate(data.items):
        item["embeddings"] = embs.select(i)
    return data


def equiv_data() -> tuple[Blobs, Blobs]:
    return cached(Blobs(9, seed=3, instances=None)), cached(Blobs(3, seed=1, instances=1))


def _export(root: Path, n: int, seed: int) -> None:
    """A tiny export split: n 64² grey PNGs with one or two discs, COCO RLE annotations."""
    (root / "images").mkdir(parents=True)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:64, :64]
    images, anns = [], []
    for i in range(n):
        pixels = np.full((64, 64), 30, np.uint8)
        for _ in range(1 + i % 2):
            cx, cy = rng.integers(14, 50, 2)
            mask = (xx - cx) ** 2 + (yy - cy) ** 2 <= 36
            pixels[mask] = 200
            enc = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": 1, "iscrowd": 0,
                         "segmentation": {"size": enc["size"], "counts": enc["counts"].decode()},
                         "area": int(mask.sum()), "bbox": [0.0, 0.0, 1.0, 1.0]})
        Image.fromarray(pixels).save(root / "images" / f"s{i}.png")
        images.append({"id": i + 1, "file_name": f"s{i}.png", "width": 64, "height": 64,
                       "case_id": f"c{i // 3}"})
    coco = {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "vessel"}]}
    (root / "annotations.json").write_text(json.dumps(coco))


# ------------------------------------------------------------------ the torchrun job (2 ranks)
def _jobs(out: Path) -> None:
    torch.set_num_threads(1)
    worker_args = ["--dataset", str(out / "dataset"), "--config-json", str(out / "config.json"),
                   "--out", str(out / "bundle"), "--events", str(out / "events.jsonl"),
                   "--log-dir", str(out)]
    with ddp.process_group("gloo", "cpu") as ctx:
        writes: Counter = Counter()
        for name in ("save_state", "copy_state"):
            real = getattr(ckpt, name)
            setattr(ckpt, name, lambda *a, _f=real, _n=name: writes.update([_n]) or _f(*a))
        res: dict[str, Any] = {}
        model = frozen_model()
        run = train(model, *equiv_data(), tiny_cfg(batch_size=B, **EQUIV), out / "equiv")
        res["equiv"] = {"weights": ckpt.model_weights(model), "history": run.history,
                        "steps": run.steps}
        res["writes"] = dict(writes)

        data = cached(Blobs(9, seed=3, instances=1))
        bad = batch_order(9, B * WORLD, 0, 0)[1][WORLD * B - 1]  # rank 1's, in global batch 2
        emb = data.items[bad]["embeddings"]
        data.items[bad]["embeddings"] = Embeddings(emb.image * math.nan, emb.high_res)
        run = train(frozen_model(), data, None, tiny_cfg(batch_size=B), out / "nan")
        res["nan"] = {"stopped": run.stopped, "steps": run.steps, "message": run.message}

        cfg = tiny_cfg(**{**RESUME_CFG, "batch_size": B, "epochs": 2})
        train_data, val_data = cached(Blobs(9, instances=3)), cached(Blobs(3, seed=1, instances=1))
        whole = frozen_model()
        train(whole, train_data, val_data, cfg, out / "whole")
        part = train(frozen_model(), train_data, val_data,
                     cfg.model_copy(update={"max_steps": 4}), out / "split")
        resumed = frozen_model()
        run = train(resumed, train_data, val_data, cfg, out / "split", resume=part.last_checkpoint)
        res["resume"] = {"exact": weights_equal(resumed, whole), "part_steps": part.steps,
                         "steps": run.steps, "moved": not weights_equal(resumed, frozen_model())}
        torch.save(res, out / f"rank{ctx.rank}.pt")
        ddp_worker.main(worker_args)


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, Any]]]:
    out = tmp_path_factory.mktemp("ddp")
    _export(out / "dataset" / "train", 6, 0)
    _export(out / "dataset" / "val", 2, 1)
    train_cfg = tiny_cfg(epochs=1, batch_size=2, cache_dir=out / "cache")
    (out / "config.json").write_text(json.dumps({"model": EXPORT_MODEL.model_dump(mode="json"),
                                                 "train": train_cfg.model_dump(mode="json")}))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PYTHONPATH", str(REPO))
        proc = ddp.launch("tests.train.test_ddp", [str(out)], WORLD, log_file=out / "torchrun.log")
        rc = proc.wait(timeout=600)
    assert rc == 0, (out / "torchrun.log").read_text()[-5000:]
    return out, [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]


def test_two_ranks_of_b_step_as_one_process_of_2b(ranks, tmp_path: Path) -> None:
    _, results = ranks
    train_data, val_data = equiv_data()
    # Instances fall unevenly on the ranks (so a plain mean of the rank means would differ).
    counts = [[sum(len(train_data.items[i]["masks"]) for i in g[r * B:(r + 1) * B])
               for r in range(WORLD)] for g in batch_order(9, B * WORLD, 0, 0)]
    assert any(a != b for a, b in counts), counts
    model, start = frozen_model(), frozen_model()
    single = train(model, train_data, val_data, tiny_cfg(batch_size=B * WORLD, **EQUIV), tmp_path)
    mine = ckpt.model_weights(model)
    moved = max((mine[k] - v).abs().max().item() for k, v in ckpt.model_weights(start).items())
    assert moved > 1e-3
    for res in results:
        assert res["equiv"]["steps"] == single.steps == 6
        diff = max((mine[k] - v).abs().max().item() for k, v in res["equiv"]["weights"].items())
        assert diff < 1e-5, diff
        for theirs, ours in zip(res["equiv"]["history"], single.history):
            for key in ("loss", "seg_loss", "iou_loss", "val_dice"):
                assert theirs[key] == pytest.approx(ours[key], abs=1e-5), key
    w0, w1 = (r["equiv"]["weights"] for r in results)
    assert all(torch.equal(w0[k], w1[k]) for k in w0)  # the ranks never drift apart


def test_only_rank0_writes_and_keeps_every_ranks_rng(ranks) -> None:
    out, results = ranks
    assert results[1]["writes"] == {} and results[0]["writes"]["save_state"] >= 3
    assert sorted(p.name for p in (out / "equiv").iterdir()) == ["best.pt", "last.pt"]
    state = ckpt.load_state(out / "equiv" / "last.pt")
    assert state["world_size"] == WORLD and len(state["rng_ranks"]) == WORLD
    gens = [r["generators"]["prompts"] for r in state["rng_ranks"]]
    assert torch.equal(state["rng"]["generators"]["prompts"], gens[0])
    assert not torch.equal(gens[0], gens[1])  # one prompt stream a rank


def test_nan_on_one_rank_stops_every_rank(ranks) -> None:
    _, results = ranks
    assert results[0]["nan"] == results[1]["nan"]
    assert results[0]["nan"]["stopped"] == "nan" and results[0]["nan"]["steps"] == 1
    assert "loss is nan at step 2 (epoch 1, batch 2)" in results[0]["nan"]["message"]


def test_resume_under_ddp_is_exact_and_needs_as_many_ranks(ranks, tmp_path: Path) -> None:
    out, results = ranks
    for res in results:
        assert res["resume"] == {"exact": True, "part_steps": 4, "steps": 6, "moved": True}
    cfg = tiny_cfg(**{**RESUME_CFG, "batch_size": B, "epochs": 2})
    with pytest.raises(ckpt.ConfigMismatchError, match="written by 2 training process"):
        train(frozen_model(), Blobs(9, instances=3), None, cfg, tmp_path,
              resume=out / "split" / "last.pt")


# ------------------------------------------------------------------------ run_distributed
def test_worker_trains_on_an_export(ranks) -> None:
    out, _ = ranks
    events = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]
    assert [(e["event"], e["step"]) for e in events] == [("epoch", 2), ("end", 2)]  # 6 / (2·2)
    info = json.loads((out / "bundle" / "model.json").read_text())
    assert info["summary"]["steps"] == 2 and (out / "bundle" / "weights" / "full.pt").is_file()
    assert sorted(p.name for p in (out / "bundle" / "checkpoints").iterdir()) == ["best.pt",
                                                                                "last.pt"]
    assert "rank1 INFO" in (out / "rank1.log").read_text()  # its own log, not stderr
    folders = [f for f in (out / "cache").iterdir() if f.is_dir()]
    assert sum(len(EmbeddingStore(f)) for f in folders) == 8  # each slice encoded once, shared
    assert len(list((out / "cache").rglob("shards/*.pt"))) <= 4  # a shard per rank and split


def test_run_distributed_replays_events_and_reports_a_failed_rank(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[list[str]] = []

    def fake_launch(module: str, args: list[str], nproc: int, **kw: Any) -> subprocess.Popen:
        calls.append(args)
        parsed = ddp_worker._parser().parse_args(args)  # what the worker would accept
        TrainConfig.model_validate(json.loads(parsed.config_json.read_text())["train"])
        with open(parsed.events, "a") as f:
            f.write(json.dumps({"event": "epoch", "metrics": {"loss": 0.5}, "step": 3}) + "\n")
        fail = len(calls) == 2
        if fail:
            (parsed.log_dir / "rank1.log").write_text("Traceback (most recent call last):\n"
                                                      "RuntimeError: rank 1 broke\n")
        return subprocess.Popen([sys.executable, "-c", f"raise SystemExit({int(fail)})"])

    monkeypatch.setattr(ddp, "launch", fake_launch)
    cfg = tiny_cfg(distributed={"nproc": 2})
    events: list[tuple[str, dict[str, float], int]] = []
    root = ddp.run_distributed(tmp_path / "ds", EXPORT_MODEL, cfg, tmp_path / "out",
                               callback=lambda e, m, s: events.append((e, m, s)))
    assert root == tmp_path / "out" and events == [("epoch", {"loss": 0.5}, 3)]
    with pytest.raises(ddp.DistributedTrainingError, match="(?s)exit code 1.*rank 1 broke"):
        ddp.run_distributed(tmp_path / "ds", EXPORT_MODEL, cfg, tmp_path / "out")


# ------------------------------------------------------------------------------ unit tests
def test_rank_parts_make_the_single_process_batches() -> None:
    data = Blobs(9)
    whole = [b["image_ids"] for b in epoch_batches(data, 4, 0, 1)]
    parts = [[b["image_ids"] for b in epoch_batches(data, 2, 0, 1, rank=r, world_size=2)]
             for r in range(2)]
    assert [a + b for a, b in zip(*parts)] == whole and parts[0][-1] == []  # EMPTY_BATCH
    ready = [{**EMPTY_BATCH, "images": torch.zeros(len(ids), 3, 1, 1), "image_ids": ids,
              "masks": [torch.zeros(0, 1, 1)] * len(ids)} for ids in whole]
    sliced = [[b["image_ids"] for b in epoch_batches(ready, 2, 0, 1, rank=r, world_size=2)]
              for r in range(2)]
    assert sliced == parts


def test_torchrun_command_and_launch_inside_a_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    cmd = ddp.torchrun_command("m.mod", ["--x", "1"], 4)
    assert cmd[1:] == ["-m", "torch.distributed.run", "--nproc_per_node", "4", "--standalone",
                       "-m", "m.mod", "--x", "1"] and cmd[0] == sys.executable
    assert "--master_port" in ddp.torchrun_command("m", [], 2, master_port=29511)
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(RuntimeError, match="already inside a torchrun worker"):
        ddp.launch("m.mod", [], 2)


def test_failure_report_shows_the_failed_rank(tmp_path: Path) -> None:
    (tmp_path / "rank0.log").write_text("epoch 1 ok\n")
    (tmp_path / "rank1.log").write_text("start\nTraceback (most recent call last):\nOSError: x\n")
    (tmp_path / "torchrun.log").write_text("ChildFailedError: rank 1 exitcode 1\n")
    report = ddp._failure_report(1, tmp_path)
    assert "rank1, last lines" in report and "OSError: x" in report
    assert "rank0" not in report and "ChildFailedError" in report


def test_peak_memory_reads_vmhwm(tmp_path: Path) -> None:
    status = tmp_path / "status"
    status.write_text("Name:\tpython\nVmHWM:\t  204800 kB\nVmRSS:\t 1024 kB\n")
    assert peak_memory_mb(torch.device("cpu"), status) == 200.0
    assert peak_memory_mb(torch.device("cpu"), tmp_path / "absent") > 10  # ru_maxrss fallback
    if Path("/proc/self/status").is_file():  # this process's own peak, not a parent's
        assert 10 < peak_memory_mb(torch.device("cpu")) < 1e6


if __name__ == "__main__":  # one rank of the `ranks` fixture's torchrun job
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    _jobs(Path(sys.argv[1]))
