"""The pipelines, one per file. `PIPELINES` (name → module, description, step plan) lives in
samtune/cli/plans.py, free of zenml, so the CLI lists and dry-runs them without it."""
from samtune.cli.plans import PIPELINES, PipelineSpec

__all__ = ["PIPELINES", "PipelineSpec"]
