"""`benchmark`: prepare each dataset once (cached) → finetune + evaluate per cell → tables."""
from __future__ import annotations

from typing import Any

from zenml import pipeline

from pipelines.prepare import prepare_dataset
from samtune.benchmark import dataset_configs, expand_matrix
from steps.benchmark_cell import benchmark_cell
from steps.summarize_benchmark import summarize_benchmark


@pipeline
def benchmark(config: dict[str, Any]) -> None:
    prepared = {label: prepare_dataset(ds) for label, ds in dataset_configs(config).items()}
    records = []
    for cell in expand_matrix(config):
        data = prepared.get(cell.dataset) if cell.config else None
        inputs = {"dataset": data[0], "cases": data[1]} if data else {}
        records.append(benchmark_cell(cell=cell.to_dict(), id=cell.name, **inputs))
    summarize_benchmark(records, output_dir=config["output_dir"])
