"""The remote Kubernetes stack as code: load stacks/k8s_stack.yaml and register it with ZenML.

`register_stack` is idempotent: a component whose flavor and configuration already match is
kept, a changed one is updated in place, and the stack is created or re-pointed at them. It
returns the actions as lines ("create orchestrator samtune-k8s-orchestrator (kubernetes)", …);
with dry_run=True it only reads the ZenML store and needs none of the integrations installed.

    python -m stacks.remote stacks/k8s_stack.yaml [--dry-run] [--activate]

Per-step pod settings: stacks.k8s_pods (re-exported here: `pod_settings_for`, `STEP_POOLS`).
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import logging
import os
import re
import sys
from pathlib import Path
from typing import Any, Mapping

import yaml
from pydantic import ValidationError

from stacks.k8s_pods import (STEP_POOLS, PodPools, orchestrator_pod_settings,  # noqa: F401
                             pod_settings_for)

log = logging.getLogger(__name__)

# (component type, flavor) -> (ZenML integration, flavor class); "" = built into ZenML
FLAVORS: dict[tuple[str, str], tuple[str, str]] = {
    ("orchestrator", "kubernetes"):
        ("kubernetes", "zenml.integrations.kubernetes.flavors:KubernetesOrchestratorFlavor"),
    ("artifact_store", "s3"): ("s3", "zenml.integrations.s3.flavors:S3ArtifactStoreFlavor"),
    ("experiment_tracker", "mlflow"):
        ("mlflow", "zenml.integrations.mlflow.flavors:MLFlowExperimentTrackerFlavor"),
    ("model_registry", "mlflow"):
        ("mlflow", "zenml.integrations.mlflow.flavors:MLFlowModelRegistryFlavor"),
    ("container_registry", "default"):
        ("", "zenml.container_registries:DefaultContainerRegistryFlavor"),
    ("image_builder", "local"): ("", "zenml.image_builders:LocalImageBuilderFlavor"),
    ("image_builder", "kaniko"):
        ("kaniko", "zenml.integrations.kaniko.flavors:KanikoImageBuilderFlavor"),
}
# Modules an integration needs at run time. ZenML's own check_installation also insists on
# optional extras and exact pins (it rejects our working mlflow), so we look for the modules.
INTEGRATION_MODULES = {"kubernetes": ("kubernetes",), "s3": ("s3fs", "boto3"),
                       "mlflow": ("mlflow",), "kaniko": ("kubernetes",)}
REQUIRED_TYPES = ("orchestrator", "artifact_store", "container_registry")
SPEC_KEYS = {"name", "components", "pod_pools"}
COMPONENT_KEYS = {"name", "flavor", "configuration"}
ENV_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_SECRET_REF = re.compile(r"\{\{\s*([^.\s}]+)\.([^}\s]+)\s*\}\}")


class StackSpecError(ValueError):
    """The stack YAML is malformed or names something unknown; the message says where."""


class MissingIntegrationError(RuntimeError):
    """Python packages of the stack's ZenML integrations are not installed."""


def load_stack_spec(path: Path | str, *, environ: Mapping[str, str] | None = None) -> dict:
    """Read, expand ${VAR} / ${VAR:-default} from `environ` (default os.environ) and validate."""
    path = Path(path)
    env = os.environ if environ is None else environ
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise StackSpecError(f"{path}: cannot read the stack spec: {exc}") from None
    missing: list[str] = []

    def expand(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: expand(v) for k, v in value.items()}
        if isinstance(value, list):
            return [expand(v) for v in value]
        if not isinstance(value, str):
            return value

        def sub(m: re.Match) -> str:
            if m.group(1) in env:
                return env[m.group(1)]
            if m.group(2) is None:
                missing.append(m.group(1))
                return m.group(0)
            return m.group(2)
        return ENV_VAR.sub(sub, value)

    spec = expand(raw)
    if missing:
        raise StackSpecError(f"{path}: set the environment variable(s) {sorted(set(missing))}")
    validate_stack_spec(spec, source=str(path))
    return spec


def validate_stack_spec(spec: Any, *, source: str = "stack spec") -> None:
    """Raise StackSpecError unless the spec has a name, known component types and flavors,
    configuration keys their flavor knows (and values it accepts), and valid pod_pools."""
    from zenml.enums import StackComponentType

    if not isinstance(spec, dict) or not spec.get("name"):
        raise StackSpecError(f"{source}: expected a mapping with a `name`")
    if set(spec) - SPEC_KEYS:
        raise StackSpecError(f"{source}: unknown key(s) {sorted(set(spec) - SPEC_KEYS)}; "
                             f"expected {sorted(SPEC_KEYS)}")
    components = spec.get("components") or {}
    known = sorted(t.value for t in StackComponentType)
    for ctype, comp in components.items():
        where = f"{source}: components.{ctype}"
        if ctype not in known:
            raise StackSpecError(f"{where}: unknown component type {ctype!r}; known: {known}")
        if not isinstance(comp, dict) or set(comp) - COMPONENT_KEYS or not comp.get("name"):
            raise StackSpecError(f"{where}: expected {{name, flavor, configuration}}")
        _validate_configuration(ctype, comp, where)
    absent = [t for t in REQUIRED_TYPES if t not in components]
    if absent:
        raise StackSpecError(f"{source}: a remote stack needs component(s) {absent}")
    try:
        PodPools.model_validate(spec.get("pod_pools") or {})
    except ValidationError as exc:
        raise StackSpecError(f"{source}: pod_pools: {exc}") from None


def _validate_configuration(ctype: str, comp: dict, where: str) -> None:
    key = (ctype, comp.get("flavor"))
    if key not in FLAVORS:
        offered = sorted(f for t, f in FLAVORS if t == ctype)
        raise StackSpecError(f"{where}: flavor {comp.get('flavor')!r} is not supported here; "
                             f"use one of {offered}")
    module, _, cls = FLAVORS[key][1].partition(":")
    config_class = getattr(importlib.import_module(module), cls)().config_class
    config = comp.get("configuration") or {}
    unknown = sorted(set(config) - set(config_class.model_fields))
    if unknown:
        raise StackSpecError(f"{where}: {comp['flavor']} does not know {unknown}")
    # secret references are resolved by ZenML at run time; validate the rest with a stand-in
    stand_ins = {k: "secret-reference" if isinstance(v, str) and _SECRET_REF.fullmatch(v) else v
                 for k, v in config.items()}
    try:
        config_class(**stand_ins)
    except Exception as exc:  # noqa: BLE001 - flavors raise their own error types
        raise StackSpecError(f"{where}: {exc}") from None


def missing_integrations(spec: dict) -> dict[str, list[str]]:
    """Integration -> its missing modules, in the order the spec uses the integrations."""
    missing: dict[str, list[str]] = {}
    for ctype, comp in spec["components"].items():
        integration = FLAVORS[(ctype, comp["flavor"])][0]
        absent = [m for m in INTEGRATION_MODULES.get(integration, ())
                  if importlib.util.find_spec(m) is None]
        if absent:
            missing[integration] = absent
    return missing


def component_configurations(spec: dict) -> dict[str, dict]:
    """Component type -> configuration to register; a kubernetes orchestrator without explicit
    pod settings gets them from `pod_pools` (CPU pool for steps, the orchestrator pod's own)."""
    pools = PodPools.model_validate(spec.get("pod_pools") or {})
    configs = {t: dict(c.get("configuration") or {}) for t, c in spec["components"].items()}
    orchestrator = spec["components"]["orchestrator"]
    if orchestrator["flavor"] == "kubernetes":
        config = configs["orchestrator"]
        config.setdefault("pod_settings", _dump(pod_settings_for("cpu", pools)))
        config.setdefault("orchestrator_pod_settings", _dump(orchestrator_pod_settings(pools)))
    return configs


def _dump(settings: Any) -> dict:
    return settings.model_dump(mode="json", exclude_defaults=True)


def register_stack(spec: dict, *, dry_run: bool = False, activate: bool = False,
                   client: Any = None) -> list[str]:
    """Register (or, dry_run, plan) the stack in `spec`; returns the actions in order.

    Raises MissingIntegrationError (before touching the store) when a flavor's packages are
    missing, and StackSpecError when a referenced ZenML secret does not exist.
    """
    validate_stack_spec(spec)
    missing = missing_integrations(spec)
    if missing and not dry_run:
        integrations = " ".join(_integrations(spec))
        detail = "; ".join(f"{i}: {', '.join(m)}" for i, m in missing.items())
        raise MissingIntegrationError(f"the stack needs packages that are not installed ({detail})"
                                      f". Install them with: zenml integration install "
                                      f"{integrations}")
    if client is None:
        from zenml.client import Client

        client = Client()
    from zenml.enums import StackComponentType

    actions = [f"install integration {i} (missing {', '.join(m)})" for i, m in missing.items()]
    actions += _check_secrets(client, spec, dry_run)
    configs = component_configurations(spec)
    for ctype, comp in spec["components"].items():
        actions.append(_ensure_component(client, StackComponentType(ctype), comp["name"],
                                         comp["flavor"], configs[ctype], dry_run))
    actions.append(_ensure_stack(client, spec, dry_run))
    if activate:
        actions.append(f"activate stack {spec['name']}")
        if not dry_run:
            client.activate_stack(spec["name"])
    for action in actions:
        log.info("%s%s", "[dry run] " if dry_run else "", action)
    return actions


def _integrations(spec: dict) -> list[str]:
    names = [FLAVORS[(t, c["flavor"])][0] for t, c in spec["components"].items()]
    return list(dict.fromkeys(n for n in names if n))


def _check_secrets(client: Any, spec: dict, dry_run: bool) -> list[str]:
    keys: dict[str, set[str]] = {}
    for name, key in _SECRET_REF.findall(yaml.safe_dump(spec["components"])):
        keys.setdefault(name, set()).add(key)
    actions = []
    for name in sorted(keys):
        try:
            client.get_secret(name)
            actions.append(f"use secret {name}")
        except KeyError:
            if not dry_run:
                example = " ".join(f"--{k}=…" for k in sorted(keys[name]))
                raise StackSpecError(f"ZenML secret {name!r} does not exist; create it first: "
                                     f"zenml secret create {name} {example}") from None
            actions.append(f"missing secret {name} (create it before registering)")
    return actions


def _ensure_component(client: Any, ctype: Any, name: str, flavor: str, config: dict,
                      dry_run: bool) -> str:
    found = client.list_stack_components(name=name, type=ctype.value, size=1).items
    if not found:
        if not dry_run:
            client.create_stack_component(name=name, flavor=flavor, component_type=ctype,
                                          configuration=config)
        return f"create {ctype.value} {name} ({flavor})"
    existing = found[0]
    if existing.flavor_name != flavor:
        raise StackSpecError(f"{ctype.value} {name} exists with flavor {existing.flavor_name}, "
                             f"not {flavor}: rename it in the spec or delete the old one")
    if dict(existing.configuration) == config:
        return f"keep {ctype.value} {name}"
    if not dry_run:
        removed = {k: None for k in existing.configuration if k not in config}
        client.update_stack_component(name, ctype, configuration={**config, **removed})
    return f"update {ctype.value} {name}"


def _ensure_stack(client: Any, spec: dict, dry_run: bool) -> str:
    from zenml.enums import StackComponentType

    wanted = {StackComponentType(t): c["name"] for t, c in spec["components"].items()}
    try:
        stack = client.get_stack(spec["name"], allow_name_prefix_match=False)
    except KeyError:
        if not dry_run:
            client.create_stack(name=spec["name"], components=wanted)
        return f"create stack {spec['name']}"
    have = {t: comps[0].name for t, comps in stack.components.items() if comps}
    if have == wanted:
        return f"keep stack {spec['name']}"
    if not dry_run:
        client.update_stack(spec["name"], component_updates=wanted)
    return f"update stack {spec['name']}"


def main(argv: list[str] | None = None) -> int:
    """CLI: register (or plan) the stack described by a YAML spec."""
    parser = argparse.ArgumentParser(prog="python -m stacks.remote", description=__doc__)
    parser.add_argument("spec", type=Path, help="stack YAML, e.g. stacks/k8s_stack.yaml")
    parser.add_argument("--dry-run", action="store_true", help="only say what would change")
    parser.add_argument("--activate", action="store_true", help="make it the active stack")
    args = parser.parse_args(argv)
    import zenml  # noqa: F401 - installs ZenML's root log handler, which ours then replaces

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s",
                        force=True)
    try:
        register_stack(load_stack_spec(args.spec), dry_run=args.dry_run, activate=args.activate)
    except (StackSpecError, MissingIntegrationError) as exc:
        log.error("%s", exc)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
