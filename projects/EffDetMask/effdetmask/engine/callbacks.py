"""Training hooks (Lightning callbacks) that write the run directory."""

from __future__ import annotations

import json
import math
import os
import time
from typing import Any, Dict

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_only

__all__ = ["JSONLinesMetricsWriter", "EvalResultsWriter"]


def _to_float(value: Any) -> float:
    if isinstance(value, torch.Tensor):
        value = value.detach().float().item()
    return float(value)


class JSONLinesMetricsWriter(Callback):
    """Appends one JSON object per optimiser step to ``metrics.jsonl`` (step, epoch, metrics)."""

    def __init__(self, output_dir: str, every_n_steps: int = 1) -> None:
        self.path = os.path.join(output_dir, "metrics.jsonl")
        self.every_n_steps = max(1, every_n_steps)
        self._start = time.monotonic()

    def _write(self, trainer: Trainer, extra: Dict[str, Any]) -> None:
        record = {
            "step": trainer.global_step,
            "epoch": trainer.current_epoch,
            "time_s": round(time.monotonic() - self._start, 3),
        }
        for key, value in trainer.callback_metrics.items():
            number = _to_float(value)
            record[key] = None if math.isnan(number) else number
        record.update(extra)
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")

    @rank_zero_only
    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args) -> None:
        # log only once per optimiser step, after the step happened
        if trainer.fit_loop._should_accumulate():
            return
        if trainer.global_step % self.every_n_steps == 0:
            self._write(trainer, {"phase": "train"})

    @rank_zero_only
    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.sanity_checking:
            self._write(trainer, {"phase": "eval"})


class EvalResultsWriter(Callback):
    """Writes the latest full evaluation results (every metric, per category) as JSON."""

    def __init__(self, output_dir: str) -> None:
        self.path = os.path.join(output_dir, "eval_results.json")

    @rank_zero_only
    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        results = getattr(pl_module, "last_eval_results", None)
        if results and not trainer.sanity_checking:
            payload = {
                "step": trainer.global_step,
                "epoch": trainer.current_epoch,
                "results": results,
            }
            with open(self.path, "w") as f:
                json.dump(payload, f, indent=2, default=_to_float)
