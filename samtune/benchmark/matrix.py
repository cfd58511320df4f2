"""The benchmark matrix: cells from `config.benchmark`, validated up front, and the dry-run list.

A cell is the base config, with another dataset's data / validate / convert / split sections
(for a dataset entry), then `benchmark.overrides` (dotted keys), then the model entry (a zoo name
sets `model.name` and that entry's official checkpoint file; a dict is merged into the model
section), then the method entry (a name, or a dict merged into the model section, e.g.
{method: lora, lora: {r: 4}}). A cell that cannot validate carries its `error` and is recorded
as failed without running; `notes` name what will make a valid cell fail at run time (a missing
checkpoint file, QLoRA without CUDA).
"""
from __future__ import annotations

import copy
import logging
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError

from samtune.config import Config, ConfigError, load_config

__all__ = ["Cell", "expand_matrix", "dataset_configs", "dry_run_lines", "DATASET_SECTIONS"]
log = logging.getLogger(__name__)
DATASET_SECTIONS = ("data", "validate", "convert", "split")


@dataclass(frozen=True)
class Cell:
    """One run of the matrix. `config`: the cell's full config (YAML key names; output_dir is
    <output_dir>/benchmark/cells/<name>), None when it does not validate (`error` says why)."""

    index: int
    name: str
    model: str
    method: str
    dataset: str
    config: dict[str, Any] | None
    error: str | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)
    score: str = "dice"  # benchmark.score: "dice" or "dice@N"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "notes": list(self.notes)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Cell":
        return cls(**{**d, "notes": tuple(d.get("notes", ()))})


def _slug(text: str) -> str:
    """A name part for step ids and folders: [A-Za-z0-9_], at most 40 characters."""
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_")[:40] or "x"


def _label(entry: str | dict[str, Any], key: str) -> str:
    """"lora" → "lora"; {method: lora, lora: {r: 4}} → "lora-r4"."""
    if isinstance(entry, str):
        return entry

    def leaves(d: dict[str, Any]) -> list[str]:
        return [p for k, v in d.items() if k != key
                for p in (leaves(v) if isinstance(v, dict) else [f"{k}{v}"])]
    return "-".join([str(entry.get(key, "base"))] + leaves(entry))


def _merge(into: dict[str, Any], update: dict[str, Any]) -> None:
    for k, v in update.items():
        if isinstance(v, dict) and isinstance(into.get(k), dict):
            _merge(into[k], v)
        else:
            into[k] = copy.deepcopy(v)


def _set_dotted(raw: dict[str, Any], key: str, value: Any) -> None:
    *parents, leaf = key.split(".")
    for part in parents:
        raw = raw.setdefault(part, {})
    raw[leaf] = copy.deepcopy(value)


def _as_config(config: Config | dict[str, Any]) -> Config:
    return config if isinstance(config, Config) else Config.model_validate(config)


def _datasets(cfg: Config) -> list[tuple[str, dict[str, Any], str | None]]:
    """(label, the dataset sections replacing the base's, error) per dataset entry; sections are
    {} for this config's own data. A dict entry is merged into the base's sections."""
    if not cfg.benchmark.datasets:
        return [(cfg.name, {}, None)]
    base, out = cfg.to_dict(), []
    for j, entry in enumerate(cfg.benchmark.datasets):
        sections: dict[str, Any] = {}
        error = None
        if isinstance(entry, str):
            label = Path(entry).stem
            try:
                other = load_config(entry).to_dict()
                label, sections = other["name"], {k: other[k] for k in DATASET_SECTIONS}
            except ConfigError as exc:
                error = f"dataset {entry}: {exc}"
        else:
            label = str(entry.get("name", f"dataset{j}"))
            unknown = sorted(set(entry) - {"name", *DATASET_SECTIONS})
            if unknown:
                error = f"dataset {label}: keys {unknown}; allowed: name, {DATASET_SECTIONS}"
            sections = {k: copy.deepcopy(base[k]) for k in DATASET_SECTIONS}
            _merge(sections, {k: v for k, v in entry.items() if k in DATASET_SECTIONS})
        if error is None:
            try:
                Config.model_validate({**base, **sections})
            except ValidationError as exc:
                error = f"dataset {label}: {_errors(exc)}"
        if all(sections.get(k, base[k]) == base[k] for k in DATASET_SECTIONS):
            sections = {}  # the same data as this config's: prepared once, shared cache
        if label in [o[0] for o in out]:
            label = f"{label}{j}"
        out.append((label, sections, error))
    return out


def dataset_configs(config: Config | dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Dataset label → the config to prepare it with (this config's own keeps its output_dir, so
    it shares the cache with `prepare`/`finetune`; another goes to benchmark/datasets/<label>)."""
    cfg = _as_config(config)
    base, out = cfg.to_dict(), {}
    for label, sections, error in _datasets(cfg):
        if error is None:
            raw = {**copy.deepcopy(base), **copy.deepcopy(sections)}
            if sections:
                raw["output_dir"] = str(cfg.output_dir / "benchmark" / "datasets" / _slug(label))
            out[label] = raw
    return out


def _model_section(base: dict[str, Any], entry: str | dict[str, Any]) -> dict[str, Any]:
    """The base model section with a zoo name / dict of overrides applied; a new name brings
    that entry's official checkpoint file (None for the small random-weight architectures)."""
    section = copy.deepcopy(base)
    update = {"name": entry} if isinstance(entry, str) else dict(entry)
    name = update.get("name", section["name"])
    if name != section["name"] and "checkpoint" not in update:
        from samtune.models.registry import MODELS

        section["checkpoint"] = MODELS[name].checkpoint if name in MODELS else None
    _merge(section, update)
    return section


def _errors(err: ValidationError) -> str:
    return "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '<root>'}: {e['msg']}"
                     for e in err.errors())


def _check(cfg: Config) -> tuple[str | None, tuple[str, ...]]:
    """(error that stops the cell from running, notes on what will fail at run time)."""
    from samtune.models.registry import check_img_size, get_spec

    model = cfg.model
    try:
        get_spec(model.name)
        check_img_size(model.name, model.img_size or get_spec(model.name).img_size)
    except ValueError as exc:
        return str(exc), ()
    notes = []
    if model.checkpoint is not None and not (model.checkpoints_dir / model.checkpoint).is_file():
        notes.append(f"checkpoint {model.checkpoints_dir / model.checkpoint} not found "
                     f"(python run.py --download {model.name})")
    if model.method == "qlora" and not torch.cuda.is_available():
        notes.append("qlora needs a CUDA GPU (none here)")
    return None, tuple(notes)


def _cell_config(base: dict[str, Any], sections: dict[str, Any], overrides: dict[str, Any],
                 model: str | dict[str, Any], method: str | dict[str, Any], output_dir: Path
                 ) -> tuple[dict[str, Any] | None, str | None, tuple[str, ...]]:
    """(the cell's validated config, error, notes); see the module docstring for the order."""
    raw = {**copy.deepcopy(base), **copy.deepcopy(sections)}
    try:
        for key, value in overrides.items():
            _set_dotted(raw, key, value)
        raw["model"] = _model_section(raw["model"], model)
        raw["model"] = _model_section(raw["model"], {"method": method}
                                      if isinstance(method, str) else method)
        raw["output_dir"] = str(output_dir)
        checked = Config.model_validate(raw)
    except ValidationError as exc:
        return None, f"invalid cell config: {_errors(exc)}", ()
    except (TypeError, KeyError, AttributeError) as exc:  # a non-mapping where a section goes
        return None, f"invalid cell config: {type(exc).__name__}: {exc}", ()
    error, notes = _check(checked)
    config = checked.to_dict()
    config.pop("benchmark")
    return (None if error else config), error, notes


def expand_matrix(config: Config | dict[str, Any]) -> list[Cell]:
    """Every cell of `config.benchmark`, in dataset → model → method order; [] lists mean the
    config's own. Cells that do not validate come back with `error` set (never raised)."""
    cfg = _as_config(config)
    base = cfg.to_dict()
    base.pop("benchmark")
    bench, datasets = cfg.benchmark, _datasets(cfg)
    models = bench.models or [base["model"]["name"]]
    methods = bench.methods or [base["model"]["method"]]
    cells: list[Cell] = []
    for ds_label, sections, ds_error in datasets:
        for model in models:
            for method in methods:
                m, k = _label(model, "name"), _label(method, "method")
                name = "_".join(["cell", str(len(cells)), _slug(m), _slug(k)]
                                + ([_slug(ds_label)] if len(datasets) > 1 else []))
                out = cfg.output_dir / "benchmark" / "cells" / name
                built = ((None, ds_error, ()) if ds_error else
                         _cell_config(base, sections, bench.overrides, model, method, out))
                cells.append(Cell(len(cells), name, m, k, ds_label, *built, score=bench.score))
    return cells


def dry_run_lines(config: Config | dict[str, Any]) -> list[str]:
    """What `run.py --pipeline benchmark --dry-run` prints: the cells, invalid ones flagged."""
    cfg = _as_config(config)
    cells, datasets = expand_matrix(cfg), _datasets(cfg)
    b = cfg.benchmark
    lines = [f"# benchmark matrix: {len(datasets)} dataset(s) × {len(b.models) or 1} model(s) × "
             f"{len(b.methods) or 1} method(s) = {len(cells)} cells → "
             f"{cfg.output_dir / 'benchmark'}/benchmark.{{csv,json,md}}"]
    width = max(len(c.name) for c in cells)
    for c in cells:
        line = f"  {c.name:<{width}}  dataset {c.dataset}, model {c.model}, method {c.method}"
        if c.error:
            line += f"\n      INVALID (recorded as failed, not run): {c.error}"
        line += "".join(f"\n      will fail: {n}" for n in c.notes)
        lines.append(line)
    bad = sum(1 for c in cells if c.error)
    if bad:
        log.warning("%d of %d benchmark cells do not validate; see the list", bad, len(cells))
    return lines
