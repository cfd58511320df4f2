"""train.optimizer_kwargs / scheduler_kwargs: whatever torch would refuse fails at config
validation, naming the key (issue 12 §2), and the CLI exits 2 before any step."""
from __future__ import annotations

import pytest

import run
from samtune.config import ConfigError, load_config


@pytest.mark.parametrize(("override", "problem"), [
    ("train.optimizer_kwargs.lr=-1", r"train\.optimizer_kwargs\.lr = -1: .*AdamW.*learning rate"),
    ("train.optimizer_kwargs.weight_decay=-0.01",
     r"train\.optimizer_kwargs\.weight_decay = -0\.01: .*weight_decay"),
    ("train.optimizer_kwargs.eps=-1.0e-8", r"train\.optimizer_kwargs\.eps = -1e-08: .*epsilon"),
    ("train.optimizer_kwargs.betas=[0.9,1.0]", r"train\.optimizer_kwargs\.betas = \[0\.9, 1\.0\]"),
    ("train.optimizer_kwargs.betas=[-0.1,0.9]", r"train\.optimizer_kwargs\.betas .*beta"),
    ("train.optimizer_kwargs.lrr=0.1", r"train\.optimizer_kwargs\.lrr = 0\.1: .*valid keys: lr"),
    ("train.optimizer_kwargs.lr=1e-3", r"lr = '1e-3'.*write 1\.0e-3"),
    ("train.optimizer=AdamX", r"train\.optimizer: .*unknown optimizer 'AdamX'"),
    ("train.scheduler=Cosine", r"train\.scheduler: .*unknown scheduler 'Cosine'"),
    ("train.scheduler_kwargs.eta_min=low", r"train\.scheduler_kwargs\.eta_min = 'low': "
                                           r".*CosineAnnealingLR"),
    ("train.scheduler_kwargs.tmax=10", r"train\.scheduler_kwargs\.tmax = 10: .*valid keys: T_max"),
])
def test_refused_values_name_their_key(override: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        load_config("demo", [override])


def test_sgd_momentum_and_step_lr_of_the_wrong_type() -> None:
    with pytest.raises(ConfigError, match=r"train\.optimizer_kwargs\.momentum = -0\.5"):
        load_config("demo", ["train.optimizer=SGD", "train.optimizer_kwargs={lr: 0.1, "
                             "momentum: -0.5}"])
    with pytest.raises(ConfigError, match=r"train\.scheduler_kwargs\.step_size = 'two'"):
        load_config("demo", ["train.scheduler=StepLR", "train.scheduler_kwargs={step_size: two}"])
    with pytest.raises(ConfigError, match=r"scheduler_kwargs\.mode = 'min'.*must be 'max'"):
        load_config("demo", ["train.scheduler=ReduceLROnPlateau",
                             "train.scheduler_kwargs={mode: min}"])


def test_good_values_still_load() -> None:
    cfg = load_config("demo", ["train.optimizer=SGD", "train.optimizer_kwargs={lr: 0.1, "
                               "momentum: 0.9, nesterov: true}", "train.scheduler=StepLR",
                               "train.scheduler_kwargs={step_size: 3, gamma: 0.5}"])
    assert cfg.train.optimizer_kwargs == {"lr": 0.1, "momentum": 0.9, "nesterov": True}
    assert cfg.train.scheduler_kwargs == {"step_size": 3, "gamma": 0.5}
    fused = load_config("demo", ["train.optimizer_kwargs={lr: 1.0e-4, fused: true}"])
    assert fused.train.optimizer_kwargs["fused"] is True  # device-only: not tried on the CPU


def test_cli_exits_2_before_any_step(tmp_path, capsys: pytest.CaptureFixture) -> None:
    code = run.main(["--pipeline", "finetune", "--config", "demo", "--set",
                     "train.optimizer_kwargs.lr=-1", "--set", f"output_dir={tmp_path / 'out'}",
                     "--set", f"stack.home={tmp_path / 'home'}"])
    assert code == 2
    assert "train.optimizer_kwargs.lr = -1" in capsys.readouterr().out
    assert not (tmp_path / "out").exists() and not (tmp_path / "home").exists()
