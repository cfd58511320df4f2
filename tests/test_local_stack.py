"""The local stack's MLflow tracker: credentials for a remote server come from MLflow's env."""
from __future__ import annotations

import pytest

from stacks.local import _credentials


def test_remote_tracker_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("MLFLOW_TRACKING_TOKEN", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.delenv(var, raising=False)
    assert _credentials("sqlite:///x/mlflow.db") == {}
    with pytest.raises(ValueError, match="MLFLOW_TRACKING_USERNAME"):
        _credentials("http://mlflow:5000")
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "u")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "p")
    assert _credentials("https://mlflow") == {"tracking_username": "u", "tracking_password": "p"}
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", "t")
    assert _credentials("http://mlflow:5000") == {"tracking_token": "t"}
