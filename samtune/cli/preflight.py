"""Before any step: can the run write where its config says it writes, and is the checkpoint
file its model is built from there (`missing_checkpoint`)?

A read-only or missing-permission folder would otherwise surface as a raw `OSError: [Errno 30]`
(or 13) after work has started. `unwritable_folders` probes each folder the pipeline writes
(`output_dir`, `stack.home`, the embedding cache, a phantom dataset still to be generated) by
creating and removing a temporary file in it, or in its nearest existing parent when it does
not exist yet; nothing is left behind and no folder is created.
"""
from __future__ import annotations

import errno
import logging
import os
import tempfile
from pathlib import Path

from samtune.config import Config

__all__ = ["folders_written", "unwritable_folders", "write_problem"]

log = logging.getLogger(__name__)

TRAINING_PIPELINES = ("finetune", "retrain", "benchmark")


def folders_written(cfg: Config, pipeline: str, project_root: Path) -> dict[str, Path]:
    """Config key → folder the pipeline writes into (absolute). `stack.home` is relative to the
    project root (as stacks.local resolves it), the others to the working directory."""
    home = cfg.stack.home if cfg.stack.home.is_absolute() else project_root / cfg.stack.home
    out = {"output_dir": Path(cfg.output_dir).absolute(), "stack.home": home}
    if pipeline in TRAINING_PIPELINES and cfg.train.embedding_cache:
        out["train.cache_dir"] = Path(cfg.train.cache_dir).absolute()
    root = cfg.data.root
    if cfg.data.layout == "phantoms" and root is not None and not Path(root).exists():
        out["data.root"] = Path(root).absolute()  # the phantoms are generated there
    return out


def write_problem(folder: Path) -> str | None:
    """Why a file cannot be created in `folder` (or where it would be created), or None."""
    probe = Path(folder)
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        return f"{probe} is a file, not a folder"
    try:
        fd, tmp = tempfile.mkstemp(prefix=".samtune-write-check-", dir=probe)
    except OSError as exc:
        what = {errno.EROFS: "read-only file system", errno.EACCES: "permission denied",
                errno.EPERM: "permission denied", errno.ENOSPC: "no space left on device",
                errno.EDQUOT: "disk quota exceeded"}.get(exc.errno, exc.strerror or str(exc))
        where = "" if probe == Path(folder) else f" (its nearest existing parent {probe})"
        return f"cannot write into {folder}{where}: {what} [Errno {exc.errno}]"
    os.close(fd)
    os.unlink(tmp)
    return None


def unwritable_folders(cfg: Config, pipeline: str, project_root: Path) -> list[str]:
    """One line per folder the pipeline would fail to write, naming its config key."""
    lines = []
    for key, folder in folders_written(cfg, pipeline, project_root).items():
        problem = write_problem(folder)
        if problem:
            lines.append(f"{key}: {problem}; choose a writable folder (--set {key}=PATH)")
    return lines


def missing_checkpoint(cfg: Config, pipeline: str) -> str | None:
    """What is wrong when a pipeline that builds the `model` section from its checkpoint would
    not find the file (benchmark cells note their own; evaluate/infer with eval.model_uri load a
    trained model instead); None when nothing is missing."""
    builds = pipeline in ("finetune", "retrain") or (
        pipeline in ("evaluate", "infer") and cfg.eval.model_uri is None)
    if not builds:
        return None
    from samtune.models.checkpoint_files import missing_checkpoint_message

    return missing_checkpoint_message(cfg)
