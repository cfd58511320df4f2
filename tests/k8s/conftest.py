"""Fixtures for the Kubernetes tests: a rendered copy of k8s/ and the manifests ZenML would submit.

Everything is offline. The k8s/ tree is copied to a temporary folder with every
`secrets.example.env` copied to `secrets.env`, so the overlays' secretGenerators work without
(and never read) real secrets. ZenML's manifests are built with ZenML's own manifest_utils, the
way its Kubernetes orchestrator (0.98) builds the orchestrator CronJob and the step Jobs, and
serialized with the kubernetes client's ApiClient exactly as they go on the wire.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from stacks.kustomize import render
from stacks.kustomize_patches import pod_specs

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "k8s"
STACK_YAML = REPO / "stacks" / "k8s_stack.yaml"
# The oldest API we support and the newest schema kubernetes-validate 1.37.0 ships.
K8S_VERSIONS = ("1.30.0", "1.37.0")
STACK_ENV = {"SAMTUNE_KUBE_CONTEXT": "test-cluster",
             "SAMTUNE_REGISTRY": "registry.example.com/samtune"}
IMAGE = "registry.example.com/samtune/samtune:0.1.0"
SCHEDULE = "0 3 * * 1"
ENTRYPOINT = ["python", "-m", "zenml.entrypoints.entrypoint"]
STEPS = ("ingest_volumes", "convert_to_coco", "train_model", "evaluate_model", "predict_volumes")

Obj = dict[str, Any]


def kustomization_dirs(root: Path = K8S) -> list[str]:
    """Folders under k8s/ with a kustomization, relative to k8s/ ("base", "overlays/dev" …)."""
    return sorted(str(p.parent.relative_to(root)) for p in root.rglob("kustomization.yaml"))


def copy_tree_with_example_secrets(dst: Path) -> Path:
    """Copy k8s/ to dst (without any real secrets.env) and create secrets.env from the examples."""
    shutil.copytree(K8S, dst, ignore=shutil.ignore_patterns("secrets.env"))
    for example in dst.rglob("secrets.example.env"):
        shutil.copy(example, example.with_name("secrets.env"))
    return dst


def apiserver_view(obj: Obj) -> Obj:
    """`obj` as the API server stores it, for ZenML's manifests.

    ZenML 0.98 merges `container_security_context` into `V1SecurityContext(...).to_dict()`,
    whose keys are snake_case, so the wire dict holds e.g. `"run_as_user": null` beside our
    camelCase keys. The API server drops unknown fields (fieldValidation defaults to Warn);
    we drop the null snake_case ones too. A snake_case key with a value stays, and strict
    validation then fails: that setting would be silently lost on a real cluster.
    """
    for spec in pod_specs(obj):
        for container in spec.get("containers", []) + spec.get("initContainers", []):
            context = container.get("securityContext") or {}
            for key in [k for k, v in context.items() if "_" in k and v is None]:
                del context[key]
    return obj


@pytest.fixture(scope="session")
def k8s_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return copy_tree_with_example_secrets(tmp_path_factory.mktemp("k8s") / "k8s")


@pytest.fixture(scope="session")
def rendered(k8s_tree: Path) -> dict[str, list[Obj]]:
    """Kustomization folder -> its objects (kubectl where on PATH, else the Python renderer)."""
    return {rel: render(k8s_tree / rel) for rel in kustomization_dirs()}


@pytest.fixture(scope="session")
def stack_spec() -> dict:
    from stacks.remote import load_stack_spec

    return load_stack_spec(STACK_YAML, environ=STACK_ENV)


@pytest.fixture(scope="session")
def zenml_manifests(stack_spec: dict) -> dict[str, Obj]:
    """Name -> wire-format manifest: a Job per step in STEPS, the Pod inside the train Job,
    and the orchestrator's CronJob for SCHEDULE; all from the stack's orchestrator config."""
    from kubernetes import client as k8s
    from zenml.integrations.kubernetes import kube_utils
    from zenml.integrations.kubernetes import manifest_utils as mu
    from zenml.integrations.kubernetes.flavors import KubernetesOrchestratorFlavor

    from stacks.k8s_pods import pod_settings_for
    from stacks.remote import component_configurations

    config_class = KubernetesOrchestratorFlavor().config_class
    config = config_class(**component_configurations(stack_spec)["orchestrator"])
    api = k8s.ApiClient()
    out: dict[str, Obj] = {}
    for step in STEPS:  # as kubernetes_orchestrator_entrypoint.py starts a step
        settings = kube_utils.apply_default_resource_requests(
            memory="400Mi", pod_settings=pod_settings_for(step, stack_spec["pod_pools"]))
        pod = mu.build_pod_manifest(
            pod_name=None, image_name=IMAGE, command=ENTRYPOINT, args=["--step_name", step],
            env={"ZENML_STORE_URL": "https://zenml.example.com"},
            privileged=config.privileged, pod_settings=settings,
            service_account_name=config.step_pod_service_account_name,
            termination_grace_period_seconds=config.pod_stop_grace_period,
            labels={"step_name": step}, annotations={"zenml.io/user": "u"})
        job = mu.build_job_manifest(
            job_name=f"abcdef12-{step}-finetune".replace("_", "-"),
            pod_template=mu.pod_template_manifest_from_pod(pod), backoff_limit=2,
            ttl_seconds_after_finished=config.ttl_seconds_after_finished,
            pod_failure_policy=config.pod_failure_policy, labels={"step_name": step})
        # ZenML leaves a Job's kind/apiVersion to the endpoint it posts to
        out[f"job/{step}"] = apiserver_view({"apiVersion": "batch/v1", "kind": "Job",
                                             **api.sanitize_for_serialization(job)})
        if step == "train_model":
            out["pod/train_model"] = apiserver_view(api.sanitize_for_serialization(pod))
    # as KubernetesOrchestrator.submit_pipeline does for a scheduled run
    settings = kube_utils.apply_default_resource_requests(
        memory="400Mi", cpu="100m", pod_settings=config.orchestrator_pod_settings)
    pod = mu.build_pod_manifest(
        pod_name=None, image_name=IMAGE, command=ENTRYPOINT, args=["--run_id", "x"],
        privileged=False, pod_settings=settings,
        service_account_name=config.service_account_name, env={"ZENML_X": "1"},
        labels={"run": "finetune"}, termination_grace_period_seconds=config.pod_stop_grace_period)
    job = mu.build_job_manifest(
        job_name="finetune-orchestrator", pod_template=mu.pod_template_manifest_from_pod(pod),
        backoff_limit=config.orchestrator_job_backoff_limit,
        ttl_seconds_after_finished=config.ttl_seconds_after_finished,
        pod_failure_policy=config.pod_failure_policy, labels={"run": "finetune"})
    cron = mu.build_cron_job_manifest(
        job_template=mu.job_template_manifest_from_job(job), cron_expression=SCHEDULE,
        successful_jobs_history_limit=config.successful_jobs_history_limit,
        failed_jobs_history_limit=config.failed_jobs_history_limit,
        concurrency_policy=config.concurrency_policy,
        starting_deadline_seconds=config.starting_deadline_seconds)
    out["cronjob/orchestrator"] = apiserver_view(api.sanitize_for_serialization(cron))
    return out
