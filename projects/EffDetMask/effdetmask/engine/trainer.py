"""Builds the Lightning Trainer and runs training or evaluation from a config."""

from __future__ import annotations

import functools
import logging
import os
from datetime import timedelta
from typing import Dict, List

from lightning.pytorch import Trainer, seed_everything
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger

from ..data.build import build_test_loader, build_train_loader
from ..evaluation import COCOEvaluator
from ..modeling.weights import CheckpointError, load_torch_file, save_state_dict
from .callbacks import EvalResultsWriter, JSONLinesMetricsWriter, RunProgressBar, SkipSummary
from .class_metadata import training_class_metadata
from .defaults import LaunchSpec
from .lightning_module import EffDetMaskModule
from .visualize import write_visualizations

logger = logging.getLogger(__name__)

__all__ = [
    "build_trainer",
    "build_module",
    "train",
    "evaluate",
    "checkpoint_dir",
    "check_resume_checkpoint",
    "batches_done_in_epoch",
    "FINAL_WEIGHTS",
]

# safetensors: reading the final weights never unpickles anything (old model_final.pth files,
# and Lightning .ckpt files, still load through modeling.weights.read_state_dict)
FINAL_WEIGHTS = "model_final.safetensors"


def checkpoint_dir(cfg) -> str:
    return os.path.join(cfg.OUTPUT_DIR, "checkpoints")


def _evaluator_factory(cfg):
    def make(dataset_name: str) -> COCOEvaluator:
        return COCOEvaluator(
            dataset_name,
            output_dir=os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name),
            backend=cfg.TEST.EVALUATOR_BACKEND,
        )

    return make


def build_module(cfg) -> EffDetMaskModule:
    batch = cfg.TEST.IMS_PER_BATCH
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ValueError(
            f"TEST.IMS_PER_BATCH must be a positive integer (images per evaluation batch), "
            f"got {batch!r}"
        )
    return EffDetMaskModule(cfg, _evaluator_factory(cfg), list(cfg.DATASETS.TEST))


def batches_done_in_epoch(trainer: Trainer) -> int:
    """Training batches of the current epoch that have finished (their ``on_train_batch_end``
    included), resumed runs counting the batches before the checkpoint.

    The one Lightning loop internal the project reads: no public attribute tells it, and the
    resumable loader must know it exactly when a checkpoint is written (the fetcher has already
    taken the next batch). ``tests/engine/test_lightning_internals.py`` fails if Lightning moves it.
    """
    return int(trainer.fit_loop.epoch_loop.batch_progress.current.processed)


def _train_loader(cfg, module: EffDetMaskModule):
    def progress():
        return module.trainer.current_epoch, batches_done_in_epoch(module.trainer)

    return build_train_loader(cfg, progress_fn=progress)


def build_trainer(cfg, launch: LaunchSpec, *, max_epochs: int = -1) -> Trainer:
    """A Trainer with the project's hooks: checkpoints, metrics, TensorBoard, progress bar.

    ``checkpoints/best.ckpt`` (highest mask AP on the first test set) is kept only when the run
    validates while training (TEST.EVAL_PERIOD > 0); otherwise there is nothing to rank by.
    """
    launch.export_environment()
    os.makedirs(cfg.OUTPUT_DIR, exist_ok=True)
    periodic = ModelCheckpoint(
        dirpath=checkpoint_dir(cfg),
        filename="step{step:07d}",
        auto_insert_metric_name=False,
        every_n_train_steps=cfg.SOLVER.CHECKPOINT_PERIOD,
        save_top_k=-1,
        save_last=True,
    )
    callbacks = [
        periodic,
        JSONLinesMetricsWriter(cfg.OUTPUT_DIR),
        EvalResultsWriter(cfg.OUTPUT_DIR),
        LearningRateMonitor(logging_interval="step"),
        RunProgressBar(refresh_rate=1),
        SkipSummary(),
    ]
    if cfg.TEST.EVAL_PERIOD > 0 and cfg.DATASETS.TEST:
        tests = cfg.DATASETS.TEST
        monitor = "val/segm_AP" if len(tests) == 1 else f"val/{tests[0]}/segm_AP"
        callbacks.append(
            ModelCheckpoint(
                dirpath=checkpoint_dir(cfg),
                filename="best",
                monitor=monitor,
                mode="max",
                save_top_k=1,
                auto_insert_metric_name=False,
            )
        )
    eval_period = cfg.TEST.EVAL_PERIOD
    max_iter = cfg.SOLVER.MAX_ITER
    strategy = "ddp" if launch.world_size > 1 else "auto"
    return Trainer(
        accelerator=launch.accelerator,
        devices=launch.devices,
        num_nodes=launch.num_nodes,
        strategy=strategy,
        precision=cfg.SOLVER.PRECISION,
        max_steps=max_iter if max_iter > 0 else -1,
        max_time=timedelta(seconds=cfg.SOLVER.MAX_TIME_S) if cfg.SOLVER.MAX_TIME_S > 0 else None,
        max_epochs=(
            max_epochs if max_epochs > 0 else (None if max_iter > 0 else cfg.SOLVER.MAX_EPOCHS)
        ),
        accumulate_grad_batches=cfg.SOLVER.ACCUMULATE_GRAD_BATCHES,
        gradient_clip_val=cfg.SOLVER.CLIP_GRAD_NORM or None,
        gradient_clip_algorithm="norm",
        # validation runs during fit only when TEST.EVAL_PERIOD > 0 (train() then passes loaders)
        check_val_every_n_epoch=max(1, eval_period),
        num_sanity_val_steps=0,
        callbacks=callbacks,
        logger=TensorBoardLogger(cfg.OUTPUT_DIR, name="tensorboard", default_hp_metric=False),
        default_root_dir=cfg.OUTPUT_DIR,
        log_every_n_steps=1,
        use_distributed_sampler=False,  # ResumableSampler shards itself
        enable_model_summary=False,
        deterministic=False,
    )


def _test_loaders(cfg) -> List:
    return [build_test_loader(cfg, name) for name in cfg.DATASETS.TEST]


def check_resume_checkpoint(path: str) -> None:
    """Raise a clear error, before Lightning reads ``path``, when it is not a checkpoint that loads
    safely: empty (an interrupted save), truncated/corrupt, or pickling objects other than tensors
    and plain containers (never unpickled). The message names the file and what to do."""
    try:
        load_torch_file(path, mmap=True)  # weights_only=True; mmap: tensor data is not read
    except CheckpointError as e:
        raise CheckpointError(
            f"--resume: {e}. Delete {path} to start from scratch, or copy an earlier checkpoint "
            f"(step*.ckpt in {os.path.dirname(path)}) over it"
        ) from e


def train(cfg, launch: LaunchSpec, resume: bool = False) -> Dict:
    """Train, save ``model_final.safetensors``, evaluate on DATASETS.TEST; returns the eval
    results.

    With ``resume``, training continues from ``checkpoints/last.ckpt`` when it exists; the file is
    read with ``weights_only=True`` only (an unsafe or corrupt file is an error naming it).
    """
    ckpt_path = None
    last = os.path.join(checkpoint_dir(cfg), "last.ckpt")
    if resume:
        if os.path.isfile(last):
            check_resume_checkpoint(last)
            ckpt_path = last
            logger.info("resuming from %s", last)
        else:
            logger.warning("--resume: no checkpoint at %s, starting from scratch", last)
    seed_everything(cfg.SEED if cfg.SEED >= 0 else None, workers=True)
    module = build_module(cfg)
    trainer = build_trainer(cfg, launch)
    train_loader = _train_loader(cfg, module)
    # read when the optimiser is built, once fit has started the process group the loader shards
    # over; the step schedule counts its decays in epochs of this many batches
    module.train_batches_per_epoch = functools.partial(len, train_loader)
    for callback in trainer.callbacks:
        if isinstance(callback, SkipSummary):  # records skipped while loading the dataset
            callback.add_report(getattr(train_loader, "load_skip_report", None))
    val_loaders = _test_loaders(cfg) if cfg.TEST.EVAL_PERIOD > 0 else None
    trainer.fit(
        module,
        train_dataloaders=train_loader,
        val_dataloaders=val_loaders,
        ckpt_path=ckpt_path,
        # explicit: torch's default could be flipped to full unpickling by an environment variable
        weights_only=True,
    )
    if trainer.is_global_zero:
        final = os.path.join(cfg.OUTPUT_DIR, FINAL_WEIGHTS)
        # with the class names it predicts, so the demo draws this dataset's labels
        save_state_dict(module.model.state_dict(), final, metadata=training_class_metadata(cfg))
        logger.info("saved %s", final)
    results = run_evaluation(trainer, module, cfg)
    if trainer.is_global_zero and cfg.TEST.VIS_IMAGES > 0:
        write_visualizations(
            module.model,
            cfg.DATASETS.TEST[0],
            os.path.join(cfg.OUTPUT_DIR, "vis"),
            image_size=cfg.INPUT.SIZE,
            num_images=cfg.TEST.VIS_IMAGES,
            min_score=cfg.TEST.VIS_SCORE_THRESH,
            batch_size=cfg.TEST.IMS_PER_BATCH,
        )
    return results


def run_evaluation(trainer: Trainer, module: EffDetMaskModule, cfg) -> Dict:
    """Evaluates on every DATASETS.TEST entry through the trainer (gathers over processes)."""
    module.model.eval()
    trainer.validate(module, dataloaders=_test_loaders(cfg), verbose=False)
    results = module.last_eval_results
    for name, per_task in results.items():
        for task, metrics in per_task.items():
            if not isinstance(metrics, dict):
                continue
            extra = "".join(f", {k} = {metrics[k]}" for k in ("AP_IOU_F1", "ATTR_F1")
                            if k in metrics)
            logger.info("%s %s AP = %s%s", name, task, metrics.get("AP"), extra)
    return results


def evaluate(cfg, launch: LaunchSpec) -> Dict:
    """``--eval-only``: load MODEL.WEIGHTS (done by build_model) and evaluate."""
    module = build_module(cfg)
    trainer = build_trainer(cfg, launch)
    return run_evaluation(trainer, module, cfg)
