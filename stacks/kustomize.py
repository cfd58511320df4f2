"""Render a kustomization to a list of objects: `kubectl kustomize` where it exists, else Python.

The Python renderer covers the subset our k8s/ tree uses, in kustomize's transformer order
(generators, patches, namespace, labels, images): `resources` (files and directories),
`configMapGenerator`/`secretGenerator` (literals, envs, files; behavior create|merge|replace;
with disableNameSuffixHash), `patches` (strategic merge, `$patch: delete`, JSON 6902 with a
target), `namespace`, `labels` (metadata only) and `images`. Anything else is an error naming the
kustomization file, so a typo never renders silently; a patch whose target selector matches
nothing is an error too (kustomize would skip it).

    python -m stacks.kustomize k8s/overlays/dev      # YAML on stdout
"""
from __future__ import annotations

import base64
import copy
import logging
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from stacks.kustomize_patches import json6902, select, set_image, strategic_merge

log = logging.getLogger(__name__)

Obj = dict[str, Any]
KUSTOMIZATION_NAMES = ("kustomization.yaml", "kustomization.yml", "Kustomization")
SUPPORTED = {"apiVersion", "kind", "resources", "namespace", "labels", "patches", "images",
             "configMapGenerator", "secretGenerator", "generatorOptions"}
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "PersistentVolume",
                  "StorageClass", "CustomResourceDefinition", "PriorityClass",
                  "RuntimeClass", "IngressClass"}


class KustomizeError(ValueError):
    """A kustomization that cannot be rendered; the message names the file."""


def kubectl_available() -> bool:
    """Whether `kubectl` (which embeds kustomize) is on PATH."""
    return shutil.which("kubectl") is not None


def render(path: Path | str, *, use_kubectl: bool | None = None) -> list[Obj]:
    """Objects of the kustomization in `path`; kubectl when available unless told otherwise."""
    use = kubectl_available() if use_kubectl is None else use_kubectl
    return render_kubectl(path) if use else render_python(path)


def render_kubectl(path: Path | str) -> list[Obj]:
    """`kubectl kustomize path`, parsed."""
    proc = subprocess.run(["kubectl", "kustomize", str(path)], capture_output=True, text=True,
                          check=False)
    if proc.returncode != 0:
        hint = ("; copy secrets.example.env to secrets.env and fill it in (k8s/README.md)"
                if "secrets.env" in proc.stderr else "")
        raise KustomizeError(f"{path}: kubectl kustomize failed: {proc.stderr.strip()}{hint}")
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def render_python(path: Path | str) -> list[Obj]:
    """The pure-Python renderer (see module docstring for what it supports)."""
    return _build(Path(path).resolve(), ())


def to_yaml(objs: list[Obj]) -> str:
    """Multi-document YAML, as `kubectl kustomize` prints it."""
    return yaml.safe_dump_all(objs, sort_keys=True, default_flow_style=False)


def _kustomization_file(folder: Path) -> Path:
    for name in KUSTOMIZATION_NAMES:
        if (folder / name).is_file():
            return folder / name
    raise KustomizeError(f"{folder}: no kustomization.yaml")


def _load_docs(file: Path, where: Path) -> list[Any]:
    try:
        return [d for d in yaml.safe_load_all(file.read_text()) if d is not None]
    except FileNotFoundError:
        raise KustomizeError(f"{where}: {file.name} not found ({file})") from None
    except yaml.YAMLError as exc:
        raise KustomizeError(f"{file}: invalid YAML: {exc}") from None


def _build(folder: Path, seen: tuple[Path, ...]) -> list[Obj]:
    if folder in seen:
        raise KustomizeError(f"{folder}: kustomization cycle via {seen[-1]}")
    kfile = _kustomization_file(folder)
    spec = (_load_docs(kfile, kfile) or [{}])[0]
    if not isinstance(spec, dict):
        raise KustomizeError(f"{kfile}: expected a mapping")
    unknown = sorted(set(spec) - SUPPORTED)
    if unknown:
        raise KustomizeError(f"{kfile}: unknown or unsupported field(s) {unknown}; "
                             f"supported: {sorted(SUPPORTED)}")
    objs: list[Obj] = []
    for entry in spec.get("resources") or []:
        target = folder / entry
        if target.is_dir():
            objs += _build(target.resolve(), seen + (folder,))
        else:
            for doc in _load_docs(target, kfile):
                objs.append(_checked(doc, target))
    _check_unique(objs, kfile)
    options = spec.get("generatorOptions") or {}
    for kind, key in (("ConfigMap", "configMapGenerator"), ("Secret", "secretGenerator")):
        for gen in spec.get(key) or []:
            _generate(objs, kind, gen, options, folder, kfile)
    for patch in spec.get("patches") or []:
        objs = _apply_patch(objs, patch, folder, kfile)
    if "namespace" in spec:
        _set_namespace(objs, spec["namespace"])
    for entry in spec.get("labels") or []:
        _add_labels(objs, entry, kfile)
    for image in spec.get("images") or []:
        if "name" not in image:
            raise KustomizeError(f"{kfile}: an images entry needs a name")
        set_image(objs, image)
    return objs


def _checked(doc: Any, file: Path) -> Obj:
    if not (isinstance(doc, dict) and doc.get("apiVersion") and doc.get("kind")
            and (doc.get("metadata") or {}).get("name")):
        raise KustomizeError(f"{file}: every document needs apiVersion, kind and metadata.name")
    return doc


def _key(obj: Obj) -> tuple[str, str, str]:
    return obj["kind"], obj["metadata"].get("namespace", ""), obj["metadata"]["name"]


def _check_unique(objs: list[Obj], kfile: Path) -> None:
    keys = [_key(o) for o in objs]
    dupes = sorted({k for k in keys if keys.count(k) > 1})
    if dupes:
        raise KustomizeError(f"{kfile}: duplicate resources {dupes}")


def _generate(objs: list[Obj], kind: str, gen: Obj, options: Obj, folder: Path,
              kfile: Path) -> None:
    name = gen.get("name")
    if not name:
        raise KustomizeError(f"{kfile}: a {kind} generator needs a name")
    opts = {**options, **(gen.get("options") or {})}
    if not opts.get("disableNameSuffixHash"):
        raise KustomizeError(f"{kfile}: {kind} {name}: name-suffix hashes are not supported by "
                             "the Python renderer; set generatorOptions.disableNameSuffixHash")
    data: dict[str, str] = {}
    for literal in gen.get("literals") or []:
        data.update([_key_value(literal, f"{kfile}: {kind} {name}")])
    for env in list(gen.get("envs") or []) + ([gen["env"]] if gen.get("env") else []):
        data.update(_read_env(folder / env, f"{kfile}: {kind} {name}"))
    for item in gen.get("files") or []:
        key, _, rel = item.partition("=") if "=" in item else (Path(item).name, "", item)
        file = folder / rel
        if not file.is_file():
            raise KustomizeError(f"{kfile}: {kind} {name}: file {rel} not found")
        data[key] = file.read_text()
    behavior = gen.get("behavior", "create")
    existing = [o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name]
    if behavior == "create" and existing:
        raise KustomizeError(f"{kfile}: {kind} {name} exists already; use behavior: merge")
    if behavior in ("merge", "replace"):
        if not existing:
            raise KustomizeError(f"{kfile}: {kind} {name}: behavior {behavior} needs an "
                                 f"existing {kind} from a base")
        old = _decode(existing[0]) if behavior == "merge" else {}
        objs.remove(existing[0])
        data = {**old, **data}
    elif behavior != "create":
        raise KustomizeError(f"{kfile}: {kind} {name}: unknown behavior {behavior!r}")
    metadata = copy.deepcopy(existing[0]["metadata"]) if existing else {"name": name}
    for field in ("labels", "annotations"):
        if opts.get(field):
            metadata.setdefault(field, {}).update(opts[field])
    obj: Obj = {"apiVersion": "v1", "kind": kind, "metadata": metadata}
    if kind == "Secret":
        obj["type"] = gen.get("type", "Opaque")
        obj["data"] = {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}
    else:
        obj["data"] = data
    objs.append(obj)


def _decode(obj: Obj) -> dict[str, str]:
    data = obj.get("data") or {}
    if obj["kind"] == "Secret":
        return {k: base64.b64decode(v).decode() for k, v in data.items()}
    return dict(data)


def _key_value(text: str, where: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not re.fullmatch(r"[-._a-zA-Z0-9]+", key):
        raise KustomizeError(f"{where}: expected KEY=VALUE, got {text!r}")
    return key, value


def _read_env(file: Path, where: str) -> dict[str, str]:
    if not file.is_file():
        hint = (f"; copy {file.name.replace('.env', '.example.env')} to {file.name} and fill it in"
                if file.name == "secrets.env" else "")
        raise KustomizeError(f"{where}: env file {file} not found{hint}")
    lines = [ln.strip() for ln in file.read_text().splitlines()]
    return dict(_key_value(ln, f"{where} ({file.name})") for ln in lines
                if ln and not ln.startswith("#"))


def _apply_patch(objs: list[Obj], entry: Obj, folder: Path, kfile: Path) -> list[Obj]:
    if "path" in entry:
        where = f"{kfile}: patch {entry['path']}"
        docs = _load_docs(folder / entry["path"], kfile)
    elif "patch" in entry:
        where = f"{kfile}: inline patch"
        docs = [d for d in yaml.safe_load_all(entry["patch"]) if d is not None]
    else:
        raise KustomizeError(f"{kfile}: a patch needs `path` or `patch`")
    target = entry.get("target")
    if len(docs) == 1 and isinstance(docs[0], list):
        if not target:
            raise KustomizeError(f"{where}: a JSON 6902 patch needs a target")
        for obj in _selected(objs, target, where):
            try:
                json6902(obj, docs[0])
            except ValueError as exc:
                raise KustomizeError(f"{where}: {exc}") from None
        return objs
    for doc in docs:
        if not isinstance(doc, dict):
            raise KustomizeError(f"{where}: expected a strategic-merge patch (a mapping)")
        sel = target or {"kind": doc.get("kind"), "name": (doc.get("metadata") or {}).get("name")}
        for obj in _selected(objs, sel, where):
            if doc.get("$patch") == "delete":
                objs = [o for o in objs if o is not obj]
            else:
                merged = strategic_merge(obj, {k: v for k, v in doc.items() if k != "$patch"})
                objs = [merged if o is obj else o for o in objs]
    return objs


def _selected(objs: list[Obj], target: Obj, where: str) -> list[Obj]:
    try:
        return select(objs, target)
    except ValueError as exc:
        raise KustomizeError(f"{where}: {exc}") from None


def _set_namespace(objs: list[Obj], namespace: str) -> None:
    for obj in objs:
        if obj["kind"] == "Namespace":
            obj["metadata"]["name"] = namespace
        elif obj["kind"] not in CLUSTER_SCOPED:
            obj["metadata"]["namespace"] = namespace


def _add_labels(objs: list[Obj], entry: Obj, kfile: Path) -> None:
    if entry.get("includeSelectors") or entry.get("includeTemplates"):
        raise KustomizeError(f"{kfile}: labels with includeSelectors/includeTemplates are not "
                             "supported by the Python renderer")
    for obj in objs:
        obj["metadata"].setdefault("labels", {}).update(entry.get("pairs") or {})


def main(argv: list[str] | None = None) -> int:
    """CLI: print the rendered YAML of one kustomization."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        log.error("usage: python -m stacks.kustomize PATH")
        return 2
    try:
        sys.stdout.write(to_yaml(render(args[0])))
    except KustomizeError as exc:
        log.error("%s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
