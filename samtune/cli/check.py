"""System check (`run.py --check`): versions, threads, devices, disk, checkpoints, and a
10-second forward/backward of a small model. Each row: (what, status ok|warn|fail, detail)."""
from __future__ import annotations

import importlib.metadata as md
import platform
import shutil
import time
from pathlib import Path

from samtune.config import Config

Row = tuple[str, str, str]
PACKAGES = ("torch", "torchvision", "zenml", "mlflow", "great-expectations", "monai", "peft",
            "segment-anything", "sam2", "mobilesam-mirror", "nibabel", "pynrrd", "pycocotools")


def package_rows() -> list[Row]:
    rows: list[Row] = [("python", "ok", platform.python_version())]
    for name in PACKAGES:
        try:
            rows.append((name, "ok", md.version(name)))
        except md.PackageNotFoundError:
            rows.append((name, "fail", "not installed (make venv)"))
    return rows


def device_rows() -> list[Row]:
    import torch

    rows: list[Row] = [("torch threads", "ok", str(torch.get_num_threads()))]
    if not torch.cuda.is_available():
        return rows + [("cuda", "warn", "no CUDA device: training runs on the CPU")]
    for i in range(torch.cuda.device_count()):
        free, total = torch.cuda.mem_get_info(i)
        rows.append((f"cuda:{i}", "ok", f"{torch.cuda.get_device_name(i)}, "
                                        f"{free / 2**30:.1f} of {total / 2**30:.1f} GiB free"))
    return rows


def disk_rows(paths: dict[str, Path], min_free_gb: float = 2.0) -> list[Row]:
    rows = []
    for what, path in paths.items():
        probe = Path(path)
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        free = shutil.disk_usage(probe).free / 2**30
        rows.append((f"disk {what}", "ok" if free >= min_free_gb else "fail",
                     f"{free:.1f} GiB free at {path}"))
    return rows


def checkpoint_rows(cfg: Config) -> list[Row]:
    from samtune.models.checkpoints import file_sha256
    from samtune.models.registry import get_spec

    spec = get_spec(cfg.model.name)
    if cfg.model.checkpoint is None:
        return [("checkpoint", "ok", f"{cfg.model.name}: none configured (random init)")]
    from samtune.models.hf_checkpoints import is_hf_folder

    path = cfg.model.checkpoints_dir / cfg.model.checkpoint
    if is_hf_folder(path):
        return [("checkpoint", "ok", f"{path}: Hugging Face folder present")]
    if not path.is_file():
        from samtune.models.checkpoint_files import missing_checkpoint_message

        return [("checkpoint", "fail", missing_checkpoint_message(cfg) or f"{path} missing")]
    expected = getattr(spec, "sha256", None)
    if expected and file_sha256(path) != expected:
        return [("checkpoint", "warn", f"{path}: sha256 differs from the official file")]
    return [("checkpoint", "ok", f"{path} present" + (", sha256 verified" if expected else ""))]


def smoke_rows(seconds: float = 10.0) -> list[Row]:
    """Forward + backward of sam_tiny on random input until `seconds` have passed."""
    import torch

    from samtune.config import ModelConfig
    from samtune.models.base import Prompts
    from samtune.models.registry import build_model

    model = build_model(ModelConfig(name="sam_tiny"))
    s = model.img_size
    images = torch.rand(2, 3, s, s) * 255
    box = torch.tensor([[s * 0.25, s * 0.25, s * 0.75, s * 0.75]])
    start, steps = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        outs = model(model.normalize(images), [Prompts(boxes=box)] * 2)
        loss = sum(logits.float().mean() for logits, _ in outs)
        loss.backward()
        steps += 1
        if not torch.isfinite(loss):
            return [("smoke test", "fail", "non-finite loss from sam_tiny")]
    rate = 2 * steps / (time.perf_counter() - start)
    return [("smoke test", "ok", f"sam_tiny forward+backward: {rate:.1f} images/s")]


def format_table(rows: list[Row]) -> str:
    width = max(len(r[0]) for r in rows)
    return "\n".join(f"{what:<{width}}  {status:<4}  {detail}" for what, status, detail in rows)
