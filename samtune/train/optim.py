"""Optimizer and learning-rate schedule by name (`torch.optim`, `torch.optim.lr_scheduler`).

    train:
      optimizer: AdamW
      optimizer_kwargs: {lr: 1.0e-4, weight_decay: 0.01}
      scheduler: CosineAnnealingLR     # null: constant
      scheduler_kwargs: {eta_min: 1.0e-6}
      warmup_steps: 100

The learning rate of optimizer step s (0-based) is a pure function of s:

    lr(s) = scheduler_lr(max(0, s − W)) × warmup_factor(s, W),   warmup_factor = min(1, (s+1)/W)

so the scheduler starts after the warmup and its own state never sees the warmup factor (the
factor is applied around `optimizer.step()` only). Schedulers step once per optimizer step, so
their lengths are in optimizer steps; a missing `T_max` (CosineAnnealingLR) or `total_steps`
(OneCycleLR) is filled with the steps of `epochs` epochs after warmup (`max_steps` only cuts a run
short, it does not shorten the schedule). A resumed run continues with the scheduler state stored
in its checkpoint, lengths included. ReduceLROnPlateau is the exception: it steps once per
validation on the val Dice (mode "max").
"""
from __future__ import annotations

import difflib
import inspect
from contextlib import contextmanager
from typing import Any, Iterable, Iterator

import torch
from torch.optim import lr_scheduler

__all__ = ["build_optimizer", "build_scheduler", "warmup_factor", "LRSchedule",
           "optimizer_names", "scheduler_names"]

# Need callables or other schedulers as arguments, so they cannot come from YAML.
_NOT_FROM_YAML = {"LambdaLR", "MultiplicativeLR", "SequentialLR", "ChainedScheduler"}


def optimizer_names() -> list[str]:
    return sorted(n for n, c in vars(torch.optim).items() if inspect.isclass(c)
                  and issubclass(c, torch.optim.Optimizer) and c is not torch.optim.Optimizer)


def scheduler_names() -> list[str]:
    base = (lr_scheduler.LRScheduler, lr_scheduler.ReduceLROnPlateau)
    return sorted(n for n, c in vars(lr_scheduler).items() if inspect.isclass(c)
                  and issubclass(c, base) and not n.startswith("_") and n != "LRScheduler"
                  and n not in _NOT_FROM_YAML)


def _lookup(name: str, names: list[str], what: str) -> str:
    """Exact name, else a unique case-insensitive match, else ValueError with close names."""
    if name in names:
        return name
    folded = [n for n in names if n.lower() == name.lower()]
    if len(folded) == 1:
        return folded[0]
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.5) or \
        difflib.get_close_matches(name.lower(), [n.lower() for n in names], n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise ValueError(f"unknown {what} '{name}'{hint} (valid: {', '.join(names)})")


# Optimizers given `fused=True` when every trainable parameter is a float tensor on CUDA or on
# the CPU (one kernel per step instead of a loop over tensors; torch has both; on 2 CPU cores
# AdamW over the SAM decoder's tensors measured 4.5 ms vs 13 ms a step);
# `optimizer_kwargs: {fused: false}` turns it off.
FUSED = ("Adam", "AdamW")


def build_optimizer(params: Iterable[torch.nn.Parameter], name: str,
                    kwargs: dict[str, Any]) -> torch.optim.Optimizer:
    """`torch.optim.<name>(trainable params, **kwargs)`; frozen params are dropped here. Adam
    and AdamW are fused (CUDA or CPU) unless kwargs say `fused` or `foreach`. Raises ValueError
    for an unknown name, bad kwargs or no trainable parameter."""
    cls = getattr(torch.optim, _lookup(name, optimizer_names(), "optimizer"))
    trainable = [p for p in params if p.requires_grad]
    if not trainable:
        raise ValueError("no trainable parameters: the whole model is frozen (method 'frozen' "
                         "or every part in model.freeze); nothing to fine-tune")
    if cls.__name__ in FUSED and "fused" not in kwargs and "foreach" not in kwargs \
            and {p.device.type for p in trainable} in ({"cuda"}, {"cpu"}) \
            and all(p.is_floating_point() for p in trainable):
        kwargs = {**kwargs, "fused": True}
    try:
        return cls(trainable, **kwargs)
    except TypeError as exc:
        raise ValueError(f"optimizer {cls.__name__}: bad optimizer_kwargs {kwargs}: {exc}"
                         ) from None


def build_scheduler(optimizer: torch.optim.Optimizer, name: str | None, kwargs: dict[str, Any],
                    total_steps: int) -> Any:
    """`torch.optim.lr_scheduler.<name>(optimizer, **kwargs)` or None (constant lr).

    total_steps: optimizer steps the scheduler runs for (the run's steps minus warmup); used for
    a missing `T_max` / `total_steps`. ReduceLROnPlateau defaults to mode "max" (val Dice)."""
    if name is None:
        return None
    cls_name = _lookup(name, scheduler_names(), "scheduler")
    cls = getattr(lr_scheduler, cls_name)
    kwargs = dict(kwargs)
    if cls_name == "CosineAnnealingLR":
        kwargs.setdefault("T_max", max(1, total_steps))
    elif cls_name == "OneCycleLR" and "epochs" not in kwargs:
        kwargs.setdefault("total_steps", max(1, total_steps))
    elif cls_name == "ReduceLROnPlateau":
        if kwargs.setdefault("mode", "max") != "max":
            raise ValueError("ReduceLROnPlateau watches the val Dice (higher is better): mode "
                             f"must be 'max', got '{kwargs['mode']}'")
    try:
        return cls(optimizer, **kwargs)
    except TypeError as exc:
        raise ValueError(f"scheduler {cls_name}: bad scheduler_kwargs {kwargs}: {exc}") from None


def warmup_factor(step: int, warmup_steps: int) -> float:
    """Linear warmup multiplier of optimizer step `step` (0-based): (step+1)/W, then 1."""
    if warmup_steps <= 0:
        return 1.0
    return min(1.0, (step + 1) / warmup_steps)


class LRSchedule:
    """Warmup composed with a torch scheduler (or None); see the module docstring.

    Per optimizer step s:  `with sched.applied(s): optimizer.step()`  then  `sched.step_done(s)`;
    per validation:  `sched.validated(dice)`. State (for the checkpoint) is the scheduler's.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, scheduler: Any, warmup_steps: int):
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.warmup_steps = warmup_steps
        self.on_plateau = isinstance(scheduler, lr_scheduler.ReduceLROnPlateau)

    def lrs(self, step: int) -> list[float]:
        """The learning rates optimizer step `step` uses, per param group."""
        factor = warmup_factor(step, self.warmup_steps)
        return [g["lr"] * factor for g in self.optimizer.param_groups]

    @contextmanager
    def applied(self, step: int) -> Iterator[list[float]]:
        """Scale the groups' lr by the warmup factor for the duration of the block."""
        base = [g["lr"] for g in self.optimizer.param_groups]
        factor = warmup_factor(step, self.warmup_steps)
        for g, lr in zip(self.optimizer.param_groups, base):
            g["lr"] = lr * factor
        try:
            yield [lr * factor for lr in base]
        finally:
            for g, lr in zip(self.optimizer.param_groups, base):
                g["lr"] = lr

    def step_done(self, step: int) -> None:
        """After optimizer step `step`: advance a per-step scheduler once past the warmup."""
        if self.scheduler is not None and not self.on_plateau and step >= self.warmup_steps:
            self.scheduler.step()

    def validated(self, metric: float) -> None:
        if self.on_plateau:
            self.scheduler.step(metric)

    def state_dict(self) -> dict[str, Any]:
        return {} if self.scheduler is None else self.scheduler.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.scheduler is not None:
            self.scheduler.load_state_dict(state)
