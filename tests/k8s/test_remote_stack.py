"""Stack as code: stacks/k8s_stack.yaml loads and validates, registration is idempotent, a
dry run needs no integrations, a missing integration or secret is a clear error."""
from __future__ import annotations

import importlib.util
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml

from stacks import remote
from stacks.remote import (MissingIntegrationError, StackSpecError, component_configurations,
                           load_stack_spec, register_stack)
from tests.k8s.conftest import STACK_ENV, STACK_YAML


class FakeClient:
    """The slice of zenml.client.Client that register_stack uses, in memory."""

    def __init__(self, secrets: tuple[str, ...] = ("samtune_s3", "samtune_mlflow")) -> None:
        self.components: dict[tuple[str, str], SimpleNamespace] = {}
        self.stacks: dict[str, dict] = {}
        self.secrets, self.calls = set(secrets), []

    def list_stack_components(self, name: str, type: str, size: int) -> SimpleNamespace:
        found = self.components.get((type, name))
        return SimpleNamespace(items=[found] if found else [])

    def create_stack_component(self, name: str, flavor: str, component_type: Any,
                               configuration: dict) -> None:
        self.calls.append(("create", component_type.value, name))
        self.components[(component_type.value, name)] = SimpleNamespace(
            name=name, flavor_name=flavor, configuration=dict(configuration))

    def update_stack_component(self, name: str, component_type: Any, configuration: dict) -> None:
        self.calls.append(("update", component_type.value, name))
        comp = self.components[(component_type.value, name)]
        merged = {**comp.configuration, **configuration}
        comp.configuration = {k: v for k, v in merged.items() if v is not None}

    def get_stack(self, name: str, allow_name_prefix_match: bool) -> SimpleNamespace:
        if name not in self.stacks:
            raise KeyError(name)
        return SimpleNamespace(components={t: [SimpleNamespace(name=n)]
                                           for t, n in self.stacks[name].items()})

    def create_stack(self, name: str, components: dict) -> None:
        self.calls.append(("create stack", name))
        self.stacks[name] = dict(components)

    def update_stack(self, name: str, component_updates: dict) -> None:
        self.calls.append(("update stack", name))
        self.stacks[name].update(component_updates)

    def get_secret(self, name: str) -> None:
        if name not in self.secrets:
            raise KeyError(name)

    def activate_stack(self, name: str) -> None:
        self.calls.append(("activate", name))


@pytest.fixture
def integrations_present(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(remote, "missing_integrations", lambda spec: {})


def _spec_file(tmp_path: Path, edit: Any) -> Path:
    spec = yaml.safe_load(STACK_YAML.read_text())
    edit(spec)
    path = tmp_path / "stack.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_load_expands_environment_and_keeps_secret_references(stack_spec: dict) -> None:
    assert stack_spec["name"] == "samtune-k8s"
    comps = stack_spec["components"]
    assert comps["orchestrator"]["configuration"]["kubernetes_context"] == "test-cluster"
    assert comps["orchestrator"]["configuration"]["kubernetes_namespace"] == "samtune"
    store = comps["artifact_store"]["configuration"]
    assert store["path"] == "s3://samtune/zenml"
    assert store["key"] == "{{samtune_s3.aws_access_key_id}}"
    assert store["client_kwargs"]["endpoint_url"].endswith(".svc.cluster.local:9000")
    assert comps["experiment_tracker"]["configuration"]["tracking_uri"] == \
        "http://samtune-mlflow.samtune.svc.cluster.local:5000"
    env = {**STACK_ENV, "SAMTUNE_S3_BUCKET": "lab-bucket"}
    assert load_stack_spec(STACK_YAML, environ=env)["components"]["artifact_store"][
        "configuration"]["path"] == "s3://lab-bucket/zenml"


def test_unset_variables_are_listed() -> None:
    with pytest.raises(StackSpecError, match=r"SAMTUNE_KUBE_CONTEXT.*SAMTUNE_REGISTRY"):
        load_stack_spec(STACK_YAML, environ={})


@pytest.mark.parametrize("edit,message", [
    (lambda s: s["components"].update(orchestrater=s["components"].pop("orchestrator")),
     r"unknown component type 'orchestrater'"),
    (lambda s: s["components"]["orchestrator"]["configuration"].update(kubernetes_namepsace="x"),
     r"kubernetes does not know \['kubernetes_namepsace'\]"),
    (lambda s: s["components"]["artifact_store"].update(flavor="gcp"),
     r"flavor 'gcp' is not supported here; use one of \['s3'\]"),
    (lambda s: s["components"].pop("container_registry"), r"needs component\(s\)"),
    (lambda s: s["components"]["artifact_store"]["configuration"].update(path="/tmp/x"),
     r"artifact_store.*s3://"),
    (lambda s: s["pod_pools"]["gpu"].update(cuont=2), r"(?s)pod_pools.*cuont"),
    (lambda s: s.update(stack_name="x"), r"unknown key\(s\) \['stack_name'\]"),
])
def test_spec_mistakes_are_named(edit: Any, message: str, tmp_path: Path) -> None:
    with pytest.raises(StackSpecError, match=message):
        load_stack_spec(_spec_file(tmp_path, edit), environ=STACK_ENV)


def test_orchestrator_gets_pod_settings_from_pod_pools(stack_spec: dict) -> None:
    config = component_configurations(stack_spec)["orchestrator"]
    steps, own = config["pod_settings"], config["orchestrator_pod_settings"]
    assert steps["node_selectors"] == {"samtune.io/pool": "cpu"}
    assert steps["container_security_context"]["readOnlyRootFilesystem"] is True
    assert own["resources"]["limits"] == {"cpu": "1", "memory": "1Gi"}
    assert "pod_settings" not in stack_spec["components"]["orchestrator"]["configuration"]


def test_dry_run_plans_without_integrations_or_changes(stack_spec: dict,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name in ("s3fs", "boto3") else real(name, *a))
    client = FakeClient(secrets=())
    actions = register_stack(stack_spec, dry_run=True, client=client)
    assert actions[0] == "install integration s3 (missing s3fs, boto3)"
    assert "missing secret samtune_s3 (create it before registering)" in actions
    assert "create orchestrator samtune-k8s-orchestrator (kubernetes)" in actions
    assert actions[-1] == "create stack samtune-k8s"
    assert client.calls == [] and client.components == {}


def test_missing_integration_stops_before_the_store(stack_spec: dict,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name in ("s3fs", "boto3") else real(name, *a))
    client = FakeClient()
    with pytest.raises(MissingIntegrationError,
                       match=r"s3: s3fs, boto3.*zenml integration install kubernetes s3 mlflow"):
        register_stack(stack_spec, client=client)
    assert client.calls == []


def test_missing_secret_is_an_error(stack_spec: dict, integrations_present: None) -> None:
    with pytest.raises(StackSpecError, match="zenml secret create samtune_mlflow "
                                             "--password=… --username=…"):
        register_stack(stack_spec, client=FakeClient(secrets=("samtune_s3",)))


def test_registration_is_idempotent(stack_spec: dict, integrations_present: None) -> None:
    client = FakeClient()
    first = register_stack(stack_spec, client=client, activate=True)
    assert sum(a.startswith("create ") for a in first) == 7  # six components and the stack
    assert client.stacks["samtune-k8s"]  # all six types
    calls = len(client.calls)
    second = register_stack(stack_spec, client=client)
    assert all(a.startswith(("keep ", "use secret ")) for a in second), second
    assert len(client.calls) == calls
    changed = {**stack_spec, "components": {**stack_spec["components"], "experiment_tracker": {
        **stack_spec["components"]["experiment_tracker"],
        "configuration": {"tracking_uri": "https://mlflow.example.com",
                          "tracking_token": "{{samtune_mlflow.password}}"}}}}
    third = register_stack(changed, client=client)
    assert "update experiment_tracker samtune-k8s-mlflow-tracker" in third
    stored = client.components[("experiment_tracker", "samtune-k8s-mlflow-tracker")]
    assert stored.configuration == changed["components"]["experiment_tracker"]["configuration"]


def test_flavor_clash_is_an_error(stack_spec: dict, integrations_present: None) -> None:
    client = FakeClient()
    register_stack(stack_spec, client=client)
    client.components[("image_builder", "samtune-docker")].flavor_name = "kaniko"
    with pytest.raises(StackSpecError, match="exists with flavor kaniko, not local"):
        register_stack(stack_spec, client=client)


@pytest.mark.slow
def test_with_a_real_zenml_store(stack_spec: dict, integrations_present: None) -> None:
    """Against ZenML's own Client on the tests' throw-away store (conftest sets its path)."""
    from zenml.client import Client

    client = Client()
    planned = register_stack(stack_spec, dry_run=True)
    assert "create stack samtune-k8s" in planned
    for name, values in (("samtune_s3", {"aws_access_key_id": "a", "aws_secret_access_key": "b"}),
                         ("samtune_mlflow", {"username": "u", "password": "p"})):
        client.create_secret(name, values=values)
    assert "create stack samtune-k8s" in register_stack(stack_spec)
    again = register_stack(stack_spec)
    assert [a.split()[0] for a in again] == ["use"] * 2 + ["keep"] * 7
