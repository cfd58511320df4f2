"""Tracking that survives losing the MLflow server mid-run.

Training must not die because the tracking server went away: `ResilientTracker` logs epoch
metrics through `samtune.lifecycle.tracking`; on the first failure it says so loudly (once), keeps
every later record in a local JSONL buffer next to the checkpoints, and tries to send the
buffer again at the end of training. Artifact uploads go through `safe`, which turns a failure
into the same loud warning. The checkpoints and exports stay on local disk either way.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Callable, Mapping

from samtune.lifecycle import tracking

__all__ = ["ResilientTracker"]
log = logging.getLogger(__name__)


class ResilientTracker:
    """A training callback `(event, metrics, step)`; `buffer`: where records wait, JSONL."""

    def __init__(self, buffer: Path, log_epoch: Callable[..., Any] = tracking.log_epoch):
        self.buffer, self._log_epoch, self.lost = Path(buffer), log_epoch, False

    def _lose(self, what: str, exc: BaseException) -> None:
        if not self.lost:
            log.error("MLFLOW TRACKING LOST while %s (%s: %s); training goes on, metrics are "
                      "buffered in %s and the checkpoints stay on local disk", what,
                      type(exc).__name__, exc, self.buffer)
        self.lost = True

    def _append(self, metrics: Mapping[str, Any], step: int) -> None:
        self.buffer.parent.mkdir(parents=True, exist_ok=True)
        with self.buffer.open("a") as f:
            f.write(json.dumps({"step": step, "metrics": tracking.flatten_metrics(metrics)}) + "\n")

    def __call__(self, event: str, metrics: Mapping[str, Any], step: int) -> None:
        if self.lost:
            self._append(metrics, step)
            if event == "end":
                self.flush()
            return
        try:
            self._log_epoch(metrics, step)
        except Exception as exc:  # noqa: BLE001 — any client/transport error
            self._lose(f"logging step {step}", exc)
            self._append(metrics, step)

    def flush(self) -> bool:
        """Send the buffered records; True when nothing is left waiting."""
        if not self.buffer.is_file():
            return True
        records = [json.loads(line) for line in self.buffer.read_text().splitlines() if line]
        try:
            for r in records:
                self._log_epoch(r["metrics"], r["step"])
        except Exception as exc:  # noqa: BLE001
            log.error("MLflow still unreachable (%s); %d metric records remain in %s",
                      exc, len(records), self.buffer)
            return False
        self.buffer.unlink()
        log.warning("MLflow reachable again: %d buffered metric records sent", len(records))
        self.lost = False
        return True

    def safe(self, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """fn(*args, **kwargs), or None with the loud warning when tracking fails."""
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001
            self._lose(what, exc)
            return None
