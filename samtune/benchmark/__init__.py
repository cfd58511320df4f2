"""The `benchmark` pipeline's library: a matrix of datasets × models × methods, each cell one
finetune + evaluate run, summarised as CSV, JSON and a Markdown comparison.

    cells = expand_matrix(cfg)                     # validated up front; never raises per cell
    record = run_cell(cells[0], dataset_dir, cases, classes)   # {"status": "ok"|"failed", …}
    paths = write_benchmark([record, …], out_dir)  # benchmark.csv, .json, .md
"""
from samtune.benchmark.matrix import (DATASET_SECTIONS, Cell, dataset_configs, dry_run_lines,
                                      expand_matrix)
from samtune.benchmark.report import write_benchmark
from samtune.benchmark.runner import METRICS, PeakMemory, run_cell

__all__ = ["Cell", "DATASET_SECTIONS", "METRICS", "PeakMemory", "dataset_configs",
           "dry_run_lines", "expand_matrix", "run_cell", "write_benchmark"]
