"""Which torch device a run uses."""
from __future__ import annotations

import torch


def resolve_device(device: str | torch.device) -> torch.device:
    """"auto" → CUDA when available, else CPU; anything else as torch.device(device)."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)
