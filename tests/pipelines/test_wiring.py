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
    if type(pipeline).__name__ == "DynamicPipeline":  # wired at run time: its plan is finetune's
        finetune = [step for step, _ in PIPELINES["finetune"].plan]  # with the gate after split
        at = finetune.index("split_dataset") + 1
        assert [step for step, _ in spec.plan] == finetune[:at] + ["check_retrain"] + finetune[at:]
        return
    pipeline.prepare(config=load_config("demo").to_dict())
    # a step invoked once per item (benchmark_cell, one per cell) appears once in the plan
    names = [inv.step.name for inv in pipeline.invocations.values()]
    assert [n for i, n in enumerate(names) if i == 0 or names[i - 1] != n] == \
        [step for step, _ in spec.plan]
