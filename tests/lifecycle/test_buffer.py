"""Losing MLflow mid-training: the run goes on, metrics wait in a local buffer, said loudly."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from samtune.lifecycle.buffer import ResilientTracker


def test_lost_server_buffers_then_flushes(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    sent: list[tuple[dict, int]] = []
    down = {"now": False}

    def log_epoch(metrics, step):
        if down["now"]:
            raise ConnectionError("server gone")
        sent.append((dict(metrics), step))

    tracker = ResilientTracker(tmp_path / "buf.jsonl", log_epoch)
    tracker("epoch", {"loss": 1.0}, 1)
    down["now"] = True
    with caplog.at_level(logging.ERROR):
        tracker("epoch", {"loss": 0.5}, 2)
        tracker("epoch", {"loss": 0.25, "lr": 1e-3}, 3)
        assert tracker.safe("uploading curves", log_epoch, {}, 0) is None
    assert tracker.lost and sum("TRACKING LOST" in r.message for r in caplog.records) == 1
    lines = [json.loads(x) for x in (tmp_path / "buf.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [2, 3] and lines[1]["metrics"]["lr"] == 1e-3
    tracker("end", {"best_val_dice": 0.9}, 3)  # still down: flush fails, buffer kept
    assert (tmp_path / "buf.jsonl").is_file() and len(sent) == 1
    down["now"] = False
    assert tracker.flush() and not (tmp_path / "buf.jsonl").exists()
    assert [s for _, s in sent] == [1, 2, 3, 3]
