"""Config sections of where and when a pipeline runs: the ZenML `stack` and the retraining
`schedule` (cron checked here).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from samtune.config.base import Section


class StackConfig(Section):
    name: str = "samtune-local"
    home: Path = Field(Path(".samtune"), description="project-local ZenML + MLflow state")
    mlflow_tracking_uri: str | None = Field(None, description="None: sqlite file under home")
    experiment_tracker: str = Field("samtune-mlflow-tracker", description="ZenML component")
    kind: Literal["local", "kubernetes"] = Field("local", description="kubernetes: the remote "
                                                 "stack of `spec`, pods per `pods`")
    spec: Path | None = Field(None, description="stack as code (stacks/k8s_stack.yaml)")
    pods: dict[str, Any] = Field(default_factory=dict, description="pod pools: gpu / cpu / data "
                                 "(stacks/k8s_pods.py schema); train + evaluate run on gpu")

    @model_validator(mode="after")
    def _remote_needs_spec(self) -> "StackConfig":
        if self.kind == "kubernetes" and self.spec is None:
            raise ValueError("stack.kind kubernetes needs stack.spec (e.g. stacks/k8s_stack.yaml)")
        return self


_CRON_RANGES = ((0, 59), (0, 23), (1, 31), (1, 12), (0, 7))
_CRON_NAMES = ({}, {}, {}, {m: i + 1 for i, m in enumerate(
    "jan feb mar apr may jun jul aug sep oct nov dec".split())},
    {d: i for i, d in enumerate("sun mon tue wed thu fri sat".split())})


def check_cron(expr: str) -> str:
    """A 5-field cron expression (minute hour day-of-month month day-of-week; numbers, names,
    *, ranges a-b, steps /n, lists) → itself; ValueError naming the bad field otherwise."""
    fields = expr.split()
    if len(fields) != 5:
        raise ValueError(f"cron '{expr}': expected 5 fields (minute hour day month weekday), "
                         f"got {len(fields)}")
    for field, (lo, hi), names, what in zip(fields, _CRON_RANGES, _CRON_NAMES,
                                            ("minute", "hour", "day", "month", "weekday")):
        for part in field.lower().split(","):
            base, _, step = part.partition("/")
            if step and not (step.isdigit() and int(step) > 0):
                raise ValueError(f"cron '{expr}': bad step '/{step}' in the {what} field")
            if base == "*":
                continue
            for value in base.split("-", 1):
                number = names.get(value, int(value) if value.isdigit() else None)
                if number is None or not lo <= number <= hi:
                    raise ValueError(f"cron '{expr}': '{value}' is not a valid {what} "
                                     f"({lo}-{hi})")
    return expr


class ScheduleConfig(Section):
    """When the pipeline runs by itself: a ZenML schedule (a CronJob on the kubernetes stack)."""

    cron: str | None = Field(None, description="e.g. '0 3 * * 1' (Mondays 03:00); None: once")

    @field_validator("cron")
    @classmethod
    def _valid_cron(cls, value: str | None) -> str | None:
        return None if value is None else check_cron(value)
