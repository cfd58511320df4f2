"""The embedded default stack: project-local ZenML state and an MLflow tracker + registry.

`configure_environment` must run before zenml or mlflow is imported: it points ZenML's global
config (sqlite store, local artifact store) and every tool that would write to the user's home at
`stack.home` inside the project, unless the user already pointed ZenML or MLflow elsewhere.
`ensure_stack` registers the `samtune-local` stack once and activates it.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

from samtune.config import StackConfig

log = logging.getLogger(__name__)

TRACKER = "samtune-mlflow-tracker"
REGISTRY = "samtune-mlflow-registry"


def _user_pointed_zenml_elsewhere() -> bool:
    return any(k in os.environ for k in ("ZENML_CONFIG_PATH", "ZENML_STORE_URL", "ZENML_SERVER"))


def configure_environment(stack: StackConfig, project_root: Path) -> Path:
    """Set project-local defaults for ZenML/MLflow/matplotlib; returns the resolved home.

    Existing ZENML_* / MLFLOW_TRACKING_URI settings are respected (only defaults are set).
    """
    home = stack.home if stack.home.is_absolute() else (project_root / stack.home)
    home = home.resolve()
    home.mkdir(parents=True, exist_ok=True)
    if not _user_pointed_zenml_elsewhere():
        os.environ["ZENML_CONFIG_PATH"] = str(home / "zenml")
    defaults = {
        "ZENML_ANALYTICS_OPT_IN": "false",
        "ZENML_ENABLE_REPO_INIT_WARNINGS": "false",
        "ZENML_LOGGING_VERBOSITY": "WARN",
        "ZENML_DISABLE_INTERACTIVE_INPUT": "true",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "DO_NOT_TRACK": "true",
        "MPLCONFIGDIR": str(home / "matplotlib"),
        "GIT_PYTHON_REFRESH": "quiet",
    }
    for key, value in defaults.items():
        os.environ.setdefault(key, value)
    return home


def tracking_uri(stack: StackConfig, home: Path) -> str:
    """MLflow URI: config, then MLFLOW_TRACKING_URI, then a sqlite file under home."""
    return (stack.mlflow_tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
            or f"sqlite:///{home / 'mlflow.db'}")


def _credentials(uri: str) -> dict[str, str]:
    """ZenML's MLflow tracker needs exactly one way to log in to a remote (http) server: taken
    from MLflow's own variables; a ValueError says which to set when none is."""
    if not uri.startswith(("http://", "https://")):
        return {}
    env = os.environ
    if env.get("MLFLOW_TRACKING_TOKEN"):
        return {"tracking_token": env["MLFLOW_TRACKING_TOKEN"]}
    if env.get("MLFLOW_TRACKING_USERNAME") and env.get("MLFLOW_TRACKING_PASSWORD"):
        return {"tracking_username": env["MLFLOW_TRACKING_USERNAME"],
                "tracking_password": env["MLFLOW_TRACKING_PASSWORD"]}
    raise ValueError(f"MLflow server {uri}: ZenML's tracker needs credentials; set "
                     "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (any pair for a "
                     "server without authentication) or MLFLOW_TRACKING_TOKEN")


def ensure_stack(stack: StackConfig, home: Path) -> str:
    """Register (once) and activate the local stack; returns its name.

    If the user runs another ZenML store (ZENML_STORE_URL / a server) and a stack with the
    configured name exists there, it is activated as it is.
    """
    from zenml.client import Client
    from zenml.enums import StackComponentType as T

    from samtune.lifecycle.registry import check_reachable

    # an unreachable server fails here, naming the URI, before anything points at it
    check_reachable(tracking_uri(stack, home))
    client = Client()
    try:
        client.get_stack(stack.name)
    except KeyError:
        uri = tracking_uri(stack, home)
        log.info("registering ZenML stack %s (MLflow at %s)", stack.name, uri)
        existing = {c.name for c in client.list_stack_components(size=1000)}
        if TRACKER not in existing:
            client.create_stack_component(
                name=TRACKER, flavor="mlflow", component_type=T.EXPERIMENT_TRACKER,
                configuration={"tracking_uri": uri, **_credentials(uri)})
        if REGISTRY not in existing:
            client.create_stack_component(
                name=REGISTRY, flavor="mlflow", component_type=T.MODEL_REGISTRY, configuration={})
        client.create_stack(name=stack.name, components={
            T.ORCHESTRATOR: "default", T.ARTIFACT_STORE: "default",
            T.EXPERIMENT_TRACKER: TRACKER, T.MODEL_REGISTRY: REGISTRY})
    if client.active_stack_model.name != stack.name:
        client.activate_stack(stack.name)
    return stack.name


def prepare_experiment(stack: StackConfig, home: Path, pipeline: str) -> None:
    """Create the pipeline's MLflow experiment (ZenML's tracker names it after the pipeline)
    with its artifacts under `home`; a sqlite store would otherwise write ./mlruns wherever
    the command runs. Experiments on a user's own server are left as they are."""
    from samtune.lifecycle.tracking import ensure_experiment

    uri = tracking_uri(stack, home)  # reachable: ensure_stack checked it
    if uri.startswith("sqlite:") and uri == f"sqlite:///{home / 'mlflow.db'}":
        ensure_experiment(pipeline, home / "mlartifacts", tracking_uri=uri)


def stack_rows(stack: StackConfig, home: Path) -> list[tuple[str, str, str]]:
    """System-check rows: the active ZenML stack and whether MLflow answers."""
    rows = []
    try:
        ensure_stack(stack, home)
        from zenml.client import Client

        active = Client().active_stack_model
        rows.append(("zenml stack", "ok", f"{active.name} (store {Client().zen_store.url})"))
    except Exception as exc:  # noqa: BLE001 - reported as a failed check row
        rows.append(("zenml stack", "fail", f"{type(exc).__name__}: {exc}"))
    uri = tracking_uri(stack, home)
    try:
        import mlflow

        mlflow.MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
        rows.append(("mlflow", "ok", uri))
    except Exception as exc:  # noqa: BLE001
        rows.append(("mlflow", "fail", f"{uri}: {type(exc).__name__}: {exc}"))
    return rows
