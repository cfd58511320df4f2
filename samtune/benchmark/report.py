"""Benchmark records → benchmark.csv, .json and a Markdown comparison, written atomically.

Ranking: cells that ran (status ok) by their score (benchmark.score: mean volume Dice, or
Dice after N simulated clicks), then mean volume Dice, highest first (ties: IoU, then lower
HD95); the first is the best cell (★). Failed cells follow, each with its error. A cell whose Dice
is None (nothing scored) ranks after the scored ones.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from samtune.atomic import atomic_write_text

__all__ = ["COLUMNS", "rank", "best_cell", "to_markdown", "write_benchmark"]
COLUMNS = ("cell", "model", "method", "dataset", "status", "error", "score_name", "score",
           "dice", "iou", "hd95_mm",
           "nsd", "train_seconds", "eval_seconds", "trainable_params", "total_params",
           "peak_memory_mb", "memory_kind", "start_rss_mb", "output_dir")
MEMORY_NOTE = ("Peak memory: on CUDA, torch.cuda.max_memory_allocated during the cell (reset at "
               "its start); on CPU, the resident set of the process and its children, sampled "
               "every 50 ms during the cell: the whole process's, so the table gives in brackets "
               "the rise over the RSS when the cell began (start_rss_mb).")


def _score(r: dict[str, Any]) -> float | None:
    """The cell's ranking score (benchmark.score; records without one: their Dice)."""
    return r.get("score", r.get("dice")) if "score_name" in r else r.get("dice")


def _key(r: dict[str, Any]) -> tuple:
    hd95, score = r.get("hd95_mm"), _score(r)
    return (score is None, -(score or 0.0), -(r.get("dice") or 0.0), -(r.get("iou") or 0.0),
            float("inf") if hd95 is None else hd95)


def rank(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """ok cells by Dice (then IoU, then HD95), then failed cells in matrix order."""
    ok = sorted((r for r in records if r["status"] == "ok"), key=_key)
    return ok + [r for r in records if r["status"] != "ok"]


def best_cell(records: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """The top-ranked cell that ran and was scored, or None."""
    ranked = [r for r in rank(records) if r["status"] == "ok" and _score(r) is not None]
    return ranked[0] if ranked else None


def _num(value: Any, digits: int) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _params(r: dict[str, Any]) -> str:
    t, n = r.get("trainable_params"), r.get("total_params")
    if t is None or n is None:
        return "–"
    return f"{t:,} / {n:,} ({100 * t / n:.1f} %)" if n else f"{t:,} / {n:,}"


def _memory(r: dict[str, Any]) -> str:
    """The peak; on CPU (whole-process RSS) with the rise over the cell's start beside it."""
    peak, start = r.get("peak_memory_mb"), r.get("start_rss_mb")
    if peak is None or "RSS" not in str(r.get("memory_kind")) or start is None:
        return _num(peak, 0)
    return f"{peak:.0f} (+{peak - start:.0f})"


def _cell_text(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def to_markdown(records: Sequence[dict[str, Any]], title: str = "samtune benchmark") -> str:
    """The comparison table (sorted by Dice, best ★), the failed cells with their errors."""
    ranked, best = rank(records), best_cell(records)
    failed = [r for r in ranked if r["status"] != "ok"]
    lines = [f"# {title}", "",
             f"{len(records)} cells: {len(records) - len(failed)} ran, {len(failed)} failed."]
    if best is not None:
        lines.append(f"Best: ★ **{best['cell']}** ({best['model']}, {best['method']}, "
                     f"{best['dataset']}): Dice {_num(best['dice'], 4)}"
                     + (f", {best['score_name']} {_num(best['score'], 4)}"
                        if best.get("score_name", "dice") != "dice" else "") + ".")
    lines += ["", "Dice, IoU, HD95, NSD: means over the evaluation split's volumes and classes. "
              "Seconds are wall time in the one pipeline process: the first cell to run also "
              "pays one-time start-up costs (imports, thread pools).",
              "", "| | cell | model | method | dataset | Dice | IoU | HD95 (mm) | NSD | "
              "train (s) | eval (s) | trainable / total params | peak memory (MB) |",
              "|---|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in ranked:
        if r["status"] != "ok":
            continue
        mark = "★" if best is not None and r["cell"] == best["cell"] else ""
        lines.append(f"| {mark} | {r['cell']} | {r['model']} | {r['method']} | {r['dataset']} | "
                     f"{_num(r['dice'], 4)} | {_num(r['iou'], 4)} | {_num(r['hd95_mm'], 2)} | "
                     f"{_num(r['nsd'], 4)} | {_num(r['train_seconds'], 1)} | "
                     f"{_num(r['eval_seconds'], 1)} | {_params(r)} | "
                     f"{_memory(r)} |")
    if failed:
        lines += ["", "## Failed cells", ""]
        lines += [f"- **{r['cell']}** ({r['model']}, {r['method']}, {r['dataset']}): "
                  f"{_cell_text(r['error'] or 'unknown error')}" for r in failed]
    kinds = sorted({r["memory_kind"] for r in records if r.get("memory_kind")})
    lines += ["", MEMORY_NOTE + (f" Measured here: {', '.join(kinds)}." if kinds else ""), ""]
    return "\n".join(lines)


def write_benchmark(records: Sequence[dict[str, Any]], out_dir: Path,
                    title: str = "samtune benchmark") -> dict[str, Path]:
    """benchmark.csv (one row per cell, ranked), benchmark.json ({cells, best, counts, memory
    note}) and benchmark.md under out_dir, each written to a temporary file then renamed."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ranked, best = rank(records), best_cell(records)
    frame = pd.DataFrame([{c: r.get(c) for c in COLUMNS} for r in ranked], columns=list(COLUMNS))
    for column in ("trainable_params", "total_params"):  # integers, blank for failed cells
        frame[column] = frame[column].astype("Int64")
    paths = {k: out_dir / f"benchmark.{k}" for k in ("csv", "json", "md")}
    atomic_write_text(paths["csv"], frame.to_csv(index=False))
    summary = {"cells": ranked, "best": best["cell"] if best else None,
               "ok": sum(r["status"] == "ok" for r in records),
               "failed": sum(r["status"] != "ok" for r in records), "memory": MEMORY_NOTE}
    atomic_write_text(paths["json"], json.dumps(summary, indent=1, default=str) + "\n")
    atomic_write_text(paths["md"], to_markdown(records, title))
    return paths
