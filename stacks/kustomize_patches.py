"""Object arithmetic for the Python kustomize renderer: target selection, strategic merge,
JSON 6902, image rewriting, and finding the pod specs inside workloads.

Pure functions on plain dicts; they raise ValueError and stacks.kustomize adds the file name.
"""
from __future__ import annotations

import copy
import re
from typing import Any

Obj = dict[str, Any]
# Strategic-merge keys of the lists our patches touch; every other list is replaced whole
# (kustomize knows more keys from the OpenAPI schema; the equivalence test guards our use).
MERGE_KEYS = {"containers": "name", "initContainers": "name", "env": "name", "volumes": "name",
              "volumeMounts": "name", "imagePullSecrets": "name"}
TARGET_FIELDS = {"kind", "name", "namespace", "group", "version"}


def select(objs: list[Obj], target: Obj) -> list[Obj]:
    """Objects matching a kustomize patch target (values are full-match regexes, as kustomize).

    Raises ValueError when nothing matches: a patch aimed at nothing is a typo.
    """
    unknown = set(target) - TARGET_FIELDS
    if unknown:
        raise ValueError(f"unsupported target field(s) {sorted(unknown)}")

    def matches(obj: Obj) -> bool:
        group, _, version = obj["apiVersion"].rpartition("/")
        have = {"kind": obj["kind"], "name": obj["metadata"]["name"], "group": group,
                "version": version, "namespace": obj["metadata"].get("namespace", "")}
        return all(re.fullmatch(str(v), have[k]) for k, v in target.items() if v is not None)

    found = [o for o in objs if matches(o)]
    if not found:
        wanted = {k: v for k, v in target.items() if v is not None}
        raise ValueError(f"no resource matches {wanted}")
    return found


def strategic_merge(base: Any, patch: Any) -> Any:
    """`patch` merged into a copy of `base`: maps recursively, `null` deletes a key, keyed lists
    (MERGE_KEYS) item by item with `$patch: delete`, `$patch: replace` replaces a map.

    List order follows kyaml: the patch's items in patch order, then the base's other items.
    """
    if not (isinstance(base, dict) and isinstance(patch, dict)):
        return copy.deepcopy(patch)
    if patch.get("$patch") == "replace":
        return {k: copy.deepcopy(v) for k, v in patch.items() if k != "$patch"}
    out = copy.deepcopy(base)
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        elif key in MERGE_KEYS and isinstance(value, list) and isinstance(out.get(key), list):
            out[key] = _merge_list(out[key], value, MERGE_KEYS[key])
        else:
            out[key] = strategic_merge(out.get(key), value)
    return out


def _merge_list(base: list[Any], patch: list[Any], mkey: str) -> list[Any]:
    by_key = {item.get(mkey): item for item in base if isinstance(item, dict)}
    out, used = [], set()
    for item in patch:
        if not isinstance(item, dict) or mkey not in item:
            raise ValueError(f"list items need a {mkey!r} key to merge, got {item!r}")
        used.add(item[mkey])
        if item.get("$patch") == "delete":
            continue
        merged = strategic_merge(by_key[item[mkey]], item) if item[mkey] in by_key else item
        out.append(copy.deepcopy(merged))
    return out + [item for item in base if item.get(mkey) not in used]


def json6902(obj: Obj, ops: list[Obj]) -> None:
    """Apply JSON-patch operations add/replace/remove in place (RFC 6902 paths, `-` appends)."""
    for op in ops:
        path = op.get("path", "")
        parts = [p.replace("~1", "/").replace("~0", "~") for p in path.split("/")[1:]]
        try:
            parent: Any = obj
            for part in parts[:-1]:
                parent = parent[int(part)] if isinstance(parent, list) else parent[part]
            last = parts[-1]
            kind = op["op"]
            if kind in ("add", "replace") and isinstance(parent, list):
                index = len(parent) if last == "-" else int(last)
                if kind == "add":
                    parent.insert(index, copy.deepcopy(op["value"]))
                else:
                    parent[index] = copy.deepcopy(op["value"])
            elif kind == "add" or (kind == "replace" and last in parent):
                parent[last] = copy.deepcopy(op["value"])
            elif kind == "remove":
                del parent[int(last) if isinstance(parent, list) else last]
            else:
                raise KeyError(last)
        except (KeyError, IndexError, ValueError, TypeError) as exc:
            raise ValueError(f"cannot {op.get('op')} {path} in {obj['kind']}/"
                             f"{obj['metadata']['name']} ({type(exc).__name__}: {exc})") from None


def set_image(objs: list[Obj], image: Obj) -> None:
    """kustomize `images`: rewrite name/tag/digest of every (init) container image named
    `image["name"]` (the image reference without tag or digest)."""
    for obj in objs:
        for spec in pod_specs(obj):
            for c in spec.get("containers", []) + spec.get("initContainers", []):
                name, tag = re.fullmatch(r"(.+?)((?::[^:/@]+)?(?:@.+)?)", c["image"]).groups()
                if name != image["name"]:
                    continue
                if "newTag" in image:
                    tag = f":{image['newTag']}"
                if "digest" in image:
                    tag = f"@{image['digest']}"
                c["image"] = image.get("newName", name) + tag


def pod_specs(obj: Obj) -> list[Obj]:
    """The pod specs inside an object: a Pod's spec, a workload's template, a CronJob's job
    template; empty for objects that run nothing."""
    if obj.get("kind") == "Pod":
        return [obj.get("spec") or {}]
    spec = obj.get("spec") or {}
    if obj.get("kind") == "CronJob":
        spec = (spec.get("jobTemplate") or {}).get("spec") or {}
    template = spec.get("template") or {}
    return [template["spec"]] if isinstance(template, dict) and "spec" in template else []
