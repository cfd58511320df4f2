"""Pod settings for the pipeline pods ZenML's Kubernetes orchestrator starts, from a plain dict.

Two node pools. GPU steps (STEP_POOLS) get `nvidia.com/gpu` in requests and limits, the GPU node
selector and toleration, and a memory-backed /dev/shm (PyTorch data loader workers pass tensors
through it; the container default is 64 MiB). Every other step runs on the CPU pool without a
GPU. Every pod meets the namespace's `restricted` policy: non-root uid 10001 (the image's USER),
no privilege escalation, all capabilities dropped, RuntimeDefault seccomp and a read-only root
filesystem, with emptyDirs for /tmp and $HOME and the shared data claim at /data.

The dict (YAML `stack.k8s` in a *_k8s config, `pod_pools` in stacks/k8s_stack.yaml):

    gpu:  {count: 1, node_selector: {...}, tolerations: [...], shm_size: 16Gi, resources: {...}}
    cpu:  {node_selector: {...}, tolerations: [...], resources: {...}}
    data: {claim_name: samtune-data, mount_path: /data}

Every key is optional (defaults below); `resources` replaces the default whole and must hold
requests and limits for cpu and memory. Tolerations are Kubernetes objects in camelCase.
"""
from __future__ import annotations

import copy
import fnmatch
from typing import TYPE_CHECKING, Any, Mapping

from pydantic import BaseModel, ConfigDict, Field, field_validator

if TYPE_CHECKING:  # zenml is imported where settings are built, not on import
    from zenml.integrations.kubernetes.pod_settings import KubernetesPodSettings

# Step name pattern -> pool; the first match wins (fnmatch patterns, checked in order).
STEP_POOLS: dict[str, str] = {
    "train_model": "gpu",
    "evaluate_model": "gpu",
    "evaluate_volumes": "gpu",  # predicts whole volumes with the model
    "promote_model": "gpu",  # scores the champion on the test volumes
    "infer_volumes": "gpu",
    "cell_*": "gpu",  # benchmark cells: finetune + evaluate
    "predict*": "gpu",
    "*": "cpu",
}
RUN_AS = 10001  # docker/Dockerfile's USER
HOME = "/home/samtune"  # docker/Dockerfile's HOME
POD_SECURITY = {"runAsNonRoot": True, "runAsUser": RUN_AS, "runAsGroup": RUN_AS,
                "fsGroup": RUN_AS, "seccompProfile": {"type": "RuntimeDefault"}}
CONTAINER_SECURITY = {"runAsNonRoot": True, "runAsUser": RUN_AS, "runAsGroup": RUN_AS,
                      "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                      "capabilities": {"drop": ["ALL"]},
                      "seccompProfile": {"type": "RuntimeDefault"}}
GPU_RESOURCE = "nvidia.com/gpu"


def _resources(cpu_req: str, mem_req: str, cpu_lim: str, mem_lim: str) -> dict[str, dict]:
    return {"requests": {"cpu": cpu_req, "memory": mem_req},
            "limits": {"cpu": cpu_lim, "memory": mem_lim}}


class _Pool(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    node_selector: dict[str, str] = {}
    tolerations: list[dict[str, Any]] = []
    resources: dict[str, dict[str, str]] = {}

    @field_validator("resources")
    @classmethod
    def _requests_and_limits(cls, value: dict[str, dict[str, str]]) -> dict[str, dict[str, str]]:
        for part in ("requests", "limits"):
            missing = {"cpu", "memory"} - set(value.get(part, {}))
            if missing:
                raise ValueError(f"resources.{part} needs {sorted(missing)} (the namespace "
                                 "policy wants requests and limits for cpu and memory)")
            if GPU_RESOURCE in value[part]:
                raise ValueError(f"set GPUs with gpu.count, not resources.{part}")
        return value


class GpuPool(_Pool):
    """Nodes with NVIDIA GPUs (labels from NVIDIA GPU feature discovery, taint nvidia.com/gpu)."""
    count: int = Field(1, ge=1, description="GPUs per pod")
    shm_size: str = Field("16Gi", description="size of the memory-backed /dev/shm")
    node_selector: dict[str, str] = {"nvidia.com/gpu.present": "true"}
    tolerations: list[dict[str, Any]] = [
        {"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}]
    resources: dict[str, dict[str, str]] = _resources("4", "32Gi", "8", "64Gi")


class CpuPool(_Pool):
    """Nodes for preparation steps; label yours `samtune.io/pool=cpu` or set node_selector."""
    node_selector: dict[str, str] = {"samtune.io/pool": "cpu"}
    resources: dict[str, dict[str, str]] = _resources("2", "8Gi", "4", "16Gi")


class DataVolume(BaseModel):
    """The claim with datasets and the embedding cache (k8s/base/storage.yaml)."""
    model_config = ConfigDict(extra="forbid", frozen=True)
    claim_name: str = "samtune-data"
    mount_path: str = "/data"


class PodPools(BaseModel):
    """The per-pool pod settings dict, validated (unknown keys are errors)."""
    model_config = ConfigDict(extra="forbid", frozen=True)
    gpu: GpuPool = GpuPool()
    cpu: CpuPool = CpuPool()
    data: DataVolume = DataVolume()


def pool_for_step(step_name: str) -> str:
    """"gpu" or "cpu" for a step name, by the first matching STEP_POOLS pattern."""
    for pattern, pool in STEP_POOLS.items():
        if fnmatch.fnmatchcase(step_name, pattern):
            return pool
    return "cpu"


def pod_settings_for(step_kind: str,
                     settings: Mapping[str, Any] | PodPools | None = None) -> KubernetesPodSettings:
    """KubernetesPodSettings for a pool ("gpu"/"cpu") or a step name (mapped by STEP_POOLS).

    `settings` is the plain dict described in the module docstring (None: all defaults); a
    pydantic ValidationError names any wrong key. Step pods get no service-account token.
    """
    pools = _pools(settings)
    kind = step_kind if step_kind in ("gpu", "cpu") else pool_for_step(step_kind)
    pool = pools.gpu if kind == "gpu" else pools.cpu
    resources = copy.deepcopy(pool.resources)
    volumes, mounts = _base_volumes(pools.data)
    if kind == "gpu":
        for part in ("requests", "limits"):
            resources[part][GPU_RESOURCE] = str(pools.gpu.count)
        # memory-backed: counts against the container's memory limit
        volumes.append({"name": "dshm", "emptyDir": {"medium": "Memory",
                                                     "sizeLimit": pools.gpu.shm_size}})
        mounts.append({"name": "dshm", "mountPath": "/dev/shm"})
    return _settings(node_selectors=dict(pool.node_selector),
                     tolerations=copy.deepcopy(pool.tolerations), resources=resources,
                     volumes=volumes, volume_mounts=mounts, labels={"samtune.io/pool": kind},
                     additional_pod_spec_args={"security_context": dict(POD_SECURITY),
                                               "automount_service_account_token": False})


def orchestrator_pod_settings(
        settings: Mapping[str, Any] | PodPools | None = None) -> KubernetesPodSettings:
    """KubernetesPodSettings for ZenML's orchestrator pod: small, on the CPU pool, keeps its
    service-account token (it starts the step Jobs through the API)."""
    pools = _pools(settings)
    volumes, mounts = _base_volumes(None)
    return _settings(node_selectors=dict(pools.cpu.node_selector),
                     tolerations=copy.deepcopy(pools.cpu.tolerations),
                     resources=_resources("100m", "400Mi", "1", "1Gi"), volumes=volumes,
                     volume_mounts=mounts, labels={"samtune.io/pool": "orchestrator"},
                     additional_pod_spec_args={"security_context": dict(POD_SECURITY)})


def _pools(settings: Mapping[str, Any] | PodPools | None) -> PodPools:
    if isinstance(settings, PodPools):
        return settings
    return PodPools.model_validate(dict(settings or {}))


def _base_volumes(data: DataVolume | None) -> tuple[list[dict], list[dict]]:
    """Writable places under a read-only root filesystem: /tmp, $HOME and the data claim."""
    volumes = [{"name": "tmp", "emptyDir": {}}, {"name": "home", "emptyDir": {}}]
    mounts = [{"name": "tmp", "mountPath": "/tmp"}, {"name": "home", "mountPath": HOME}]
    if data is not None:
        volumes.append({"name": "data",
                        "persistentVolumeClaim": {"claimName": data.claim_name}})
        mounts.append({"name": "data", "mountPath": data.mount_path})
    return volumes, mounts


def _settings(**fields: Any) -> KubernetesPodSettings:
    from zenml.integrations.kubernetes.pod_settings import KubernetesPodSettings

    return KubernetesPodSettings(container_security_context=dict(CONTAINER_SECURITY), **fields)
