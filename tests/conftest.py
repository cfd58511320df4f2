"""Shared fixtures: real data from ../shared/data (skipped where absent), small thread counts."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("SAMTUNE_SHARED_DATA", REPO.parent / "shared" / "data"))


def pytest_configure(config: pytest.Config) -> None:
    """Tests that import zenml in-process get a throw-away ZenML home, never the user's."""
    state = tempfile.mkdtemp(prefix="samtune-tests-")
    os.environ["ZENML_CONFIG_PATH"] = os.path.join(state, "zenml")
    for key, value in {"ZENML_ANALYTICS_OPT_IN": "false", "MLFLOW_DISABLE_TELEMETRY": "true",
                       "DO_NOT_TRACK": "true", "MPLCONFIGDIR": os.path.join(state, "mpl"),
                       "ZENML_LOGGING_VERBOSITY": "WARN"}.items():
        os.environ.setdefault(key, value)


@pytest.fixture(scope="session", autouse=True)
def _few_threads() -> None:
    try:
        import torch

        torch.set_num_threads(2)
    except ImportError:  # pragma: no cover
        pass


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data beside the checkout; tests using it skip on a user's machine."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} is absent (only on the team's machines and CI)")
    return SHARED_DATA
