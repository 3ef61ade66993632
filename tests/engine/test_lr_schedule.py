"""The learning-rate schedule as training applies it: epochs of the step schedule, warm-up, plateau.

The real runs train the tiny d0 config in-process (8 images, batch 2: 4 batches per epoch) and
read the learning rate that LearningRateMonitor logged for every optimiser step from
``metrics.jsonl``.
"""

import json
import math
from functools import partial
from pathlib import Path

import pytest

from effdetmask.config import setup_cfg
from effdetmask.data import resumable_loader
from effdetmask.data.resumable_loader import ResumableDataLoader, ResumableSampler, SeededSamples
from effdetmask.engine.defaults import LaunchSpec
from effdetmask.engine.lightning_module import EffDetMaskModule
from effdetmask.engine.solver import build_lr_scheduler, build_optimizer
from effdetmask.engine.trainer import train

from .test_solver import _model, _record_lrs, _spec

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py: in-process training

REPO = Path(__file__).resolve().parents[2]
TINY = str(REPO / "configs" / "quick_schedules" / "effdet_d0_tiny_test.yaml")
NUM_TRAIN = 8
IMS_PER_BATCH = 2
GAMMA = 0.5


def _tiny_cfg(*opts):
    return setup_cfg(TINY, list(opts))


def _step_lr(base_lr, step, steps_per_epoch, step_size, gamma=GAMMA):
    """The step schedule's formula: decay by gamma every step_size epochs (step counts from 0)."""
    return base_lr * gamma ** (step // (steps_per_epoch * step_size))


# ------------------------------------------------------------------------------ real runs
@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return str(tmp_path_factory.mktemp("datasets"))


@pytest.mark.parametrize(
    "accumulate, length",
    [
        (1, ["SOLVER.MAX_ITER", "10"]),  # 2.5 epochs of 4 steps
        (1, ["SOLVER.MAX_ITER", "-1", "SOLVER.MAX_EPOCHS", "2"]),  # 8 steps
        (2, ["SOLVER.MAX_ITER", "5"]),  # 2 steps per epoch (4 batches, 2 per step)
    ],
    ids=["max_iter", "max_epochs", "max_iter_accumulate2"],
)
def test_step_schedule_decays_every_epoch_of_a_real_run(tmp_path, data_root, accumulate, length):
    step_size = 1
    cfg = _tiny_cfg(
        "OUTPUT_DIR",
        str(tmp_path),
        "DATASETS.ROOT",
        data_root,
        "DATASETS.SYNTH.NUM_TRAIN",
        str(NUM_TRAIN),
        "DATASETS.TEST",
        "()",  # no final evaluation
        "TEST.VIS_IMAGES",
        "0",
        "DATALOADER.NUM_WORKERS",
        "0",
        "SOLVER.IMS_PER_BATCH",
        str(IMS_PER_BATCH),
        "SOLVER.ACCUMULATE_GRAD_BATCHES",
        str(accumulate),
        "SOLVER.LR_SCHEDULER",
        "step",
        "SOLVER.STEP_SIZE",
        str(step_size),
        "SOLVER.GAMMA",
        str(GAMMA),
        "SOLVER.WARMUP_ITERS",
        "0",
        "SOLVER.CHECKPOINT_PERIOD",
        "1000",
        *length,
    )
    launch = LaunchSpec(
        "cpu", devices=1, num_nodes=1, node_rank=0, master_addr="127.0.0.1", master_port=29519
    )
    train(cfg, launch)

    steps_per_epoch = math.ceil(math.ceil(NUM_TRAIN / IMS_PER_BATCH) / accumulate)
    max_iter = cfg.SOLVER.MAX_ITER
    num_steps = max_iter if max_iter > 0 else cfg.SOLVER.MAX_EPOCHS * steps_per_epoch
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    records = [r for r in rows if r["phase"] == "train"]
    # one row per optimiser step, written after it (so "step" counts from 1)
    assert [r["step"] for r in records] == list(range(1, num_steps + 1))
    # the schedule's epochs are the trainer's epochs
    assert [r["epoch"] for r in records] == [
        (r["step"] - 1) // steps_per_epoch for r in records
    ]
    lr_keys = sorted(k for k in records[0] if k.startswith("lr-"))
    assert lr_keys, f"no learning rate logged: {sorted(records[0])}"
    for r in records:
        expected = _step_lr(cfg.SOLVER.BASE_LR, r["step"] - 1, steps_per_epoch, step_size)
        for key in lr_keys:
            assert r[key] == pytest.approx(expected, rel=1e-6), (r["step"], key)
    assert records[-1][lr_keys[0]] < cfg.SOLVER.BASE_LR  # long enough to see a decay at all


# --------------------------------------------------- configure_optimizers without a run
class _StubTrainer:
    """The Trainer attributes configure_optimizers may read, as Lightning has them then: the train
    loader is not loaded yet (``num_training_batches`` is inf); in epoch mode, asking for
    ``estimated_stepping_batches`` loads it, in MAX_ITER mode that returns ``max_steps``."""

    def __init__(self, loader_batches, accumulate, max_steps, max_epochs):
        self._loader_batches = loader_batches
        self.num_training_batches = float("inf")
        self.accumulate_grad_batches = accumulate
        self.max_steps = max_steps
        self.max_epochs = max_epochs

    @property
    def estimated_stepping_batches(self):
        if self.max_epochs == -1:
            return self.max_steps
        self.num_training_batches = self._loader_batches
        steps = math.ceil(self._loader_batches / self.accumulate_grad_batches) * self.max_epochs
        return min(steps, self.max_steps) if self.max_steps > 0 else steps


def _module(*opts, batches, accumulate, max_steps, max_epochs, set_batches=True):
    module = EffDetMaskModule(_tiny_cfg("SOLVER.WARMUP_ITERS", "0", "SOLVER.BASE_LR", "1.0", *opts))
    if set_batches:
        module.train_batches_per_epoch = batches
    module.trainer = _StubTrainer(batches(), accumulate, max_steps, max_epochs)
    return module


def _run_schedule(module, steps):
    config = module.configure_optimizers()
    return _record_lrs(config["optimizer"], config["lr_scheduler"]["scheduler"], steps)


@pytest.mark.parametrize(
    "batches, accumulate, max_steps, max_epochs, steps_per_epoch",
    [
        (5, 1, 40, -1, 5),  # MAX_ITER mode: steps per epoch from the loader, not MAX_ITER
        (5, 2, 40, -1, 3),  # ceil(5 / 2)
        (5, 2, -1, 4, 3),  # MAX_EPOCHS mode
    ],
    ids=["max_iter", "max_iter_accumulate2", "max_epochs_accumulate2"],
)
def test_configure_optimizers_counts_steps_per_epoch_from_the_loader(
    batches, accumulate, max_steps, max_epochs, steps_per_epoch
):
    module = _module(
        "SOLVER.LR_SCHEDULER",
        "step",
        "SOLVER.STEP_SIZE",
        "2",
        "SOLVER.GAMMA",
        str(GAMMA),
        batches=lambda: batches,
        accumulate=accumulate,
        max_steps=max_steps,
        max_epochs=max_epochs,
    )
    lrs = _run_schedule(module, 5 * steps_per_epoch)
    assert lrs == pytest.approx([_step_lr(1.0, s, steps_per_epoch, 2) for s in range(len(lrs))])


def test_cosine_spans_the_whole_run_in_either_mode():
    # MAX_ITER: 12 steps; MAX_EPOCHS: 3 epochs x ceil(7 / 2) = 12 steps
    for max_steps, max_epochs in [(12, -1), (-1, 3)]:
        module = _module(
            "SOLVER.LR_SCHEDULER",
            "cosine",
            batches=lambda: 7,
            accumulate=2,
            max_steps=max_steps,
            max_epochs=max_epochs,
        )
        lrs = _run_schedule(module, 13)
        assert lrs[6] == pytest.approx(0.5) and lrs[12] == pytest.approx(0.0, abs=1e-9)


def test_steps_per_epoch_are_counted_on_this_process_when_fit_has_started(monkeypatch):
    # The loader shards over the process group that trainer.fit starts; its length must be read
    # when the optimiser is built (rank 1 of 2 here: 4 of 8 samples, 2 batches), not before.
    loader = ResumableDataLoader(
        SeededSamples(list(range(NUM_TRAIN)), seed=0),
        ResumableSampler(NUM_TRAIN, seed=0),
        batch_size=IMS_PER_BATCH,
    )
    module = _module(
        "SOLVER.LR_SCHEDULER",
        "step",
        "SOLVER.STEP_SIZE",
        "1",
        "SOLVER.GAMMA",
        str(GAMMA),
        batches=partial(len, loader),
        accumulate=1,
        max_steps=20,
        max_epochs=-1,
    )
    monkeypatch.setattr(resumable_loader, "_rank_and_world", lambda: (1, 2))
    lrs = _run_schedule(module, 6)
    assert lrs == pytest.approx([1.0, 1.0, 0.5, 0.5, 0.25, 0.25])


def test_unknown_epoch_length_is_a_clear_error_for_the_step_schedule():
    module = _module(
        "SOLVER.LR_SCHEDULER",
        "step",
        batches=lambda: 4,
        accumulate=1,
        max_steps=40,
        max_epochs=-1,
        set_batches=False,
    )
    with pytest.raises(RuntimeError, match="train_batches_per_epoch"):
        module.configure_optimizers()


# ------------------------------------------------------------------- warm-up and plateau
def test_lambda_warmup_rises_linearly_then_follows_the_step_decay():
    spec = _spec(
        LR_SCHEDULER="step",
        BASE_LR=2.0,
        STEP_SIZE=1,
        GAMMA=GAMMA,
        WARMUP_ITERS=4,
        WARMUP_FACTOR=0.1,
    )
    opt = build_optimizer(spec, _model())
    sched = build_lr_scheduler(spec, opt, steps_per_epoch=6, total_steps=100)["scheduler"]
    lrs = []
    for _ in range(14):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    # linear from BASE_LR * WARMUP_FACTOR at step 0 to BASE_LR at step WARMUP_ITERS
    assert lrs[:5] == pytest.approx([0.2, 0.65, 1.1, 1.55, 2.0])
    # then the decay alone: x0.5 at every epoch of 6 steps
    assert lrs[4:] == pytest.approx([2.0, 2.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.5, 0.5])


def _plateau_lrs(monitor, values, patience=2):
    spec = _spec(
        LR_SCHEDULER="plateau",
        BASE_LR=1.0,
        PLATEAU_FACTOR=0.5,
        PLATEAU_PATIENCE=patience,
        PLATEAU_MONITOR=monitor,
        WARMUP_ITERS=0,
    )
    opt = build_optimizer(spec, _model())
    config = build_lr_scheduler(spec, opt, steps_per_epoch=5, total_steps=100)
    assert config["monitor"] == monitor and config["interval"] == "epoch"
    lrs = []
    for value in values:
        config["scheduler"].step(value)
        lrs.append(opt.param_groups[0]["lr"])
    return lrs


@pytest.mark.parametrize(
    "monitor, improving, stalled",
    [
        ("train/loss_smooth", [5.0, 4.0, 3.0, 2.0, 1.0, 0.5], [5.0, 5.0, 5.2, 5.1, 5.0]),
        ("val/segm_AP", [10.0, 11.0, 12.0, 13.0, 14.0, 15.0], [10.0, 10.0, 9.0, 9.5, 10.0]),
    ],
    ids=["loss_min", "ap_max"],
)
def test_plateau_reduces_after_patience_plus_one_stalled_epochs(monitor, improving, stalled):
    # an improving metric (down for a loss, up for AP) never reduces the LR
    assert _plateau_lrs(monitor, improving) == pytest.approx([1.0] * len(improving))
    # the first value sets the best; PATIENCE (2) non-improving epochs are tolerated, the third
    # reduces, and the count starts over
    assert _plateau_lrs(monitor, stalled) == pytest.approx([1.0, 1.0, 1.0, 0.5, 0.5])
    # the mode is not reversed: the other direction is not an improvement
    reversed_trend = list(reversed(improving))
    assert _plateau_lrs(monitor, reversed_trend) == pytest.approx([1.0, 1.0, 1.0, 0.5, 0.5, 0.5])
