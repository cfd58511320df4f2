"""Loading a config: YAML from configs/ or a path, `extends:` a base, `--set dotted.key=value`
overrides, and errors that name the dotted key and the closest valid one (`ConfigError`)."""
from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from samtune.config.root import Config

CONFIGS_DIR = Path(__file__).resolve().parents[2] / "configs"


class ConfigError(ValueError):
    """A config that cannot be used; the message is meant for the user as it is."""


def _closest(key: str, model: type[BaseModel] | None) -> str:
    if model is None:
        return ""
    names = [f.alias or n for n, f in model.model_fields.items()]
    match = difflib.get_close_matches(key, names, n=1, cutoff=0.5)
    return f" (did you mean '{match[0]}'?)" if match else f" (valid keys: {', '.join(names)})"


def _model_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The pydantic model that owns the field at `loc` (None past a dict/list)."""
    model: type[BaseModel] | None = Config
    for part in loc:
        fields = {f.alias or n: f for n, f in model.model_fields.items()} if model else {}
        field = fields.get(str(part))
        ann = getattr(field, "annotation", None)
        model = next((a for a in getattr(ann, "__args__", (ann,))
                      if isinstance(a, type) and issubclass(a, BaseModel)), None)
        if model is None:
            return None
    return model


def _format(err: ValidationError, source: str) -> str:
    lines = [f"invalid config {source}:"]
    for e in err.errors():
        loc = tuple(e["loc"])
        dotted = ".".join(str(p) for p in loc) or "<root>"
        if e["type"] == "extra_forbidden":
            hint = _closest(str(loc[-1]), _model_at(loc[:-1]))
            lines.append(f"  {dotted}: unknown key{hint}")
        elif not loc:  # a root validator's message names its own keys
            lines.append(f"  {e['msg'].removeprefix('Value error, ')}")
        elif e["msg"].removeprefix("Value error, ").startswith(f"{dotted}."):  # names its key
            lines.append(f"  {e['msg'].removeprefix('Value error, ')}")
        else:
            lines.append(f"  {dotted}: {e['msg']}")
    return "\n".join(lines)


def resolve_config_path(name_or_path: str | Path) -> Path:
    """`demo` → configs/demo.yaml; an existing path is used as it is."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") and p.exists():
        return p
    candidate = CONFIGS_DIR / f"{name_or_path}.yaml"
    if candidate.exists():
        return candidate
    known = sorted(q.stem for q in CONFIGS_DIR.glob("*.yaml"))
    raise ConfigError(f"config '{name_or_path}' not found: not a file, and not one of {known}")


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `dotted.key=value` overrides; values are parsed as YAML (so `0.5`, `[1,2]`, `null`),
    or kept as text when they are not YAML."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set '{item}': expected dotted.key=value")
        key, _, text = item.partition("=")
        try:
            value = yaml.safe_load(text) if text.strip() else ""
        except yaml.YAMLError:  # not YAML (e.g. a cron "*/15 …"): the text itself
            value = text
        node = raw
        parts = key.strip().split(".")
        for part in parts[:-1]:
            nxt = node.get(part)
            if nxt is None:
                nxt = node[part] = {}
            if not isinstance(nxt, dict):
                raise ConfigError(f"--set '{item}': '{part}' is not a section")
            node = nxt
        node[parts[-1]] = value
    return raw


def _read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """One config file as a dict; `extends: NAME|PATH` deep-merges it over its base."""
    if path in seen:
        raise ConfigError(f"{path}: `extends` loops back to {seen[0]}")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    base = raw.pop("extends", None)
    if base is None:
        return raw
    candidate = path.parent / str(base)
    return _merge(_read_yaml(candidate if candidate.is_file() else resolve_config_path(base),
                             (*seen, path)), raw)


def _merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(
            out.get(key), dict) else value
    return out


def load_config(name_or_path: str | Path, overrides: list[str] | None = None) -> Config:
    """Read a YAML config (name in configs/ or a path; `extends:` another), apply overrides,
    validate."""
    path = resolve_config_path(name_or_path)
    raw = apply_overrides(_read_yaml(path), overrides or [])
    try:
        return Config.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_format(err, str(path))) from None
