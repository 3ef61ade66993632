"""DDP on CPU: two gloo processes train the same optimiser steps as one process with twice the
images per step, and end with the same weights; the ranks receive disjoint shards.

Both runs go through the real engine (``train_net.py --num-cpu-processes 2`` for DDP, the same
``train()`` in-process for the reference) from the same MODEL.WEIGHTS. What DDP promises is the
mean of the per-process gradients, i.e. the mean of the per-process losses, and the reference
takes the same two images per optimiser step as two accumulated batches of one image
(SOLVER.ACCUMULATE_GRAD_BATCHES 2: each loss / 2, gradients summed). A single forward of both
images would not be the same optimisation, for reasons of the losses rather than of DDP: effdet
normalises the focal and box losses by the positives of the whole batch (+1), the mask loss
averages over the batch's RoIs, and training BatchNorm normalises over the batch. So:

* BatchNorm: frozen with the statistics loaded from MODEL.WEIGHTS (MODEL.FREEZE_BN True), so an
  image's features do not depend on the other images of its batch;
* randomness inside the training step is switched off (stochastic depth, jittered ground-truth
  RoIs, and RoIs from detections, whose sampling draws from the process's own RNG stream): the
  augmentations are seeded per (seed, epoch, index) by the loader, so they stay on.

Then rank ``r``'s image at step ``k`` is the reference's micro-batch ``2k + r`` and every gradient
is the same up to float summation order (measured: bit-identical final weights). The optimiser is
plain SGD, so a weight moves by the LR times its gradient: a gradient of the wrong scale (a sum
over the ranks instead of the mean) changes the result, where AdamW would normalise it away.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from effdetmask.config import setup_cfg
from effdetmask.data.build import build_train_dataset
from effdetmask.engine.defaults import LaunchSpec
from effdetmask.engine.lightning_module import EffDetMaskModule
from effdetmask.engine.trainer import train
from effdetmask.modeling import build_model
from effdetmask.modeling.weights import save_state_dict

REPO = Path(__file__).resolve().parents[2]
TINY = str(REPO / "configs" / "quick_schedules" / "effdet_d0_tiny_test.yaml")
FINAL = "model_final.safetensors"
NUM_TRAIN, STEPS = 8, 4  # one epoch: 4 images per rank, one per step
LR = 2e-7  # SGD without momentum: a weight moves by LR x its gradient (norms reach ~1e4)

# training_step records the image ids of every batch, per rank, then train_net.py's main runs:
# Lightning starts the second rank by running this same script again
RECORDING_TRAIN_NET = """
import json, os, sys
from effdetmask.engine.lightning_module import EffDetMaskModule

step = EffDetMaskModule.training_step

def recording_step(self, batch, batch_idx):
    with open(os.path.join(os.environ["RECORD_DIR"], f"rank{self.global_rank}.jsonl"), "a") as f:
        f.write(json.dumps([int(x["image_id"]) for x in batch]) + "\\n")
    return step(self, batch, batch_idx)

EffDetMaskModule.training_step = recording_step
sys.path.insert(0, os.environ["REPO"])
import train_net  # noqa: E402
train_net.main(train_net.default_argument_parser().parse_args())
"""


def _opts(out_dir, data_root, weights, ims_per_batch, accumulate):
    return [
        "OUTPUT_DIR", str(out_dir), "DATASETS.ROOT", str(data_root),
        "DATASETS.SYNTH.NUM_TRAIN", str(NUM_TRAIN), "DATASETS.TEST", "()", "TEST.VIS_IMAGES", "0",
        "MODEL.WEIGHTS", str(weights), "MODEL.FREEZE_BN", "True",
        "MODEL.BACKBONE.DROP_PATH_RATE", "0.0",
        "MODEL.ROI_HEADS.GT_JITTER_COPIES", "0",
        "MODEL.ROI_HEADS.TRAIN_SCORE_THRESH", "1.0",
        "SOLVER.IMS_PER_BATCH", str(ims_per_batch),
        "SOLVER.ACCUMULATE_GRAD_BATCHES", str(accumulate),
        "SOLVER.MAX_ITER", str(STEPS), "SOLVER.CHECKPOINT_PERIOD", "1000",
        "SOLVER.OPTIMIZER", "SGD", "SOLVER.MOMENTUM", "0.0", "SOLVER.BASE_LR", str(LR),
        "SOLVER.CLIP_GRAD_NORM", "0.0", "SOLVER.WEIGHT_DECAY", "0.0",
    ]


def _weights_with_statistics(path, data_root):
    """A tiny d0 whose BatchNorm statistics are those of one training-mode pass over the training
    images (a frozen BatchNorm with the statistics of a fresh layer would be the identity)."""
    cfg = setup_cfg(TINY, ["DATASETS.ROOT", str(data_root),
                           "DATASETS.SYNTH.NUM_TRAIN", str(NUM_TRAIN)])
    torch.manual_seed(0)
    model = build_model(cfg).train()
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.momentum = None  # cumulative average: one pass sets the batch's statistics
    dataset = build_train_dataset(cfg)
    with torch.no_grad():  # a training-mode forward updates the running statistics
        model([dataset[i] for i in range(NUM_TRAIN)])
    save_state_dict(model.state_dict(), str(path))


def _records(folder, name):
    return [json.loads(line) for line in (folder / name).read_text().splitlines()]


def test_two_processes_train_like_one_with_twice_the_images_per_step(tmp_path, monkeypatch,
                                                                     free_port, one_thread):
    data_root = tmp_path / "datasets"
    weights = tmp_path / "start.safetensors"
    _weights_with_statistics(weights, data_root)

    # two processes, one image each per step
    ddp_out, record = tmp_path / "ddp", tmp_path / "record"
    record.mkdir()
    script = tmp_path / "recording_train_net.py"
    script.write_text(RECORDING_TRAIN_NET)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", RECORD_DIR=str(record),
               REPO=str(REPO))
    env.pop("CUDA_VISIBLE_DEVICES", None)
    cmd = [sys.executable, str(script), "--config-file", TINY, "--num-gpus", "0",
           "--num-cpu-processes", "2", "--dist-url", f"tcp://127.0.0.1:{free_port()}",
           *_opts(ddp_out, data_root, weights, ims_per_batch=1, accumulate=1)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=REPO)
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"

    # one process, two accumulated batches of one image per step
    seen = []
    step = EffDetMaskModule.training_step

    def recording_step(self, batch, batch_idx):
        seen.append([int(x["image_id"]) for x in batch])
        return step(self, batch, batch_idx)

    monkeypatch.setattr(EffDetMaskModule, "training_step", recording_step)
    ref_out = tmp_path / "ref"
    cfg = setup_cfg(TINY, _opts(ref_out, data_root, weights, ims_per_batch=1, accumulate=2))
    train(cfg, LaunchSpec("cpu", devices=1, num_nodes=1, node_rank=0, master_addr="127.0.0.1",
                          master_port=free_port()))

    # the shards: disjoint, together the whole epoch, rank r's step k = micro-batch 2k + r
    ranks = [_records(record, f"rank{r}.jsonl") for r in (0, 1)]
    assert [len(r) for r in ranks] == [STEPS, STEPS] and len(seen) == 2 * STEPS
    ids = [set(i for batch in r for i in batch) for r in ranks]
    assert not ids[0] & ids[1]
    assert len(ids[0] | ids[1]) == NUM_TRAIN
    assert ranks[0] == seen[0::2] and ranks[1] == seen[1::2]
    rows = [json.loads(line) for line in (ddp_out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["phase"] == "train"] == list(range(1, STEPS + 1))

    start = load_file(str(weights))
    ddp, ref = load_file(str(ddp_out / FINAL)), load_file(str(ref_out / FINAL))
    assert ddp.keys() == ref.keys() and set(ref) <= set(start)  # frozen: no num_batches_tracked
    moved = max(float((ref[k] - start[k]).abs().max()) for k in ref)
    diff = {k: float((ddp[k] - ref[k]).abs().max()) for k in ref}
    worst = max(diff, key=diff.get)
    assert moved > 0  # the runs trained
    # equal up to float summation order: far closer than either run moved from the start
    assert diff[worst] <= 1e-3 * moved, (worst, diff[worst], moved)


@pytest.mark.parametrize("world", [2, 3])
def test_training_shards_are_disjoint_and_cover_each_epoch(monkeypatch, world):
    """The training sampler over 10 samples, as each rank of ``world`` sees it, two epochs."""
    from effdetmask.data import resumable_loader
    from effdetmask.data.resumable_loader import ResumableSampler

    sampler = ResumableSampler(10, seed=3, batch_size=2)
    for epoch in (0, 1):
        sampler.set_epoch(epoch)
        shards = []
        for rank in range(world):
            monkeypatch.setattr(resumable_loader, "_rank_and_world", lambda r=rank: (r, world))
            shards.append([index for _, index in sampler])
        per_rank = len(shards[0])
        assert all(len(s) == per_rank for s in shards)  # every rank steps as often
        # interleaved, the shards are one permutation of the epoch, followed by its first few
        # samples again (the wrap-around that evens out the shards): disjoint otherwise
        merged = [shards[r][j] for j in range(per_rank) for r in range(world)]
        assert sorted(merged[:10]) == list(range(10))
        assert merged[10:] == merged[:len(merged) - 10]
