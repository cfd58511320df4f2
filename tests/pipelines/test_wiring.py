"""The CLI's static step plans match what the pipelines really wire (no run)."""
from __future__ import annotations

import importlib

import pytest

from pipelines import PIPELINES
from samtune.config import load_config


@pytest.mark.parametrize("name", sorted(PIPELINES))
def test_plan_matches_pipeline(name: str) -> None:
    spec = PIPELINES[name]
    pipeline = getattr(importlib.import_module(spec.module), name)
    pipeline.prepare(config=load_config("demo").to_dict())
    assert list(pipeline.invocations) == [step for step, _ in spec.plan]
