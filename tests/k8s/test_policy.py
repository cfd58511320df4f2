"""Security policy on every container we deploy or ZenML starts, RBAC scope, and the Dockerfiles."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from stacks.kustomize_patches import pod_specs
from tests.k8s.conftest import REPO, kustomization_dirs

# "<source>:<object>:<container>" -> why its root filesystem must stay writable. Empty: postgres,
# MinIO and MLflow write only to emptyDirs/claims, ZenML's pods to /tmp, $HOME and /data.
WRITABLE_ROOT_ALLOWED: dict[str, str] = {}
# What the orchestrator Role may touch (k8s/README.md, RBAC); no wildcards, nothing else.
ROLE_RESOURCES = {"pods", "pods/log", "jobs", "cronjobs"}


def violations(pod_spec: dict, container: dict, allow_writable_root: bool = False) -> list[str]:
    """Policy breaches of one container in its pod spec (container settings override the pod's)."""
    pod_ctx, ctx = pod_spec.get("securityContext") or {}, container.get("securityContext") or {}

    def effective(key: str) -> Any:
        return ctx.get(key, pod_ctx.get(key))

    out = []
    resources = container.get("resources") or {}
    for part in ("requests", "limits"):
        for res in ("cpu", "memory"):
            if res not in (resources.get(part) or {}):
                out.append(f"no {part}.{res}")
    if effective("runAsNonRoot") is not True:
        out.append("runAsNonRoot is not true")
    if not effective("runAsUser"):
        out.append("runAsUser missing or 0")
    if ctx.get("allowPrivilegeEscalation") is not False:
        out.append("allowPrivilegeEscalation is not false")
    if ctx.get("privileged"):
        out.append("privileged")
    if "ALL" not in ((ctx.get("capabilities") or {}).get("drop") or []):
        out.append("capabilities not dropped (ALL)")
    if (effective("seccompProfile") or {}).get("type") != "RuntimeDefault":
        out.append("seccompProfile is not RuntimeDefault")
    if ctx.get("readOnlyRootFilesystem") is not True and not allow_writable_root:
        out.append("root filesystem writable")
    image = container.get("image", "")
    if not re.search(r"(:[^:/@]+|@sha256:[0-9a-f]{64})$", image) or image.endswith(":latest"):
        out.append(f"image {image!r} not pinned")
    for flag in ("hostNetwork", "hostPID", "hostIPC"):
        if pod_spec.get(flag):
            out.append(flag)
    if any("hostPath" in v for v in pod_spec.get("volumes") or []):
        out.append("hostPath volume")
    return out


def _workloads(rendered: dict, zenml_manifests: dict) -> list[tuple[str, dict, dict]]:
    """("source:Kind/name:container", pod spec, container) for every container."""
    named = [(f"{rel}:{o['kind']}/{o['metadata']['name']}", o)
             for rel, objs in rendered.items() for o in objs]
    named += [(f"zenml:{key}", obj) for key, obj in zenml_manifests.items()]
    return [(f"{name}:{c['name']}", spec, c) for name, obj in named for spec in pod_specs(obj)
            for c in spec.get("containers", []) + spec.get("initContainers", [])]


def test_every_container_meets_the_policy(rendered: dict, zenml_manifests: dict) -> None:
    workloads = _workloads(rendered, zenml_manifests)
    names = {w[0].split(":")[1] for w in workloads}
    assert {"StatefulSet/samtune-postgres", "Deployment/samtune-mlflow",
            "Deployment/samtune-minio", "cronjob/orchestrator", "job/train_model",
            "pod/train_model", "job/convert_to_coco"} <= names
    assert any(w[0].endswith("ensure-bucket") for w in workloads), "init containers are checked"
    problems = {key: v for key, spec, c in workloads
                if (v := violations(spec, c, key in WRITABLE_ROOT_ALLOWED))}
    assert not problems, problems


def test_the_policy_check_can_fail() -> None:
    bad = {"name": "x", "image": "postgres", "securityContext": {"runAsUser": 0}}
    found = violations({"hostNetwork": True}, bad)
    assert len(found) == 12, found
    good = {"name": "x", "image": "postgres:16.6",
            "resources": {"requests": {"cpu": "1", "memory": "1Gi"},
                          "limits": {"cpu": "1", "memory": "1Gi"}},
            "securityContext": {"runAsNonRoot": True, "runAsUser": 5,
                                "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                "capabilities": {"drop": ["ALL"]}}}
    assert violations({"securityContext": {"seccompProfile": {"type": "RuntimeDefault"}}},
                      good) == []


def test_allow_list_entries_say_why() -> None:
    assert all(len(reason) > 20 for reason in WRITABLE_ROOT_ALLOWED.values())


@pytest.mark.parametrize("rel", kustomization_dirs())
def test_orchestrator_rbac_is_namespaced_and_minimal(rel: str, rendered: dict,
                                                     stack_spec: dict) -> None:
    objs = rendered[rel]
    kinds = {o["kind"] for o in objs}
    assert not kinds & {"ClusterRole", "ClusterRoleBinding"}, f"{rel}: cluster-wide RBAC"
    roles = {o["metadata"]["name"]: o for o in objs if o["kind"] == "Role"}
    bindings = [o for o in objs if o["kind"] == "RoleBinding"]
    orchestrator = stack_spec["components"]["orchestrator"]["configuration"]
    account = orchestrator["service_account_name"]
    bound = [b for b in bindings if {"kind": "ServiceAccount", "name": account,
                                     "namespace": "samtune"} in b["subjects"]]
    assert len(bound) == 1 and bound[0]["roleRef"]["kind"] == "Role"
    rules = roles[bound[0]["roleRef"]["name"]]["rules"]
    resources = {r for rule in rules for r in rule["resources"]}
    assert resources <= ROLE_RESOURCES, resources - ROLE_RESOURCES
    assert {"pods", "jobs"} <= resources
    for rule in rules:
        assert "*" not in rule["verbs"] + rule["resources"] + rule["apiGroups"]
        assert set(rule["apiGroups"]) <= {"", "batch"}
    accounts = {o["metadata"]["name"]: o for o in objs if o["kind"] == "ServiceAccount"}
    step_account = accounts[orchestrator["step_pod_service_account_name"]]
    assert step_account["automountServiceAccountToken"] is False
    assert not [b for b in bindings for s in b["subjects"]
                if s["name"] == step_account["metadata"]["name"]], "the step account has no role"


def _dockerfile(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined, ARG defaults substituted."""
    text = re.sub(r"\\\n", " ", path.read_text())
    lines = [ln.strip() for ln in text.splitlines()]
    lines = [ln for ln in lines if ln and not ln.startswith("#")]
    args: dict[str, str] = {}
    out = []
    for line in lines:
        op, _, rest = line.partition(" ")
        rest = re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), rest)
        if op.upper() == "ARG" and "=" in rest:
            key, _, value = rest.partition("=")
            args[key.strip()] = value.strip()
        out.append((op.upper(), rest))
    return out


@pytest.mark.parametrize("name", ["Dockerfile", "mlflow.Dockerfile"])
def test_dockerfiles_pin_and_drop_root(name: str) -> None:
    steps = _dockerfile(REPO / "docker" / name)
    users = [rest for op, rest in steps if op == "USER"]
    assert users, "no USER"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0") and int(user) >= 1000
    for op, rest in steps:
        if op == "FROM":
            image = rest.split()[0]
            assert re.search(r":[\w.-]+$", image) and not image.endswith(":latest"), image
        if op == "RUN" and "pip install" in rest:
            assert "requirements.lock" in rest, f"unconstrained install: {rest}"
    assert any(op == "WORKDIR" for op, _ in steps)


def test_pipeline_image_installs_like_make_venv() -> None:
    steps = _dockerfile(REPO / "docker" / "Dockerfile")
    run = " ".join(rest for op, rest in steps if op == "RUN")
    assert "-r /tmp/req/requirements.txt -c /tmp/req/requirements.lock" in run
    assert "SAM2_BUILD_CUDA=0 pip install --no-build-isolation" in run and "sam2==1.1.0" in run
    base = next(rest for op, rest in steps if op == "FROM")
    assert "cuda" in base and "runtime" in base
    copied = " ".join(rest for op, rest in steps if op == "COPY")
    for folder in ("samtune/", "steps/", "pipelines/", "materializers/", "stacks/", "configs/",
                   "run.py"):
        assert folder in copied, folder
    assert (REPO / ".dockerignore").is_file()
    ignored = (REPO / ".dockerignore").read_text().split()
    assert {".venv", ".git", "**/secrets.env"} <= set(ignored)
