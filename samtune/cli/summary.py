"""The lines the CLI prints at the end of a run, read from the run's output files."""
from __future__ import annotations

import json
from pathlib import Path

__all__ = ["run_summary"]


def run_summary(output_dir: Path, steps: list[str]) -> list[str]:
    """Dataset sizes, report paths and headline metrics of the steps that ran."""
    out, lines = Path(output_dir), []
    summary = out / "dataset" / "dataset.json"
    if summary.exists():
        counts = json.loads(summary.read_text()).get("splits", {})
        sizes = ", ".join(f"{k} {v['images']} slices / {v['patients']} patients"
                          for k, v in counts.items())
        lines.append(f"dataset: {out / 'dataset'} ({sizes})")
    lines.append(f"validation report: {out / 'reports' / 'validation.html'}")
    evaluation = out / "metrics" / "slice_eval.json"
    if evaluation.exists() and "evaluate_model" in steps:
        m = json.loads(evaluation.read_text())["metrics"]
        lines.append(f"test Dice {m['instance_dice']:.4f} (IoU {m['instance_iou']:.4f}) vs "
                     f"box-fill baseline Dice {m['instance_baseline_dice']:.4f} (IoU "
                     f"{m['instance_baseline_iou']:.4f})")
    if "evaluate_volumes" in steps and (out / "metrics" / "global.json").exists():
        g = json.loads((out / "metrics" / "global.json").read_text())
        for name, c in g["classes"].items():
            lines.append(f"volume Dice {name}: {c['dice']['mean']:.4f} ± {c['dice']['std']:.4f}"
                         f", HD95 {c['hd95_mm']['mean']:.2f} mm over {c['n_cases']} volumes")
        lines.append(f"evaluation report: {out / 'report.html'} (metrics/, predictions/, "
                     "biomarkers.csv)")
    for step, name in (("infer_volumes", "inference.json"),
                       ("summarize_benchmark", "benchmark/benchmark.md"),
                       ("promote_model", "promotion.json")):
        if step in steps and (out / name).exists():
            lines.append(f"{name.split('.')[0].split('/')[0]}: {out / name}")
    return lines
