"""Dry runs of the optimizer and scheduler settings, for config validation (`TrainConfig`).

`check_optimizer` / `check_scheduler` build `train.optimizer` / `train.scheduler` exactly as
training does (`samtune.train.optim`) on one dummy parameter, then take two steps, so every value
torch refuses (a negative lr, weight decay or eps, betas outside [0, 1), a negative momentum,
unknown names, arguments of the wrong type, …) is a ValueError before any pipeline step runs.
The message names the offending key (`train.optimizer_kwargs.lr`), found by leaving each key
out in turn. Costs a few milliseconds on the CPU.
"""
from __future__ import annotations

import inspect
import re
import warnings
from typing import Any, Callable

import torch

from samtune.train.optim import build_optimizer, build_scheduler

__all__ = ["check_optimizer", "check_scheduler"]

# Settings that only choose an implementation for the device: not tried on the CPU dummy.
_DEVICE_ONLY = ("fused", "foreach", "capturable")
_DUMMY_STEPS = 100  # schedule length for a missing T_max / total_steps in the dry run
_ERRORS = (ValueError, TypeError, KeyError, IndexError, ZeroDivisionError, OverflowError,
           RuntimeError, AttributeError)


def _problem(attempt: Callable[[dict[str, Any]], None], kwargs: dict[str, Any]) -> str | None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            attempt(kwargs)
    except _ERRORS as exc:  # build_* wrap a TypeError as "optimizer X: bad …_kwargs {…}: …"
        text = re.sub(r"^(optimizer|scheduler) \w+: bad \w+ \{.*\}: ", "", str(exc))
        return " ".join(text.split()) or type(exc).__name__
    return None


def _culprits(attempt: Callable[[dict[str, Any]], None], kwargs: dict[str, Any],
              problem: str) -> list[str]:
    """Keys without which the attempt passes (or only misses a required argument)."""
    named = re.search(r"unexpected keyword argument '(\w+)'", problem)
    if named:
        return [named.group(1)]
    out = []
    for key in kwargs:
        left = _problem(attempt, {k: v for k, v in kwargs.items() if k != key})
        if left is None or "missing" in left and "required" in left:
            out.append(key)
    return out


def _raise(section: str, what: str, kwargs: dict[str, Any], problem: str,
           attempt: Callable[[dict[str, Any]], None], params: list[str]) -> None:
    keys = _culprits(attempt, kwargs, problem)
    where = ", ".join(f"train.{section}.{k} = {kwargs.get(k)!r}" for k in keys) or \
        f"train.{section.removesuffix('_kwargs')} with {section} {kwargs}"
    valid = f" (valid keys: {', '.join(params)})" if "unexpected keyword" in problem else ""
    text = " (YAML reads 1e-3 as text: write 1.0e-3)" if any(
        isinstance(kwargs.get(k), str) and _numeric(kwargs[k]) for k in keys) else ""
    raise ValueError(f"{where}: refused by {what}: {problem}{valid}{text}")


def _numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _params(cls: type) -> list[str]:
    return [n for n in inspect.signature(cls).parameters if n not in ("params", "optimizer")]


def _optimizer(name: str, kwargs: dict[str, Any]) -> torch.optim.Optimizer:
    p = torch.nn.Parameter(torch.ones(2, 2))  # 2D: Muon takes matrices only
    opt = build_optimizer([p], name, {k: v for k, v in kwargs.items() if k not in _DEVICE_ONLY})

    def loss() -> torch.Tensor:  # a closure: LBFGS needs one, the others call it once
        opt.zero_grad()
        value = (p * p).sum()
        value.backward()
        return value

    for _ in range(2):
        opt.step(loss)
    return opt


def check_optimizer(name: str, kwargs: dict[str, Any]) -> None:
    """ValueError naming `train.optimizer_kwargs.<key>` when torch.optim.<name> refuses kwargs."""
    from samtune.train.optim import _lookup, optimizer_names

    cls = getattr(torch.optim, _lookup(name, optimizer_names(), "optimizer"))
    problem = _problem(lambda kw: _optimizer(name, kw), kwargs)
    if problem:
        _raise("optimizer_kwargs", f"torch.optim.{cls.__name__}", kwargs, problem,
               lambda kw: _optimizer(name, kw), _params(cls))


def check_scheduler(name: str, kwargs: dict[str, Any], optimizer: str,
                    optimizer_kwargs: dict[str, Any]) -> None:
    """ValueError naming `train.scheduler_kwargs.<key>` when lr_scheduler.<name> refuses kwargs
    (built on the configured optimizer, then stepped twice)."""
    from samtune.train.optim import _lookup, scheduler_names

    cls_name = _lookup(name, scheduler_names(), "scheduler")

    def attempt(kw: dict[str, Any]) -> None:
        sched = build_scheduler(_optimizer(optimizer, optimizer_kwargs), name, kw, _DUMMY_STEPS)
        for _ in range(2):
            if cls_name == "ReduceLROnPlateau":
                sched.step(0.5)  # a val Dice
            else:
                sched.step()

    problem = _problem(attempt, kwargs)
    if problem:
        cls = getattr(torch.optim.lr_scheduler, cls_name)
        _raise("scheduler_kwargs", f"torch.optim.lr_scheduler.{cls_name}", kwargs, problem,
               attempt, _params(cls))
