"""Training hooks (Lightning callbacks) that write the run directory."""

from __future__ import annotations

import json
import logging
import math
import os
import time
from typing import Any, Dict, List, Optional, Set, Tuple

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_only

__all__ = ["JSONLinesMetricsWriter", "EvalResultsWriter"]

logger = logging.getLogger(__name__)


def _to_float(value: Any) -> float:
    if isinstance(value, torch.Tensor):
        value = value.detach().float().item()
    return float(value)


def _row_key(record: Dict[str, Any]) -> Tuple[Any, Any]:
    return record.get("phase"), record.get("step")


class JSONLinesMetricsWriter(Callback):
    """Appends one JSON object per optimiser step to ``metrics.jsonl`` (step, epoch, metrics).

    Rows are unique by ``(phase, step)``. When training starts at step ``S`` (0 for a new run,
    the checkpoint's step after ``--resume``), rows with ``step > S`` left by an earlier run are
    dropped: the steps after ``S`` are run again. A row written again for the same phase and step
    (e.g. the final evaluation at the step of the last in-training one) replaces the old one.
    """

    def __init__(self, output_dir: str, every_n_steps: int = 1) -> None:
        self.path = os.path.join(output_dir, "metrics.jsonl")
        self.every_n_steps = max(1, every_n_steps)
        self._start = time.monotonic()
        self._keys: Optional[Set[Tuple[Any, Any]]] = None  # (phase, step) of the file's rows

    def _read_rows(self) -> Tuple[List[Dict[str, Any]], bool]:
        """The file's rows, and whether it had lines that are not JSON (a write cut short)."""
        rows: List[Dict[str, Any]] = []
        damaged = False
        if not os.path.isfile(self.path):
            return rows, damaged
        with open(self.path) as f:
            for line in f:
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    damaged = True
                    continue
                if isinstance(record, dict):
                    rows.append(record)
                else:
                    damaged = True
        return rows, damaged

    def _rewrite(self, rows: List[Dict[str, Any]]) -> None:
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            for record in rows:
                f.write(json.dumps(record) + "\n")
        os.replace(tmp, self.path)
        self._keys = {_row_key(r) for r in rows}

    def _sync(self, last_step: Optional[int] = None) -> None:
        """Read the file's row keys; drop rows after ``last_step`` and lines cut short."""
        rows, damaged = self._read_rows()
        kept = [
            r for r in rows
            if last_step is None or not isinstance(r.get("step"), int) or r["step"] <= last_step
        ]
        if damaged or len(kept) != len(rows):
            if len(kept) != len(rows):
                logger.info("%s: dropped %d rows after step %d (training continues from there)",
                            self.path, len(rows) - len(kept), last_step)
            self._rewrite(kept)
        else:
            self._keys = {_row_key(r) for r in rows}

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
        if self._keys is None:
            self._sync()
        key = _row_key(record)
        if key in self._keys:
            rows = [r for r in self._read_rows()[0] if _row_key(r) != key]
            self._rewrite(rows + [record])
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        self._keys.add(key)

    @rank_zero_only
    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # the checkpoint (if any) is restored by now: global_step is where training continues
        self._sync(last_step=trainer.global_step)

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
