"""The pipelines, one per file. `PIPELINES` (name → module, description, step plan) lives in
samtune/pipeline_plans.py, free of zenml, so the CLI lists and dry-runs them without it."""
from samtune.pipeline_plans import PIPELINES, PipelineSpec

__all__ = ["PIPELINES", "PipelineSpec"]
