"""A real MLflow tracking server for tests: `from tests.mlflow_server import mlflow_server`.

Started once per session as
    python -m mlflow server --host 127.0.0.1 --port <free port> --workers 1
        --backend-store-uri sqlite:///<tmp>/mlflow.db --artifacts-destination <tmp>/artifacts
with MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false (artifacts proxied by the server, the default
`--serve-artifacts`; new experiments store `mlflow-artifacts:/` URIs resolved under
`<tmp>/artifacts`). Ready when GET /health answers; its process group is stopped at teardown.
"""
from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

log = logging.getLogger(__name__)

START_TIMEOUT_S = 120.0  # first start on a busy 2-core machine took ~30 s


@dataclass(frozen=True)
class MlflowServer:
    """The running server: its URI, its artifact folder (to tamper with in tests), its log."""

    uri: str
    artifacts: Path
    log_file: Path

    def __str__(self) -> str:
        return self.uri


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (closed again before returning)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_ready(uri: str, process: subprocess.Popen, log_file: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"mlflow server exited with {process.returncode}:\n"
                               f"{log_file.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"mlflow server at {uri} not ready after {START_TIMEOUT_S:.0f} s:\n"
                       f"{log_file.read_text()[-3000:]}")


def _stop(process: subprocess.Popen) -> None:
    """SIGTERM to the server's own process group (uvicorn worker included), SIGKILL if stuck."""
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=15)


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    """A started `mlflow server` on a free local port with a temporary sqlite store."""
    root = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    artifacts, log_file = root / "artifacts", root / "server.log"
    command = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1",
               "--port", str(port), "--workers", "1",
               "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
               "--artifacts-destination", str(artifacts)]
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true",
           # no job runner + 7 huey consumers (GenAI jobs): a lighter, faster server
           "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    with open(log_file, "w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=root,
                                   env=env, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(uri, process, log_file)
        log.info("mlflow server ready at %s", uri)
        yield MlflowServer(uri, artifacts, log_file)
    finally:
        _stop(process)
