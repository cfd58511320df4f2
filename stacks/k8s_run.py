"""Running a pipeline on the remote (Kubernetes) stack: activate the stack described as code,
per-step pod settings (train / evaluate on the GPU pool, the rest on CPU nodes), schedules.

    options = remote_options(cfg.stack, [step for step, _ in plan])   # with_options(steps=…)
    lines = dry_run_lines(cfg.stack, plan, cfg.schedule.cron)          # what --dry-run prints
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Sequence

from stacks.k8s_pods import pod_settings_for, pool_for_step
from stacks.remote import ENV_VAR, load_stack_spec, register_stack

__all__ = ["activate_remote", "remote_options", "dry_run_lines", "spec_variables"]
log = logging.getLogger(__name__)


def spec_variables(path: Path) -> dict[str, str | None]:
    """${VAR} / ${VAR:-default} names in the stack YAML → their value now (env, else default,
    else None)."""
    found = {m.group(1): m.group(2) for m in ENV_VAR.finditer(Path(path).read_text())}
    return {k: os.environ.get(k, d) for k, d in found.items()}


def activate_remote(stack: Any) -> list[str]:
    """Register (idempotently) and activate the stack of `stack.spec`; its actions. The MLflow
    server of its experiment tracker must answer first (RegistryError naming the URI)."""
    from samtune.lifecycle.registry import check_reachable

    spec = load_stack_spec(stack.spec)
    tracker = spec["components"].get("experiment_tracker", {}).get("configuration", {})
    if tracker.get("tracking_uri"):
        check_reachable(tracker["tracking_uri"])
    return register_stack(spec, activate=True)


def remote_options(stack: Any, steps: Sequence[str]) -> dict[str, dict[str, Any]]:
    """`with_options(steps=…)`: each step's Kubernetes orchestrator pod settings."""
    from zenml.integrations.kubernetes.flavors import KubernetesOrchestratorSettings

    return {step: {"settings": {"orchestrator": KubernetesOrchestratorSettings(
        pod_settings=pod_settings_for(step, stack.pods))}} for step in steps}


def dry_run_lines(stack: Any, plan: Sequence[tuple[str, Sequence[str]]],
                  cron: str | None) -> list[str]:
    """The resolved remote stack (components, unset variables), each step's pool and pod
    resources, and the schedule — without touching ZenML or the cluster."""
    variables = spec_variables(stack.spec)
    unset = sorted(k for k, v in variables.items() if v is None)
    spec = load_stack_spec(stack.spec, environ={**{k: f"<unset {k}>" for k in unset},
                                                **os.environ})
    lines = [f"# remote stack: {spec['name']} ({stack.spec})"]
    for ctype, comp in spec["components"].items():
        lines.append(f"  {ctype:<20} {comp['name']} [{comp['flavor']}]")
    if unset:
        lines.append(f"  environment to set before running: {', '.join(unset)}")
    lines.append("# step pods (stack.pods)")
    for step, _sections in plan:
        pod = pod_settings_for(step, stack.pods)
        limits = pod.resources.get("limits", {})
        extra = f", node selector {pod.node_selectors}" if pod.node_selectors else ""
        lines.append(f"  {step:<18} {pool_for_step(step)}: limits {limits}{extra}")
    lines.append(f"# schedule: {f'cron {cron!r} (a CronJob)' if cron else 'none (runs once)'}")
    return lines
