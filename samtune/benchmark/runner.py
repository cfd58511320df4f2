"""Run one benchmark cell: fine-tune, evaluate on whole volumes, record; never raise for it.

Peak memory (`PeakMemory`): on CUDA, torch.cuda.max_memory_allocated over the cell (reset at its
start: tensors only, not the allocator's cache); on CPU, the resident set of this process and its
children, sampled every 50 ms during the cell, maximum over the cell. The CPU figure is the whole
process's (interpreter, libraries, memory earlier cells left resident), so read it beside
`start_rss_mb`, the RSS when the cell began; VmHWM is not used: it cannot be reset per cell.
"""
from __future__ import annotations

import gc
import json
import logging
import os
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Sequence

import torch

from samtune.atomic import atomic_write_text
from samtune.benchmark.matrix import Cell
from samtune.config import Config

__all__ = ["PeakMemory", "run_cell", "METRICS"]
log = logging.getLogger(__name__)
METRICS = ("dice", "iou", "hd95_mm", "nsd")


class PeakMemory:
    """Peak memory of a `with` block, in MiB; see the module docstring for what it measures."""

    def __init__(self, device: torch.device | str, interval_s: float = 0.05):
        self.device, self.interval = torch.device(device), interval_s
        self.cuda = self.device.type == "cuda" and torch.cuda.is_available()
        self.kind = "cuda max_memory_allocated" if self.cuda else "process + children RSS, sampled"
        self.start_rss_mb = self.peak_rss_mb = self.peak_mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    @staticmethod
    def rss_mb() -> float:
        try:
            import psutil

            proc = psutil.Process()
            rss = proc.memory_info().rss
            for child in proc.children(recursive=True):
                try:
                    rss += child.memory_info().rss
                except psutil.Error:
                    pass
            return rss / 2**20
        except ImportError:  # /proc fallback: this process only
            pages = int(Path("/proc/self/statm").read_text().split()[1])
            return pages * os.sysconf("SC_PAGE_SIZE") / 2**20

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak_rss_mb = max(self.peak_rss_mb, self.rss_mb())

    def __enter__(self) -> "PeakMemory":
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
        self.start_rss_mb = self.peak_rss_mb = self.rss_mb()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_rss_mb = max(self.peak_rss_mb, self.rss_mb())
        self.peak_mb = (torch.cuda.max_memory_allocated(self.device) / 2**20
                        if self.cuda else self.peak_rss_mb)


def _mean(frame: Any, column: str) -> float | None:
    if column not in frame:
        return None
    value = frame[column].astype(float).mean()
    return None if value != value else round(float(value), 6)  # NaN → None


def _score(name: str, dice: float | None, clicks: Any) -> float | None:
    """The ranking score: mean volume Dice, or for dice@N the mean volume Dice after N
    simulated clicks of the evaluated model (eval.clicks includes N: the config checks it)."""
    if name == "dice":
        return dice
    n = int(name.split("@")[1])
    if clicks is None:
        return None
    rows = clicks[(clicks["clicks"] == n) & (clicks["model"] == "evaluated")]
    return _mean(rows, "dice")


def run_cell(cell: Cell | dict[str, Any], dataset_dir: Path | None, cases: Sequence[Any],
             classes: dict[int, str], *, fingerprint: str = "") -> dict[str, Any]:
    """Fine-tune and evaluate one cell → its record (status ok|failed, error, mean volume
    Dice / IoU / HD95 mm / NSD over cases and classes of eval.split, seconds, parameters, peak
    memory). Never raises for a failing cell; record.json (+ error.txt) go to its folder."""
    from samtune.eval.volume_eval import evaluate_volumes, split_cases
    from samtune.inference.model_source import load_model
    from samtune.models.device import resolve_device
    from samtune.train.finetune import train_on_export

    c = cell if isinstance(cell, Cell) else Cell.from_dict(cell)
    record: dict[str, Any] = {
        "cell": c.name, "model": c.model, "method": c.method, "dataset": c.dataset,
        "status": "failed", "error": c.error, **{k: None for k in METRICS},
        "score_name": c.score, "score": None,
        "train_seconds": None, "eval_seconds": None, "trainable_params": None,
        "total_params": None, "peak_memory_mb": None, "memory_kind": None,
        "start_rss_mb": None, "output_dir": None}
    if c.config is None or dataset_dir is None:
        record["error"] = c.error or "no prepared dataset for this cell"
        log.error("%s: not run: %s", c.name, record["error"])
        return record
    cfg = Config.model_validate(c.config)
    out = Path(cfg.output_dir)
    record["output_dir"] = str(out)
    device = torch.device("cuda") if cfg.model.method == "qlora" and torch.cuda.is_available() \
        else resolve_device(cfg.train.device)
    log.info("%s: %s / %s on %s", c.name, c.model, c.method, c.dataset)
    (out / "error.txt").unlink(missing_ok=True)  # from an earlier failed run of this cell
    with PeakMemory(device) as memory:
        try:
            t0 = time.perf_counter()
            bundle = train_on_export(Path(dataset_dir), cfg.model, cfg.train, out / "training",
                                     dataset_fingerprint=fingerprint)
            record.update(train_seconds=round(time.perf_counter() - t0, 3),
                          trainable_params=bundle.summary["trainable_parameters"],
                          total_params=bundle.summary["total_parameters"])
            t0 = time.perf_counter()
            loaded = load_model(cfg.model, str(bundle.root), device=cfg.train.device)
            result = evaluate_volumes(loaded, split_cases(cases, dataset_dir, cfg.eval.split),
                                      cfg.convert, cfg.eval, out / "evaluation", classes,
                                      title=f"samtune benchmark — {c.name}")
            record.update(eval_seconds=round(time.perf_counter() - t0, 3), status="ok",
                          error=None, **{k: _mean(result.volume, k) for k in METRICS})
            record["score"] = _score(c.score, record["dice"], getattr(result, "clicks", None))
        except Exception as exc:  # noqa: BLE001 — a failed cell is a result; the matrix goes on
            record["error"] = f"{type(exc).__name__}: {exc}"
            out.mkdir(parents=True, exist_ok=True)
            (out / "error.txt").write_text(traceback.format_exc())
            log.error("%s failed: %s", c.name, record["error"])
        finally:
            gc.collect()
            if memory.cuda:
                torch.cuda.empty_cache()
    record.update(peak_memory_mb=round(memory.peak_mb, 1), memory_kind=memory.kind,
                  start_rss_mb=round(memory.start_rss_mb, 1))
    atomic_write_text(out / "record.json", json.dumps(record, indent=1, default=str))
    return record
