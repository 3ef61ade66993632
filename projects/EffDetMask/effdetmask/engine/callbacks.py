"""Training hooks (Lightning callbacks) that write the run directory."""

from __future__ import annotations

import json
import logging
import math
import os
import time
from typing import Any, Dict, List, Optional, Set, Tuple

import torch
import torch.distributed as dist
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.utilities import rank_zero_only

from ..data.build import SKIPPED_KEY
from ..data.validation import SkipReport

__all__ = ["JSONLinesMetricsWriter", "EvalResultsWriter", "SkipSummary", "RunProgressBar"]

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
        self._last_step: Optional[int] = None  # global_step at the last train batch seen

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
        self._last_step = trainer.global_step

    @rank_zero_only
    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args) -> None:
        # once per optimiser step, after it happened: a batch that only accumulated gradients
        # leaves the (public) global_step where it was
        if trainer.global_step == self._last_step:
            return
        self._last_step = trainer.global_step
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


class SkipSummary(Callback):
    """Counts every sample skipped while training (``DATASETS.SKIP_INVALID``) and logs one summary.

    The DataLoader workers that skip a sample cannot update the main process's counts, so
    :class:`~effdetmask.data.build.MapDataset` sends the skips with the next good sample
    (``SKIPPED_KEY``); they are taken out of the batch here, before the model sees it. At the end
    of training the counts of all processes are gathered and rank 0 logs the summary, which also
    holds the records skipped when the dataset was loaded (:meth:`add_report`).
    """

    def __init__(self, name: str = "training data") -> None:
        self.report = SkipReport(name)

    def add_report(self, report: Optional[SkipReport]) -> None:
        """Count the skips of another report (e.g. those made while loading the dataset)."""
        if report is not None:
            self.report.merge(report)

    def count_batch(self, batch: Any) -> None:
        """Move the skip records carried by a batch's samples into :attr:`report`."""
        for sample in batch if isinstance(batch, (list, tuple)) else ():
            if not isinstance(sample, dict):
                continue
            for reason, message in sample.pop(SKIPPED_KEY, None) or ():
                self.report.counts[reason] += 1
                self.report.first_example.setdefault(reason, message)

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any,
                             batch_idx: int) -> None:
        self.count_batch(batch)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            parts: List[Any] = [None] * dist.get_world_size()
            local = (dict(self.report.counts), dict(self.report.first_example))
            dist.all_gather_object(parts, local)
            merged = SkipReport(self.report.name)
            for rank, (counts, first) in enumerate(parts):
                other = SkipReport(f"rank {rank}")
                other.counts.update(counts)
                other.first_example.update(first)
                merged.merge(other)
            self.report = merged
        if trainer.is_global_zero:
            self.report.log_summary(logger)


class RunProgressBar(TQDMProgressBar):
    """A training bar over the whole run, not one per epoch: its total is the run's optimiser steps
    (``max_steps``, or epochs x steps per epoch) and it counts ``global_step``, so the ETA is the
    time to the end of training. Its description names the current epoch."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._run_started = False

    @staticmethod
    def run_total(trainer: Trainer) -> Optional[int]:
        try:
            total = float(trainer.estimated_stepping_batches)
        except Exception:  # unknown length (e.g. an iterable loader with max_epochs only)
            return None
        return int(total) if math.isfinite(total) else None

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        self._run_started = False

    def on_train_epoch_start(self, trainer: Trainer, *_: Any) -> None:
        bar = self.train_progress_bar
        if not self._run_started:
            bar.reset(total=self.run_total(trainer))
            # a resumed run: the bar starts at the checkpoint's step, the rate counts new steps
            bar.initial = trainer.global_step
            bar.n = trainer.global_step
            bar.refresh()
            self._run_started = True
        bar.set_description(f"Epoch {trainer.current_epoch}")

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        bar = self.train_progress_bar
        n = trainer.global_step
        if bar is not None and n != bar.n and self._should_update(n, bar.total):
            bar.n = n
            bar.refresh()
            bar.set_postfix(self.get_metrics(trainer, pl_module))

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not self.train_progress_bar.disable:
            self.train_progress_bar.set_postfix(self.get_metrics(trainer, pl_module))
