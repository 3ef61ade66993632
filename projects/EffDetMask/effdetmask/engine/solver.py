"""Optimiser and learning-rate schedule built from ``SOLVER.*``.

Schedules are expressed per optimiser step so that warm-up, step decay (given in epochs, as in the
paper) and cosine share one ``LambdaLR``. ReduceLROnPlateau cannot be a lambda (it reacts to a
metric), so it runs per epoch and its warm-up is applied by :func:`apply_warmup` from the training
loop.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List

import torch

__all__ = ["SolverSpec", "build_optimizer", "build_lr_scheduler", "apply_warmup"]

_OPTIMIZERS = {"adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}
_SCHEDULERS = ("step", "plateau", "cosine")


@dataclass(frozen=True)
class SolverSpec:
    """The solver settings the training loop needs, read from the config in one place."""

    optimizer: str
    base_lr: float
    weight_decay: float
    momentum: float
    scheduler: str
    step_size_epochs: int
    gamma: float
    plateau_factor: float
    plateau_patience: int
    plateau_monitor: str
    warmup_iters: int
    warmup_factor: float

    @classmethod
    def from_config(cls, cfg) -> "SolverSpec":
        """Read and check ``SOLVER.*``; a bad value is a ``ValueError`` naming its key."""
        s = cfg.SOLVER
        _check_int(s.IMS_PER_BATCH, "SOLVER.IMS_PER_BATCH", 1, "images per step on each process")
        _check_int(s.ACCUMULATE_GRAD_BATCHES, "SOLVER.ACCUMULATE_GRAD_BATCHES", 1,
                   "batches per optimiser step")
        _check_number(s.BASE_LR, "SOLVER.BASE_LR")
        _check_number(s.WEIGHT_DECAY, "SOLVER.WEIGHT_DECAY")
        _check_number(s.MOMENTUM, "SOLVER.MOMENTUM")
        _check_int(s.WARMUP_ITERS, "SOLVER.WARMUP_ITERS", 0, "warm-up optimiser steps")
        spec = cls(
            optimizer=s.OPTIMIZER.lower(),
            base_lr=s.BASE_LR,
            weight_decay=s.WEIGHT_DECAY,
            momentum=s.MOMENTUM,
            scheduler=s.LR_SCHEDULER.lower(),
            step_size_epochs=s.STEP_SIZE,
            gamma=s.GAMMA,
            plateau_factor=s.PLATEAU_FACTOR,
            plateau_patience=s.PLATEAU_PATIENCE,
            plateau_monitor=s.PLATEAU_MONITOR,
            warmup_iters=s.WARMUP_ITERS,
            warmup_factor=s.WARMUP_FACTOR,
        )
        if spec.optimizer not in _OPTIMIZERS:
            raise ValueError(
                f"SOLVER.OPTIMIZER={s.OPTIMIZER!r} is not one of {sorted(_OPTIMIZERS)} "
                "(case-insensitive)"
            )
        if spec.scheduler not in _SCHEDULERS:
            raise ValueError(f"SOLVER.LR_SCHEDULER={s.LR_SCHEDULER!r} is not one of {_SCHEDULERS}")
        return spec


def _check_int(value: Any, key: str, minimum: int, meaning: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{key} must be an integer >= {minimum} ({meaning}), got {value!r}")


def _check_number(value: Any, key: str) -> None:
    """A finite number >= 0 (learning rate, weight decay, momentum)."""
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value < 0
    ):
        raise ValueError(f"{key} must be a finite number >= 0, got {value!r}")


def _param_groups(params: Iterable[tuple], weight_decay: float) -> List[Dict[str, Any]]:
    # Norm weights and biases are not decayed: decaying them only fights the normalisation.
    decay, no_decay = [], []
    for name, p in params:
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 or name.endswith(".bias") else decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_optimizer(spec: SolverSpec, model: torch.nn.Module) -> torch.optim.Optimizer:
    """AdamW or SGD over the trainable parameters (no weight decay on norms and biases)."""
    groups = _param_groups(model.named_parameters(), spec.weight_decay)
    if spec.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=spec.base_lr, momentum=spec.momentum)
    return torch.optim.AdamW(groups, lr=spec.base_lr)


def _warmup_multiplier(spec: SolverSpec, step: int) -> float:
    if step >= spec.warmup_iters:
        return 1.0
    alpha = step / max(1, spec.warmup_iters)
    return spec.warmup_factor * (1 - alpha) + alpha


def build_lr_scheduler(
    spec: SolverSpec, optimizer: torch.optim.Optimizer, steps_per_epoch: int, total_steps: int
) -> Dict[str, Any]:
    """A Lightning ``lr_scheduler`` config dict for the chosen schedule.

    Args:
        steps_per_epoch: optimiser steps per epoch (after gradient accumulation).
        total_steps: optimiser steps of the whole run (for cosine).
    """
    steps_per_epoch = max(1, steps_per_epoch)
    if spec.scheduler == "plateau":
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer,
            mode=_plateau_mode(spec.plateau_monitor),
            factor=spec.plateau_factor,
            patience=spec.plateau_patience,
        )
        return {
            "scheduler": scheduler,
            "interval": "epoch",
            "monitor": spec.plateau_monitor,
            "strict": True,
        }

    def multiplier(step: int) -> float:
        if spec.scheduler == "step":
            decay = spec.gamma ** ((step // steps_per_epoch) // max(1, spec.step_size_epochs))
        else:
            progress = min(1.0, step / max(1, total_steps))
            decay = 0.5 * (1.0 + math.cos(math.pi * progress))
        return _warmup_multiplier(spec, step) * decay

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, multiplier)
    return {"scheduler": scheduler, "interval": "step"}


def _plateau_mode(monitor: str) -> str:
    # Losses improve downwards, AP-like metrics upwards.
    return "min" if "loss" in monitor.lower() else "max"


def apply_warmup(spec: SolverSpec, optimizer: torch.optim.Optimizer, step: int) -> None:
    """Linear warm-up for the plateau schedule (the lambda schedules carry their own)."""
    if spec.scheduler != "plateau" or step > spec.warmup_iters:
        return
    for group in optimizer.param_groups:
        group["lr"] = spec.base_lr * _warmup_multiplier(spec, step)
