"""The benchmark's tables: every cell's record → benchmark.{csv,json,md} under output_dir."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Any

from zenml import log_metadata, step

from samtune.benchmark import write_benchmark
from samtune.benchmark.report import best_cell

log = logging.getLogger(__name__)


@step(enable_cache=False)  # cheap, and its files must exist after every run
def summarize_benchmark(
    records: list[dict[str, Any]], output_dir: str,
) -> Annotated[dict[str, Any], "benchmark_summary"]:
    """Ranks the cells by Dice, marks the best, lists the failed ones with their errors."""
    paths = write_benchmark(records, Path(output_dir) / "benchmark")
    best = best_cell(records)
    failed = [r["cell"] for r in records if r["status"] != "ok"]
    if failed:
        log.warning("%d of %d benchmark cells failed: %s (errors in %s)", len(failed),
                    len(records), ", ".join(failed), paths["md"])
    summary = {"best": best["cell"] if best else None, "best_dice": best["dice"] if best else None,
               "ok": len(records) - len(failed), "failed": len(failed),
               "paths": {k: str(v) for k, v in paths.items()}}
    log_metadata(metadata={k: v for k, v in summary.items() if v is not None})
    return summary
