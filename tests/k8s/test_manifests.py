"""kustomize base and overlays: they render, validate strictly, agree across renderers, keep
secrets out of git, and a typo fails with the file's name."""
from __future__ import annotations

import base64
import shutil
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from stacks import kustomize
from stacks.kustomize import KustomizeError, render_kubectl, render_python
from stacks.kustomize_patches import pod_specs
from tests.k8s.conftest import (K8S, K8S_VERSIONS, REPO, copy_tree_with_example_secrets,
                                kustomization_dirs)

KUSTOMIZATIONS = kustomization_dirs()
needs_kubectl = pytest.mark.skipif(shutil.which("kubectl") is None,
                                   reason="kubectl not on PATH (CI): Python renderer only")


def _by_key(objs: list[dict]) -> dict[tuple, dict]:
    return {(o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]): o for o in objs}


def _containers(objs: list[dict]) -> list[dict]:
    return [c for o in objs for s in pod_specs(o)
            for c in s.get("containers", []) + s.get("initContainers", [])]


def test_the_tree_has_base_and_both_overlays() -> None:
    assert KUSTOMIZATIONS == ["base", "overlays/dev", "overlays/gpu-cluster"]


@pytest.mark.parametrize("rel", KUSTOMIZATIONS)
def test_every_object_validates_strictly(rel: str, rendered: dict) -> None:
    assert rendered[rel], f"{rel} rendered nothing"
    for obj in rendered[rel]:
        for version in K8S_VERSIONS:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                path = ".".join(str(p) for p in exc.path)
                pytest.fail(f"{rel}: {obj['kind']}/{obj['metadata']['name']} invalid for "
                            f"Kubernetes {version} at {path}: {exc.message}")


@needs_kubectl
@pytest.mark.parametrize("rel", KUSTOMIZATIONS)
def test_python_renderer_matches_kubectl(rel: str, k8s_tree: Path) -> None:
    assert _by_key(render_python(k8s_tree / rel)) == _by_key(render_kubectl(k8s_tree / rel))


def test_render_falls_back_to_python_without_kubectl(k8s_tree: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kustomize.shutil, "which", lambda name: None)
    assert not kustomize.kubectl_available()
    objs = kustomize.render(k8s_tree / "overlays/dev")
    assert _by_key(objs) == _by_key(render_python(k8s_tree / "overlays/dev"))


def test_overlays_differ_where_they_should(rendered: dict) -> None:
    dev, gpu = _by_key(rendered["overlays/dev"]), _by_key(rendered["overlays/gpu-cluster"])
    minio = {k for k in dev if k[2] == "samtune-minio"}
    assert {k[0] for k in minio} == {"Deployment", "Service", "PersistentVolumeClaim"}
    assert not {k for k in gpu if k[2] == "samtune-minio"}
    storage = gpu[("ConfigMap", "samtune", "samtune-storage")]["data"]
    assert storage["MLFLOW_S3_ENDPOINT_URL"].startswith("https://")
    assert storage["CREATE_BUCKET"] == "false" and storage["MLFLOW_BUCKET"] != "samtune"
    assert dev[("ConfigMap", "samtune", "samtune-storage")]["data"]["MLFLOW_S3_ENDPOINT_URL"] \
        == "http://samtune-minio:9000"
    data = gpu[("PersistentVolumeClaim", "samtune", "samtune-data")]["spec"]
    assert data["accessModes"] == ["ReadWriteMany"] and data["storageClassName"]
    assert dev[("PersistentVolumeClaim", "samtune", "samtune-data")]["spec"]["accessModes"] \
        == ["ReadWriteOnce"]
    images = {c["image"] for c in _containers(list(gpu.values())) if "mlflow" in c["image"]}
    assert images == {"registry.example.com/samtune/mlflow:3.17.2"}


def test_workloads_the_issue_asks_for(rendered: dict) -> None:
    base = _by_key(rendered["base"])
    postgres = base[("StatefulSet", "samtune", "samtune-postgres")]
    service = base[("Service", "samtune", "samtune-postgres")]
    assert service["spec"]["clusterIP"] == "None"
    assert postgres["spec"]["serviceName"] == "samtune-postgres"
    assert postgres["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"
    mlflow = base[("Deployment", "samtune", "samtune-mlflow")]["spec"]["template"]["spec"]
    args = " ".join(mlflow["containers"][0]["args"])
    assert "--backend-store-uri=$(MLFLOW_BACKEND_STORE_URI)" in args
    assert "--artifacts-destination=s3://$(MLFLOW_BUCKET)/mlflow" in args
    env = {e["name"]: e for e in mlflow["containers"][0]["env"]}
    assert env["MLFLOW_BACKEND_STORE_URI"]["value"].startswith("postgresql://")
    assert ("PersistentVolumeClaim", "samtune", "samtune-data") in base
    for rel, objs in rendered.items():
        for obj in objs:
            if obj["kind"] != "Namespace":
                assert obj["metadata"].get("namespace") == "samtune", (rel, obj["metadata"])


@pytest.mark.parametrize("rel", KUSTOMIZATIONS)
def test_secrets_are_referenced_never_inlined(rel: str, rendered: dict) -> None:
    objs = rendered[rel]
    secrets = {o["metadata"]["name"]: o for o in objs if o["kind"] == "Secret"}
    config_maps = {o["metadata"]["name"]: o for o in objs if o["kind"] == "ConfigMap"}
    for container in _containers(objs):
        for env in container.get("env", []):
            if any(w in env["name"] for w in ("PASSWORD", "SECRET", "TOKEN", "ACCESS_KEY")):
                assert "value" not in env, f"{rel}: {container['name']} inlines {env['name']}"
                ref = env["valueFrom"]["secretKeyRef"]
                if rel != "base":  # the base leaves the Secret to its overlays
                    data = secrets[ref["name"]]["data"]
                    assert ref["key"] in data, f"{rel}: {ref} names a missing key"
        for source in container.get("envFrom", []):
            assert "configMapRef" in source and (rel == "base" or
                                                 source["configMapRef"]["name"] in config_maps)
    if rel == "base":
        assert not secrets
    else:  # the rendered secret is exactly the committed placeholders
        example = dict(line.split("=", 1) for line in (K8S / rel / "secrets.example.env")
                       .read_text().splitlines() if line and not line.startswith("#"))
        data = secrets["samtune-secrets"]["data"]
        decoded = {k: base64.b64decode(v).decode() for k, v in data.items()}
        assert decoded == example
        assert all("CHANGE-ME" in v for k, v in example.items() if k != "POSTGRES_USER")


def test_real_secrets_files_are_git_ignored() -> None:
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("git not on PATH or not a git checkout")
    for rel in ("overlays/dev", "overlays/gpu-cluster"):
        ignored = subprocess.run(["git", "check-ignore", "-q", f"k8s/{rel}/secrets.env"], cwd=REPO)
        assert ignored.returncode == 0, f"k8s/{rel}/secrets.env is not git-ignored"
        tracked = subprocess.run(["git", "check-ignore", "-q", f"k8s/{rel}/secrets.example.env"],
                                 cwd=REPO)
        assert tracked.returncode == 1, f"k8s/{rel}/secrets.example.env must be committed"


def test_missing_secrets_file_says_how_to_create_it(tmp_path: Path) -> None:
    shutil.copytree(K8S, tmp_path / "k8s", ignore=shutil.ignore_patterns("secrets.env"))
    with pytest.raises(KustomizeError, match=r"kustomization.yaml.*secrets.env not found.*"
                                             r"copy secrets.example.env to secrets.env"):
        render_python(tmp_path / "k8s/overlays/dev")


def _broken_overlay(tmp_path: Path, change: str) -> Path:
    """A copy of the dev overlay with one deliberate mistake."""
    root = copy_tree_with_example_secrets(tmp_path / "k8s")
    overlay = root / "overlays/dev"
    kfile = overlay / "kustomization.yaml"
    spec = yaml.safe_load(kfile.read_text())
    if change == "unknown field":
        spec["patchez"] = spec.pop("patches")
    elif change == "patch target missing":
        (overlay / "small-data-volume.yaml").write_text(
            (overlay / "small-data-volume.yaml").read_text().replace("samtune-data", "samtune-dta"))
    elif change == "bad json6902 path":
        (overlay / "bad.yaml").write_text("- op: replace\n  path: /spec/nope/x\n  value: 1\n")
        spec["patches"].append({"path": "bad.yaml", "target": {"kind": "Service",
                                                               "name": "samtune-mlflow"}})
    kfile.write_text(yaml.safe_dump(spec))
    return overlay


@pytest.mark.parametrize("change,named", [("unknown field", "kustomization.yaml"),
                                          ("patch target missing", "small-data-volume.yaml"),
                                          ("bad json6902 path", "bad.yaml")])
def test_a_typo_fails_naming_the_file(change: str, named: str, tmp_path: Path) -> None:
    overlay = _broken_overlay(tmp_path, change)
    with pytest.raises(KustomizeError) as info:
        render_python(overlay)
    message = str(info.value)
    assert named in message and str(overlay) in message
    if change == "unknown field":
        assert "patchez" in message


@needs_kubectl
@pytest.mark.parametrize("change", ["unknown field", "patch target missing"])
def test_kubectl_rejects_the_same_typos(change: str, tmp_path: Path) -> None:
    overlay = _broken_overlay(tmp_path, change)
    with pytest.raises(KustomizeError, match="kubectl kustomize failed"):
        render_kubectl(overlay)
