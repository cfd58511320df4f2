"""One benchmark cell: fine-tune + evaluate on whole volumes; a failure is a record, not a raise."""
from __future__ import annotations

from typing import Annotated, Any

from zenml import log_metadata, step

from samtune.benchmark import run_cell
from samtune.data.cases import CaseCollection
from samtune.data.datasets import SplitDataset
from steps.caching import MODEL_CACHE


@step(cache_policy=MODEL_CACHE)
def benchmark_cell(
    cell: dict[str, Any], dataset: SplitDataset | None = None,
    cases: CaseCollection | None = None,
) -> Annotated[dict[str, Any], "benchmark_record"]:
    """`cell` is a `samtune.benchmark.Cell` as a dict (its notes, e.g. a missing checkpoint, are
    part of the cache key, so a fetched checkpoint re-runs it); no dataset: an invalid cell,
    recorded as failed. Outputs land in the cell's output_dir."""
    record = run_cell(cell, dataset.root if dataset else None, cases.cases if cases else [],
                      dataset.categories() if dataset else {},
                      fingerprint=dataset.fingerprint if dataset else "")
    log_metadata(metadata={k: v for k, v in record.items()
                           if isinstance(v, (int, float, str)) and v is not None})
    return record
