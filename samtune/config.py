"""One pydantic config tree for every pipeline, loaded from YAML with `--set` overrides.

Every section forbids unknown keys; a typo is reported with its dotted location and the closest
valid key (`ConfigError`).
"""
from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from samtune.config_sections import (  # noqa: F401  re-exported: one tree, one import path
    BenchmarkConfig,
    ConvertConfig,
    DataConfig,
    EvalConfig,
    LORA_TARGETS,
    LoraConfig,
    ModelConfig,
    PhantomConfig,
    PromptConfig,
    Section,
    SplitConfig,
    TrainConfig,
    ValidateConfig,
)
from samtune.config_runtime import (  # noqa: F401  re-exported
    InferConfig,
    RegistryConfig,
    ScheduleConfig,
    StackConfig,
    check_cron,
)

CONFIGS_DIR = Path(__file__).resolve().parent.parent / "configs"


class ConfigError(ValueError):
    """A config that cannot be used; the message is meant for the user as it is."""


class Config(Section):
    name: str = "samtune"
    output_dir: Path = Field(Path("outputs"), description="exports users open")
    data: DataConfig
    validate_: ValidateConfig = Field(default_factory=ValidateConfig, alias="validate")
    convert: ConvertConfig = Field(default_factory=ConvertConfig)
    split: SplitConfig = Field(default_factory=SplitConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    infer: InferConfig = Field(default_factory=InferConfig)
    registry: RegistryConfig = Field(default_factory=RegistryConfig)
    stack: StackConfig = Field(default_factory=StackConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    benchmark: BenchmarkConfig = Field(default_factory=BenchmarkConfig)

    model_config = ConfigDict(extra="forbid", validate_assignment=True, populate_by_name=True)

    @model_validator(mode="after")
    def _fit_the_model(self) -> "Config":
        """Model settings checked against the zoo before any work, and `convert.img_size: None`
        resolved to the model's input size (model.img_size, else the zoo entry's) and stored, so
        every reader gets an int and `--set model.name=medsam2` re-derives it (512)."""
        from samtune.models.registry import check_img_size, get_spec  # imports torch: lazily

        model = self.model
        try:
            spec = get_spec(model.name)
        except ValueError as exc:
            raise ValueError(f"model.name: {exc}") from None
        if model.img_size is not None:
            try:
                check_img_size(model.name, model.img_size)
            except ValueError as exc:
                raise ValueError(f"model.img_size: {exc}") from None
        if model.method == "qlora" and self.train.device == "cpu":
            raise ValueError("model.method qlora needs a CUDA GPU (4-bit bitsandbytes weights) "
                             "but train.device is cpu; use model.method lora on the CPU, or "
                             "train.device cuda/auto on a GPU machine")
        if model.method in ("lora", "qlora"):
            _check_lora_targets(model.name, spec.family, list(model.lora.targets))
        if "onnx" in self.train.export and (spec.family not in ("sam", "mobile_sam")
                                            or model.name.startswith("hq_")):
            raise ValueError(f"train.export onnx: segment-anything's ONNX layout covers SAM, "
                             f"MedSAM and MobileSAM, not '{model.name}' (family {spec.family})")
        if self.convert.img_size is None:
            self.convert.img_size = model.img_size or spec.img_size
        return self

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict with YAML key names (what `--dry-run` prints)."""
        return self.model_dump(mode="json", by_alias=True)


def _check_lora_targets(name: str, family: str, targets: list[str]) -> None:
    """Every LoRA target must exist in the model's family (`adapters.TARGET_PATTERNS`; training
    re-checks them against the built model's modules in `adapters.resolve_targets`)."""
    from samtune.models.adapters import family_patterns

    try:
        patterns = family_patterns(family)
    except ValueError as exc:
        raise ValueError(f"model.lora.targets: model '{name}' cannot take LoRA ({exc})") from None
    absent = [t for t in targets if t not in patterns]
    if absent:
        raise ValueError(f"model.lora.targets {absent} do not exist in the '{family}' family of "
                         f"'{name}'; valid: {', '.join(patterns)}")


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
