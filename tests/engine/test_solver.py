"""Optimiser and schedule construction from SOLVER.*."""

import pytest
import torch

from effdetmask.config import get_cfg
from effdetmask.engine.solver import SolverSpec, apply_warmup, build_lr_scheduler, build_optimizer


def _spec(**overrides):
    cfg = get_cfg()
    for key, value in overrides.items():
        setattr(cfg.SOLVER, key, value)
    return SolverSpec.from_config(cfg)


def _model():
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))


def _record_lrs(opt, sched, steps):
    """The LR each of ``steps`` optimiser steps uses, stepping the scheduler after each."""
    lrs = []
    for _ in range(steps):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return lrs


def _lrs(spec, steps, steps_per_epoch=5, total=100):
    opt = build_optimizer(spec, _model())
    return _record_lrs(opt, build_lr_scheduler(spec, opt, steps_per_epoch, total)["scheduler"],
                       steps)


def test_adamw_and_sgd_and_no_decay_on_norms():
    opt = build_optimizer(_spec(OPTIMIZER="AdamW", WEIGHT_DECAY=0.1), _model())
    assert isinstance(opt, torch.optim.AdamW)
    decays = sorted(g["weight_decay"] for g in opt.param_groups)
    assert decays == [0.0, 0.1]
    # conv weight decayed; conv bias, BN weight and bias not
    assert len(opt.param_groups[0]["params"]) == 1 and len(opt.param_groups[1]["params"]) == 3
    assert isinstance(build_optimizer(_spec(OPTIMIZER="SGD"), _model()), torch.optim.SGD)


def test_unknown_optimizer_and_scheduler_are_clear_errors():
    with pytest.raises(ValueError, match="SOLVER.OPTIMIZER"):
        _spec(OPTIMIZER="Adam9")
    with pytest.raises(ValueError, match="SOLVER.LR_SCHEDULER"):
        _spec(LR_SCHEDULER="linear")


def test_step_schedule_counts_epochs():
    # paper d0: StepLR(10 epochs, 0.2); here 2 epochs of 5 steps each
    lrs = _lrs(_spec(LR_SCHEDULER="step", BASE_LR=1.0, STEP_SIZE=2, GAMMA=0.2), 25)
    assert lrs[0] == pytest.approx(1.0) and lrs[9] == pytest.approx(1.0)
    assert lrs[10] == pytest.approx(0.2) and lrs[20] == pytest.approx(0.04)


def test_warmup_is_linear_then_flat():
    lrs = _lrs(_spec(LR_SCHEDULER="step", BASE_LR=1.0, WARMUP_ITERS=4, WARMUP_FACTOR=0.0), 6)
    assert lrs[:5] == pytest.approx([0.0, 0.25, 0.5, 0.75, 1.0])


def test_cosine_reaches_zero():
    lrs = _lrs(_spec(LR_SCHEDULER="cosine", BASE_LR=1.0), 101, total=100)
    assert lrs[0] == pytest.approx(1.0) and lrs[50] == pytest.approx(0.5) and lrs[100] < 1e-6


def test_plateau_reduces_on_stalled_metric_and_warms_up():
    spec = _spec(
        LR_SCHEDULER="plateau",
        BASE_LR=1.0,
        PLATEAU_FACTOR=0.5,
        PLATEAU_PATIENCE=1,
        PLATEAU_MONITOR="val/segm_AP",
        WARMUP_ITERS=2,
        WARMUP_FACTOR=0.0,
    )
    opt = build_optimizer(spec, _model())
    config = build_lr_scheduler(spec, opt, 5, 100)
    assert config["monitor"] == "val/segm_AP" and config["interval"] == "epoch"
    apply_warmup(spec, opt, 1)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.5)
    apply_warmup(spec, opt, 2)
    assert opt.param_groups[0]["lr"] == pytest.approx(1.0)  # warm-up ends at BASE_LR
    sched = config["scheduler"]
    lrs = []
    for ap in [10.0, 11.0, 11.0, 11.0, 12.0]:  # AP: higher is better ("max" mode)
        sched.step(ap)
        lrs.append(opt.param_groups[0]["lr"])
    # improvement keeps the LR; the second stalled epoch (> PATIENCE of 1) halves it
    assert lrs == pytest.approx([1.0, 1.0, 1.0, 0.5, 0.5])
    apply_warmup(spec, opt, 3)  # after warm-up the schedule owns the LR
    assert opt.param_groups[0]["lr"] == pytest.approx(0.5)
