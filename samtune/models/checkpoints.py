"""Read official and samtune checkpoints safely, adapt them to the model's image size, download.

Files are always read with `torch.load(..., map_location="cpu", weights_only=True)`: a file that
holds pickled objects is refused, never executed; the one class allowed besides tensors and
containers is `argparse.Namespace` (it only sets attributes), which SAM-Med3D's train.py pickles
as `args`. A folder is read as a Hugging Face SamModel (`samtune.models.hf_checkpoints`).
Accepted layouts: the bare state dict (SAM, MedSAM, MobileSAM), `{"model": …}` (SAM2, SAM2.1,
MedSAM2, samtune's training state), `{"model_state_dict": …}` (SAM-Med3D, beside its optimizer
state), `{"state_dict": …}`, and `module.` / `_orig_mod.` key prefixes (DDP, torch.compile).

Image size: SAM's absolute position embedding (`image_encoder.pos_embed`, 1×H×W×C) is resized
bicubically and the relative position tables of global-attention blocks (`rel_pos_h/w`,
(2H−1)×C) linearly along their length, as segment-anything's `get_rel_pos` does at run time.
SAM2 needs nothing: Hiera interpolates its position embedding at run time, and no other SAM2
tensor depends on the image size. MobileSAM's attention biases are per window, also unchanged.
SAM-Med3D: its 1×D×H×W×C `pos_embed` is resized trilinearly and `rel_pos_d/h/w` linearly, as
medim's `get_rel_pos` does at run time.
"""
from __future__ import annotations

import argparse
import hashlib
import logging
import pickle
import re
import shutil
import socket
import threading
import urllib.error
import urllib.parse
import urllib.request
import warnings
import zipfile
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from samtune.atomic import atomic_write

log = logging.getLogger(__name__)

WRAPPER_KEYS = ("model", "model_state_dict", "state_dict", "module")
# Classes the weights-only unpickler may rebuild besides tensors and containers: they only
# set attributes, never run code (SAM-Med3D's checkpoints hold train.py's argparse `args`).
SAFE_GLOBALS = [argparse.Namespace]
KEY_PREFIXES = ("module.", "_orig_mod.", "model.")
MAX_LISTED = 10


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the file and says why."""


def file_sha256(path: str | Path, chunk_size: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks (constant memory for multi-GB checkpoints)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk_size):
            digest.update(block)
    return digest.hexdigest()


def known_sha256(path: str | Path) -> str | None:
    """The published sha256 of an official file name (from the model zoo), if known."""
    from samtune.models.registry import MODELS

    name = Path(path).name
    return next((s.sha256 for s in MODELS.values() if s.checkpoint == name and s.sha256), None)


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a checkpoint file, unwrapped from the accepted layouts (see module doc)."""
    path = Path(path)
    if path.is_dir():
        from samtune.models.hf_checkpoints import (HfCheckpointError, is_hf_folder,
                                                    read_hf_state_dict)

        if not is_hf_folder(path):
            raise CheckpointError(f"checkpoint {path} is a folder without config.json + "
                                  "model.safetensors (a Hugging Face save_pretrained folder)")
        try:
            return read_hf_state_dict(path)
        except HfCheckpointError as exc:
            raise CheckpointError(str(exc)) from None
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        detail = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
        what = f" ({detail.group(1)})" if detail else ""
        raise CheckpointError(
            f"checkpoint {path} holds pickled Python objects{what}; refused, since only plain "
            "tensors and containers are read (weights_only=True). Re-save it from a trusted "
            "environment as a dict of tensors: torch.save(model.state_dict(), path)") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {path} is truncated or corrupt ({type(exc).__name__}: "
                              f"{str(exc).splitlines()[0] if str(exc) else 'no detail'})") from None
    while isinstance(obj, dict) and not _is_state_dict(obj):
        key = next((k for k in WRAPPER_KEYS if isinstance(obj.get(k), dict)), None)
        if key is None:
            raise CheckpointError(f"checkpoint {path}: no state dict found (top-level keys: "
                                  f"{_short(sorted(map(str, obj)))})")
        obj = obj[key]
    if not isinstance(obj, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(obj).__name__}, not a state dict")
    return obj


def _is_state_dict(obj: dict) -> bool:
    return bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def strip_prefixes(state: dict[str, torch.Tensor], model_keys: set[str]) -> dict[str, torch.Tensor]:
    """Drop a wrapper prefix shared by every key (`module.` …) unless the model uses it."""
    for prefix in KEY_PREFIXES:
        if all(k.startswith(prefix) for k in state) and not all(k in model_keys for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def adapt_to_image_size(state: dict[str, torch.Tensor], model: nn.Module) -> list[str]:
    """Resize, in place, SAM's size-dependent tensors to the model's shapes; returns their keys."""
    target = model.state_dict()
    changed = []
    for key, value in state.items():
        want = target.get(key)
        if want is None or want.shape == value.shape:
            continue
        if key.endswith("pos_embed") and value.ndim == 4 and value.shape[-1] == want.shape[-1]:
            # 1×H×W×C → bicubic on the H×W grid
            resized = F.interpolate(value.permute(0, 3, 1, 2).float(), size=tuple(want.shape[1:3]),
                                    mode="bicubic", align_corners=False).permute(0, 2, 3, 1)
        elif key.endswith("pos_embed") and value.ndim == 5 and value.shape[-1] == want.shape[-1]:
            # SAM-Med3D's 1×D×H×W×C → trilinear on the D×H×W grid
            resized = F.interpolate(value.permute(0, 4, 1, 2, 3).float(),
                                    size=tuple(want.shape[1:4]), mode="trilinear",
                                    align_corners=False).permute(0, 2, 3, 4, 1)
        elif key.endswith(("rel_pos_d", "rel_pos_h", "rel_pos_w")) and value.ndim == 2 \
                and value.shape[1] == want.shape[1]:
            # (2H−1)×C → linear along the table length, as segment-anything's get_rel_pos
            resized = F.interpolate(value.float().T[None], size=want.shape[0], mode="linear")[0].T
        else:
            continue
        state[key] = resized.to(value.dtype).contiguous()
        changed.append(key)
    if changed:
        log.info("interpolated %d tensors to the model's image size: %s", len(changed),
                 _short(changed))
    return changed


def mismatch_report(state: dict[str, torch.Tensor], model: nn.Module) -> str | None:
    """Missing, unexpected and mis-shaped keys as readable lines; None when everything fits."""
    target = model.state_dict()
    missing = [k for k in target if k not in state]
    unexpected = [k for k in state if k not in target]
    shaped = [f"{k}: checkpoint {tuple(state[k].shape)}, model {tuple(target[k].shape)}"
              for k in target if k in state and state[k].shape != target[k].shape]
    if not (missing or unexpected or shaped):
        return None
    lines = []
    for title, items in (("missing from the checkpoint", missing),
                         ("unexpected in the checkpoint", unexpected),
                         ("shape mismatch", shaped)):
        if items:
            lines.append(f"  {title} ({len(items)}):")
            lines += [f"    {item}" for item in items[:MAX_LISTED]]
            if len(items) > MAX_LISTED:
                lines.append(f"    … and {len(items) - MAX_LISTED} more")
    return "\n".join(lines)


def load_checkpoint(model: nn.Module, path: str | Path, *, expected_sha256: str | None = None,
                    family: str | None = None) -> nn.Module:
    """Load `path` into `model` strictly, after unwrapping and image-size adaptation.

    expected_sha256: None → the published hash of an official file name, if known; a mismatch
    only warns (files are re-saved legitimately). family: for messages (default model.family).
    """
    path = Path(path)
    family = family or getattr(model, "family", "") or type(model).__name__
    state = read_state_dict(path)
    expected = expected_sha256 or known_sha256(path)
    if expected and path.is_file():
        actual = file_sha256(path)
        if actual != expected.lower():
            warnings.warn(f"checkpoint {path}: sha256 {actual} differs from the published "
                          f"{expected}; the file may be corrupt or a different release",
                          stacklevel=2)
    model_keys = set(model.state_dict())
    state = strip_prefixes(dict(state), model_keys)
    if path.is_dir():  # a Hugging Face folder: its config.json must describe this architecture
        from samtune.models.hf_architecture import architecture_problem

        if problem := architecture_problem(path, model):
            raise CheckpointError(problem)
    if path.is_dir() and hasattr(model, "SINGLE_IMAGE_PARTS"):
        # a Hugging Face Sam2Model has no video-memory modules: they keep their initial weights
        own = model.state_dict()
        memory = [k for k in own if k not in state and not k.startswith(model.SINGLE_IMAGE_PARTS)]
        state.update({k: own[k] for k in memory})
        if memory:  # a Sam2VideoModel folder has them all
            log.warning("%s: %d video-memory tensors are not in a Sam2Model folder; they keep "
                        "their initial weights (unused by single-image segmentation)", path,
                        len(memory))
    adapt_to_image_size(state, model)
    report = mismatch_report(state, model)
    if report:
        raise CheckpointError(f"checkpoint {path} does not fit this {family} model "
                              f"({type(model).__name__}, img_size "
                              f"{getattr(model, 'img_size', '?')}):\n{report}")
    model.load_state_dict(state, strict=True)
    model.train(model.training)  # refresh caches derived from weights (TinyViT attention biases)
    log.info("loaded %s (%d tensors) into %s", path, len(state), family)
    return model


def _resolves(host: str, timeout: float) -> bool:
    """DNS lookup with a deadline (socket timeouts do not cover getaddrinfo)."""
    result: list[bool] = []

    def lookup() -> None:
        try:
            socket.getaddrinfo(host, 443)
            result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=lookup, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(result and result[0])


def download(name: str, checkpoints_dir: str | Path, timeout: float = 5.0) -> Path:
    """Official checkpoint of zoo entry `name` → checkpoints_dir/<official file name>.

    Kept if already there. Offline, fails within ~timeout seconds with the URL and the exact path
    to put the file at. Written to a temporary file and renamed (never a partial file); the
    sha256 is checked when known (mismatch: warning).
    """
    from samtune.models.registry import get_spec

    spec = get_spec(name)
    if spec.checkpoint is None:
        raise CheckpointError(f"model '{name}' has no pretrained checkpoint (random weights only)")
    target = Path(checkpoints_dir).resolve() / spec.checkpoint
    if target.is_file():
        return target
    if spec.url is None:
        raise CheckpointError(f"no direct download URL is known for '{name}' ({spec.description})"
                              f"; download {spec.checkpoint} yourself and put it at {target}")
    hint = f"download {spec.url} elsewhere and put it at {target}"
    host = urllib.parse.urlparse(spec.url).hostname or ""
    if not _resolves(host, timeout):
        raise CheckpointError(f"cannot reach {host} (offline?); {hint}")
    try:
        with urllib.request.urlopen(spec.url, timeout=timeout) as rsp:
            log.info("downloading %s → %s", spec.url, target)
            atomic_write(target, lambda out: shutil.copyfileobj(rsp, out, 1 << 20))
    except (urllib.error.URLError, OSError) as exc:
        raise CheckpointError(f"download of {spec.url} failed ({exc}); {hint}") from None
    if spec.sha256 and file_sha256(target) != spec.sha256:
        warnings.warn(f"downloaded {target}: sha256 differs from the published {spec.sha256}",
                      stacklevel=2)
    return target


def _short(items: list[str], n: int = MAX_LISTED) -> str:
    return ", ".join(items[:n]) + (f", … ({len(items) - n} more)" if len(items) > n else "")
