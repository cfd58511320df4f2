"""Per-step pod settings, and the Pods/Jobs/CronJob ZenML's Kubernetes orchestrator builds from
them: GPU steps on GPU nodes with /dev/shm, the rest on CPU nodes, all valid Kubernetes."""
from __future__ import annotations

import kubernetes_validate
import pytest
from pydantic import ValidationError

from stacks.k8s_pods import STEP_POOLS, PodPools, pod_settings_for, pool_for_step
from stacks.kustomize_patches import pod_specs
from tests.k8s.conftest import IMAGE, K8S_VERSIONS, SCHEDULE, STEPS

GPU_POOLS = {"gpu": {"count": 2, "shm_size": "8Gi", "node_selector": {"pool": "a100"},
                     "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists",
                                      "effect": "NoSchedule"}],
                     "resources": {"requests": {"cpu": "6", "memory": "40Gi"},
                                   "limits": {"cpu": "12", "memory": "80Gi"}}},
             "cpu": {"node_selector": {"pool": "general"}}}


@pytest.mark.parametrize("step,pool", [("train_model", "gpu"), ("evaluate_model", "gpu"),
                                       ("evaluate_volumes", "gpu"),
                                       ("predict_volumes", "gpu"), ("predict", "gpu"),
                                       ("ingest_volumes", "cpu"), ("convert_to_coco", "cpu"),
                                       ("split_dataset", "cpu"), ("register_model", "cpu"),
                                       ("pretrain_model", "cpu")])
def test_step_pools(step: str, pool: str) -> None:
    assert pool_for_step(step) == pool
    assert list(STEP_POOLS)[-1] == "*"


def test_gpu_settings_from_the_dict() -> None:
    s = pod_settings_for("train_model", GPU_POOLS)
    assert s.resources["limits"] == {"cpu": "12", "memory": "80Gi", "nvidia.com/gpu": "2"}
    assert s.resources["requests"]["nvidia.com/gpu"] == "2"
    assert s.node_selectors == {"pool": "a100"}
    assert s.tolerations == [{"key": "nvidia.com/gpu", "operator": "Exists",
                              "effect": "NoSchedule"}]
    shm = next(v for v in s.volumes if v["name"] == "dshm")
    assert shm["emptyDir"] == {"medium": "Memory", "sizeLimit": "8Gi"}
    assert {"name": "dshm", "mountPath": "/dev/shm"} in s.volume_mounts
    assert {"name": "data", "mountPath": "/data"} in s.volume_mounts
    assert s.additional_pod_spec_args["automount_service_account_token"] is False
    assert pod_settings_for("gpu", GPU_POOLS) == s


def test_cpu_settings_have_no_gpu() -> None:
    s = pod_settings_for("convert_to_coco", GPU_POOLS)
    assert s.node_selectors == {"pool": "general"}
    assert not s.tolerations
    assert all("nvidia.com/gpu" not in part for part in s.resources.values())
    assert {v["name"] for v in s.volumes} == {"tmp", "home", "data"}
    defaults = pod_settings_for("cpu")
    assert defaults.node_selectors == {"samtune.io/pool": "cpu"}
    assert set(defaults.resources) == {"requests", "limits"}


@pytest.mark.parametrize("bad,words", [
    ({"gpu": {"cuont": 1}}, "cuont"),
    ({"tpu": {}}, "tpu"),
    ({"gpu": {"count": 0}}, "count"),
    ({"cpu": {"resources": {"requests": {"cpu": "1", "memory": "1Gi"}}}}, "limits"),
    ({"gpu": {"resources": {"requests": {"cpu": "1", "memory": "1Gi", "nvidia.com/gpu": "1"},
                            "limits": {"cpu": "1", "memory": "1Gi"}}}}, "gpu.count"),
])
def test_bad_settings_are_named(bad: dict, words: str) -> None:
    with pytest.raises(ValidationError, match=words.replace(".", r"\.")):
        pod_settings_for("train_model", bad)


def test_schema_defaults_are_a_valid_dict() -> None:
    assert PodPools.model_validate({}) == PodPools()


@pytest.mark.parametrize("name", ["pod/train_model", "cronjob/orchestrator",
                                  *(f"job/{s}" for s in STEPS)])
def test_zenml_manifests_validate_strictly(name: str, zenml_manifests: dict) -> None:
    obj = zenml_manifests[name]
    for version in K8S_VERSIONS:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(p) for p in exc.path)
            pytest.fail(f"{name} invalid for Kubernetes {version} at {path}: {exc.message}")


def test_train_pod_lands_on_a_gpu_with_shared_memory(zenml_manifests: dict) -> None:
    spec = zenml_manifests["pod/train_model"]["spec"]
    container = spec["containers"][0]
    assert container["image"] == IMAGE
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} \
        in spec["tolerations"]
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes[mounts["/dev/shm"]]["emptyDir"]["medium"] == "Memory"
    assert volumes[mounts["/data"]]["persistentVolumeClaim"]["claimName"] == "samtune-data"
    assert spec["serviceAccountName"] == "samtune-step"
    assert spec["automountServiceAccountToken"] is False


def test_cpu_steps_stay_off_gpu_nodes(zenml_manifests: dict) -> None:
    for step in ("ingest_volumes", "convert_to_coco"):
        spec = pod_specs(zenml_manifests[f"job/{step}"])[0]
        assert spec["nodeSelector"] == {"samtune.io/pool": "cpu"}
        assert not spec.get("tolerations")
        limits = spec["containers"][0]["resources"]["limits"]
        assert "nvidia.com/gpu" not in limits
        assert "/dev/shm" not in {m["mountPath"] for m in spec["containers"][0]["volumeMounts"]}


def test_scheduled_run_is_a_cronjob_of_the_orchestrator(zenml_manifests: dict) -> None:
    cron = zenml_manifests["cronjob/orchestrator"]
    assert cron["kind"] == "CronJob" and cron["spec"]["schedule"] == SCHEDULE
    spec = pod_specs(cron)[0]
    assert spec["serviceAccountName"] == "zenml-orchestrator"
    assert "automountServiceAccountToken" not in spec  # it needs its token to start the Jobs
    assert spec["containers"][0]["resources"]["requests"] == {"cpu": "100m", "memory": "400Mi"}
    rules = cron["spec"]["jobTemplate"]["spec"]["podFailurePolicy"]["rules"]
    assert all(c.get("status") for r in rules for c in r.get("onPodConditions", []))


def test_zenml_snake_case_quirk_only_adds_nulls() -> None:
    """What conftest.apiserver_view drops: ZenML's merged security context echoes
    V1SecurityContext.to_dict() in snake_case; every such key must be null (else lost)."""
    from kubernetes import client as k8s
    from zenml.integrations.kubernetes.manifest_utils import build_pod_manifest

    pod = build_pod_manifest(pod_name=None, image_name=IMAGE, command=["x"], args=[],
                             privileged=False, pod_settings=pod_settings_for("train_model"))
    context = k8s.ApiClient().sanitize_for_serialization(pod)["spec"]["containers"][0][
        "securityContext"]
    assert {k: v for k, v in context.items() if "_" in k and v is not None} == {}
    assert context["runAsNonRoot"] is True and context["readOnlyRootFilesystem"] is True
