"""`run.py --list-datasets / --list-pipelines / --list-models`: what samtune offers, as lines."""
from __future__ import annotations

from samtune.cli.plans import PIPELINES

__all__ = ["listing_lines"]


def listing_lines(datasets: bool, pipelines: bool, models: bool) -> list[str]:
    """The dataset layouts, pipelines and/or zoo models (name, family, parameters, input size,
    official checkpoint and the upstream preprocessing each reproduces)."""
    lines = []
    if datasets:
        from samtune.data.layouts import list_layouts

        lines.append("dataset layouts (data.layout):")
        lines += [f"  {name:<10} {text}" for name, text in list_layouts().items()]
    if pipelines:
        lines.append("pipelines (--pipeline):")
        lines += [f"  {name:<10} {spec.description}" for name, spec in PIPELINES.items()]
    if models:
        from samtune.models.registry import list_models

        lines.append(f"{'model':<16} {'family':<10} {'params':>12} {'img':>5}  checkpoint (sha256)")
        lines.append(f"{'':<16} preprocessing: the upstream inference it reproduces")
        for m in list_models():
            file = f"{m['checkpoint'] or '-'} ({m['sha256'] or 'unknown'})"
            lines.append(f"{m['name']:<16} {m['family']:<10} {m['params']:>12,} "
                         f"{m['img_size']:>5}  {file}")
            lines.append(f"{'':<16} {m['preprocess']}")
    return lines
