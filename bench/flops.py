"""FLOPs of one training sample and model FLOPs utilisation (MFU) for bench/train.py: counted
with torch's FlopCounterMode on the meta device, so no weights are needed."""
from __future__ import annotations

import torch

# Dense bf16 tensor-core peaks (TFLOP/s) for MFU; other GPUs report no MFU.
PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12}


def train_flops_per_sample(name: str, method: str, prompts: int = 1) -> float:
    """FLOPs of one training sample (slice) counted on the meta device: a trained part costs
    3× its forward (forward + backward), a frozen encoder 1× (0× with the cache)."""
    from torch.utils.flop_counter import FlopCounterMode

    from samtune.models.base import Prompts
    from samtune.models.registry import build_architecture

    model = build_architecture(name, meta=True)
    s = model.img_size
    with FlopCounterMode(display=False) as enc:
        emb = model.encode(torch.empty(1, 3, s, s, device="meta"))
    boxes = torch.tensor([[s * 0.1, s * 0.1, s * 0.3, s * 0.3]] * prompts, device="meta")
    with FlopCounterMode(display=False) as dec:
        model.decode(emb, 0, Prompts(boxes=boxes))
    encoder = {"frozen": 1, "frozen_cached": 0}.get(method, 3) * enc.get_total_flops()
    return float(encoder + 3 * dec.get_total_flops())


def mfu(name: str, method: str, samples_per_s: float) -> float | None:
    """Model FLOPs utilisation on the current GPU in bf16, or None off a known GPU."""
    if not torch.cuda.is_available():
        return None
    gpu = torch.cuda.get_device_name()
    peak = next((v for k, v in PEAK_BF16.items() if k in gpu), None)
    return None if peak is None else samples_per_s * train_flops_per_sample(name, method) / peak
