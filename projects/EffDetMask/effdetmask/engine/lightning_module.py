"""The Lightning module: one training/evaluation step of any registered meta-architecture."""

from __future__ import annotations

import logging
import math
import random
from typing import Any, Callable, Dict, List, Optional

import numpy as np
import torch
import torch.distributed as dist
from lightning.pytorch import LightningModule

from ..modeling import build_model
from ..modeling.weights import upgrade_legacy_keys
from .solver import SolverSpec, apply_warmup, build_lr_scheduler, build_optimizer

logger = logging.getLogger(__name__)

__all__ = ["EffDetMaskModule", "NonFiniteLossError"]


def _numpy_rng_state() -> tuple:
    # as plain types and a tensor, so checkpoints load with torch.load(weights_only=True)
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)


def _set_numpy_rng_state(state: tuple) -> None:
    name, keys, pos, has_gauss, cached = state
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))


class NonFiniteLossError(FloatingPointError):
    """A loss became NaN or infinite; training stops and the last good checkpoint is kept."""


class EffDetMaskModule(LightningModule):
    """Wraps a model built from the config; its hooks are the trainer's only view of the model.

    Args:
        cfg: the frozen config (saved into checkpoints as a yaml string for reproducibility).
        evaluator_factory: ``dataset_name -> evaluator`` used by the validation loop; one
            evaluator per validation dataloader.
        val_dataset_names: names of the validation datasets, in dataloader order.
    """

    def __init__(
        self,
        cfg,
        evaluator_factory: Optional[Callable[[str], Any]] = None,
        val_dataset_names: Optional[List[str]] = None,
    ) -> None:
        super().__init__()
        self.model = build_model(cfg, device="cpu")
        self.solver = SolverSpec.from_config(cfg)
        self.config_yaml = cfg.dump()
        self.evaluator_factory = evaluator_factory
        self.val_dataset_names = list(val_dataset_names or [])
        self._evaluators: List[Any] = []
        self.loss_ema: Optional[float] = None
        self.last_eval_results: Dict[str, Dict[str, float]] = {}
        # Training batches per epoch on this process (usually ``len`` of the train loader), set by
        # the trainer builder before ``fit``. A callable because it is read in
        # :meth:`configure_optimizers`, after ``fit`` has started the process group the loader
        # shards over; Lightning itself has not loaded the train loader at that point.
        self.train_batches_per_epoch: Optional[Callable[[], int]] = None

    # ------------------------------------------------------------------ training
    def forward(self, batched_inputs: List[dict]):
        return self.model(batched_inputs)

    def training_step(self, batch: List[dict], batch_idx: int) -> torch.Tensor:
        losses = self.model(batch)
        total = sum(losses.values())
        self._check_finite(total, losses, batch_idx)
        value = float(total.detach())
        # A smoothed loss is what the plateau schedule watches when no validation runs each epoch.
        self.loss_ema = value if self.loss_ema is None else 0.9 * self.loss_ema + 0.1 * value
        batch_size = len(batch)
        self.log("train/loss", value, prog_bar=True, batch_size=batch_size)
        self.log("train/loss_smooth", self.loss_ema, batch_size=batch_size, sync_dist=True)
        for name, loss in losses.items():
            self.log(f"train/{name}", float(loss.detach()), prog_bar=True, batch_size=batch_size)
        return total

    def _check_finite(self, total: torch.Tensor, losses: Dict[str, torch.Tensor],
                      batch_idx: int) -> None:
        """Raise :class:`NonFiniteLossError` on every process when any process's loss is not finite.

        With several processes the finite flags are all-reduced first, so that all ranks stop
        together with the same message (a rank raising alone would leave the others waiting in
        the next collective forever).
        """
        finite = bool(torch.isfinite(total.detach()).all())
        distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        if distributed:
            flag = torch.tensor([1 if finite else 0], dtype=torch.int32, device=total.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MIN)
            if int(flag.item()) == 1:
                return
        elif finite:
            return
        values = {k: float(v.detach()) for k, v in losses.items()}
        if distributed:
            parts: List[Any] = [None] * dist.get_world_size()
            dist.all_gather_object(parts, None if finite else values)
            where = "; ".join(f"rank {r}: {v}" for r, v in enumerate(parts) if v is not None)
        else:
            where = str(values)
        raise NonFiniteLossError(
            f"non-finite loss at optimiser step {self.global_step} "
            f"(epoch {self.current_epoch}, "
            f"batch {batch_idx}): {where}; the last good checkpoint is kept"
        )

    def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure=None) -> None:
        apply_warmup(self.solver, optimizer, self.global_step)
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)

    def configure_optimizers(self):
        optimizer = build_optimizer(self.solver, self.model)
        steps_per_epoch = self._steps_per_epoch()
        total_steps = self._total_steps(steps_per_epoch)
        scheduler = build_lr_scheduler(self.solver, optimizer, steps_per_epoch, total_steps)
        return {"optimizer": optimizer, "lr_scheduler": scheduler}

    def _steps_per_epoch(self) -> int:
        """Optimiser steps per epoch on this process: ``ceil(batches / accumulation)``.

        Lightning loads the train loader only after ``configure_optimizers`` (unless something
        asked for ``estimated_stepping_batches`` in epoch mode), so ``num_training_batches`` is
        usually still ``inf`` here; the count then comes from :attr:`train_batches_per_epoch`.
        """
        batches = self.trainer.num_training_batches
        if not math.isfinite(batches):
            if self.train_batches_per_epoch is None:
                if self.solver.scheduler == "plateau":
                    return 1  # epoch-interval schedule: the step count is not used
                raise RuntimeError(
                    "the training batches per epoch are unknown when the optimiser is built; "
                    "set EffDetMaskModule.train_batches_per_epoch (e.g. to the train loader's "
                    "__len__) before trainer.fit, as engine.trainer.train does"
                )
            batches = self.train_batches_per_epoch()
        accumulate = max(1, int(self.trainer.accumulate_grad_batches))
        return max(1, math.ceil(int(batches) / accumulate))

    def _total_steps(self, steps_per_epoch: int) -> int:
        """Optimiser steps of the whole run: ``max_steps`` if set, else epochs x steps per epoch
        (the smaller of the two when both are set, as Lightning stops at whichever comes first)."""
        max_steps = self.trainer.max_steps
        max_epochs = self.trainer.max_epochs
        total = steps_per_epoch * max_epochs if max_epochs is not None and max_epochs > 0 else None
        if max_steps is not None and max_steps > 0:
            total = max_steps if total is None else min(total, max_steps)
        if total is None:
            if self.solver.scheduler == "cosine":
                raise ValueError(
                    "the cosine schedule needs a finite run: set SOLVER.MAX_ITER or MAX_EPOCHS > 0"
                )
            return steps_per_epoch  # not used by the step and plateau schedules
        return total

    # ---------------------------------------------------------------- evaluation
    def on_validation_epoch_start(self) -> None:
        if self.evaluator_factory is None:
            raise RuntimeError("validation needs an evaluator_factory")
        self._evaluators = [self.evaluator_factory(name) for name in self.val_dataset_names]
        for evaluator in self._evaluators:
            evaluator.reset()

    def validation_step(self, batch: List[dict], batch_idx: int, dataloader_idx: int = 0) -> None:
        outputs = self.model(batch)
        self._evaluators[dataloader_idx].process(batch, outputs)

    def on_validation_epoch_end(self) -> None:
        results: Dict[str, Dict[str, float]] = {}
        for name, evaluator in zip(self.val_dataset_names, self._evaluators):
            # evaluate() gathers across processes; every rank receives the same numbers
            results[name] = evaluator.evaluate() or {}
        self.last_eval_results = results
        for name, per_task in results.items():
            prefix = "val" if len(results) == 1 else f"val/{name}"
            for task, metrics in per_task.items():
                # AP_IOU_F1 / ATTR_F1: Fashionpedia's attribute metrics, when the model predicts
                # attributes (evaluation/attribute_eval.py)
                for metric in ("AP", "AP50", "AP75", "AP_IOU_F1", "ATTR_F1"):
                    value = metrics.get(metric) if isinstance(metrics, dict) else None
                    if value is not None and not math.isnan(value):
                        self.log(f"{prefix}/{task}_{metric}", float(value), sync_dist=False)

    # ------------------------------------------------------------ checkpointing
    def on_save_checkpoint(self, checkpoint: Dict[str, Any]) -> None:
        checkpoint["effdetmask"] = {
            "config": self.config_yaml,
            "loss_ema": self.loss_ema,
            "rng": {
                "python": random.getstate(),
                "numpy": _numpy_rng_state(),
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            },
        }

    def on_load_checkpoint(self, checkpoint: Dict[str, Any]) -> None:
        if "state_dict" in checkpoint:  # a run saved before a part moved resumes into today's
            checkpoint["state_dict"] = upgrade_legacy_keys(
                checkpoint["state_dict"], set(self.state_dict()), prefix="model.")
        state = checkpoint.get("effdetmask")
        if not state:
            return
        self.loss_ema = state.get("loss_ema")
        rng = state.get("rng")
        if rng:
            random.setstate(rng["python"])
            _set_numpy_rng_state(rng["numpy"])
            torch.set_rng_state(rng["torch"])
            if rng["cuda"] and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(rng["cuda"])
