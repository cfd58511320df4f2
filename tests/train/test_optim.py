"""Optimizer/scheduler factories and the warmup × scheduler learning rate by step."""
from __future__ import annotations

import pytest
import torch

from samtune.train.optim import (LRSchedule, build_optimizer, build_scheduler, optimizer_names,
                                 scheduler_names, warmup_factor)


def _params() -> list[torch.nn.Parameter]:
    frozen = torch.nn.Parameter(torch.zeros(3), requires_grad=False)
    return [torch.nn.Parameter(torch.zeros(2)), frozen]


def _lrs_by_step(schedule: LRSchedule, steps: int) -> list[float]:
    """The lr each optimizer step runs with, as the loop applies it."""
    out = []
    for s in range(steps):
        before = schedule.optimizer.param_groups[0]["lr"]
        expected = schedule.lrs(s)[0]
        with schedule.applied(s) as lrs:
            assert schedule.optimizer.param_groups[0]["lr"] == pytest.approx(lrs[0])
            assert expected == pytest.approx(lrs[0])
            schedule.optimizer.step()  # no grads: moves nothing, keeps torch's order check happy
            out.append(lrs[0])
        assert schedule.optimizer.param_groups[0]["lr"] == before  # warmup never sticks
        schedule.step_done(s)
    return out


def test_optimizer_by_name_with_kwargs_gets_trainable_params_only() -> None:
    opt = build_optimizer(_params(), "AdamW", {"lr": 3e-4, "weight_decay": 0.05, "betas": [0.8, 0.9]})
    assert isinstance(opt, torch.optim.AdamW)
    group = opt.param_groups[0]
    assert group["lr"] == 3e-4 and group["weight_decay"] == 0.05
    assert [p.shape for p in group["params"]] == [torch.Size([2])]
    assert isinstance(build_optimizer(_params(), "sgd", {"lr": 0.1}), torch.optim.SGD)
    assert "AdamW" in optimizer_names() and "Optimizer" not in optimizer_names()


def test_unknown_names_list_close_ones() -> None:
    with pytest.raises(ValueError, match=r"unknown optimizer 'AdamX'.*'Adam'"):
        build_optimizer(_params(), "AdamX", {"lr": 1.0})
    opt = build_optimizer(_params(), "SGD", {"lr": 1.0})
    with pytest.raises(ValueError, match=r"did you mean 'CosineAnnealingLR'"):
        build_scheduler(opt, "CosineAnealingLR", {}, 10)
    with pytest.raises(ValueError, match="unknown scheduler 'LambdaLR'"):
        build_scheduler(opt, "LambdaLR", {}, 10)  # needs a callable: not from YAML
    assert "ReduceLROnPlateau" in scheduler_names() and "SequentialLR" not in scheduler_names()


def test_bad_kwargs_and_frozen_model_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="bad optimizer_kwargs"):
        build_optimizer(_params(), "SGD", {"lr": 0.1, "mommentum": 0.9})
    with pytest.raises(ValueError, match="no trainable parameters"):
        build_optimizer([torch.nn.Parameter(torch.zeros(1), requires_grad=False)], "SGD", {"lr": 1})
    opt = build_optimizer(_params(), "SGD", {"lr": 1.0})
    with pytest.raises(ValueError, match="bad scheduler_kwargs"):
        build_scheduler(opt, "StepLR", {"step": 3}, 10)
    with pytest.raises(ValueError, match="mode must be 'max'"):
        build_scheduler(opt, "ReduceLROnPlateau", {"mode": "min"}, 10)


def test_warmup_factor_values() -> None:
    assert [warmup_factor(s, 4) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert warmup_factor(0, 0) == 1.0


def test_warmup_then_step_lr_by_step() -> None:
    opt = build_optimizer(_params(), "SGD", {"lr": 1.0})
    schedule = LRSchedule(opt, build_scheduler(opt, "StepLR", {"step_size": 2, "gamma": 0.5}, 6), 4)
    # steps 0–3 warm up to 1.0; from step 4 the scheduler runs from its step 0
    assert _lrs_by_step(schedule, 10) == pytest.approx(
        [0.25, 0.5, 0.75, 1.0, 1.0, 1.0, 0.5, 0.5, 0.25, 0.25])


def test_constant_and_cosine_fill_their_length() -> None:
    opt = build_optimizer(_params(), "SGD", {"lr": 2.0})
    assert _lrs_by_step(LRSchedule(opt, build_scheduler(opt, None, {}, 5), 2), 4) == [1.0, 2.0, 2.0, 2.0]
    opt = build_optimizer(_params(), "SGD", {"lr": 1.0})
    sched = build_scheduler(opt, "CosineAnnealingLR", {"eta_min": 0.1}, 4)
    assert sched.T_max == 4
    lrs = _lrs_by_step(LRSchedule(opt, sched, 0), 5)
    assert lrs == pytest.approx([1.0, 0.1 + 0.9 * (1 + 2 ** -0.5) / 2, 0.55,
                                 0.1 + 0.9 * (1 - 2 ** -0.5) / 2, 0.1])
    opt = build_optimizer(_params(), "AdamW", {"lr": 1.0})
    assert build_scheduler(opt, "OneCycleLR", {"max_lr": 1.0}, 7).total_steps == 7


def test_plateau_steps_on_validation_only() -> None:
    opt = build_optimizer(_params(), "SGD", {"lr": 1.0})
    plateau = build_scheduler(opt, "ReduceLROnPlateau", {"patience": 1, "factor": 0.5}, 10)
    schedule = LRSchedule(opt, plateau, 0)
    assert _lrs_by_step(schedule, 3) == [1.0, 1.0, 1.0]  # per-step calls leave it alone
    for dice in (0.5, 0.5, 0.5):  # best, then two without gain: patience 1 → halve once
        schedule.validated(dice)
    assert schedule.lrs(3) == [0.5]
    state = schedule.state_dict()
    assert state["best"] == 0.5 and state["mode"] == "max"


def test_adamw_is_fused_on_cpu_and_cuda_and_steps_like_the_loop() -> None:
    opt = build_optimizer(_params(), "AdamW", {"lr": 1e-3})
    assert opt.param_groups[0]["fused"] is True  # CPU parameters: torch's fused CPU kernel
    for kwargs in ({"fused": False}, {"foreach": True}):  # the user's choice stands
        assert not build_optimizer(_params(), "AdamW", {"lr": 1e-3, **kwargs}
                                   ).param_groups[0]["fused"]
    assert build_optimizer(_params(), "SGD", {"lr": 1.0}).param_groups[0].get("fused") is None
    results = []
    for kwargs in ({}, {"fused": False}):  # fused and torch's per-tensor loop agree
        torch.manual_seed(0)
        params = [torch.nn.Parameter(torch.randn(5, 3)), torch.nn.Parameter(torch.randn(3))]
        opt = build_optimizer(params, "AdamW", {"lr": 1e-2, "weight_decay": 0.1, **kwargs})
        for step in range(3):
            for p in params:
                p.grad = torch.full_like(p, 0.1 * (step + 1))
            opt.step()
        results.append(torch.cat([p.detach().flatten() for p in params]))
    torch.testing.assert_close(results[0], results[1], atol=1e-6, rtol=1e-5)
    if not torch.cuda.is_available():
        pytest.skip("the CUDA branch needs CUDA parameters")
    cuda = [torch.nn.Parameter(torch.zeros(2, device="cuda"))]
    assert build_optimizer(cuda, "AdamW", {"lr": 1e-3}).param_groups[0]["fused"] is True
    off = build_optimizer(cuda, "AdamW", {"lr": 1e-3, "fused": False})
    assert off.param_groups[0]["fused"] is False
