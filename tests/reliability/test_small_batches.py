"""A training epoch never ends in a batch of one image: trainable BatchNorm cannot normalise a
1x1 pyramid level of a single image (INPUT.SIZE 128: P7 is 1x1), and no sample is dropped."""

from pathlib import Path

import pytest

from effdetmask.config import setup_cfg
from effdetmask.data.resumable_loader import ResumableSampler
from effdetmask.engine.defaults import LaunchSpec
from effdetmask.engine.trainer import train

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py
TINY = str(Path(__file__).resolve().parents[2] / "configs" / "quick_schedules"
           / "effdet_d0_tiny_test.yaml")


@pytest.mark.parametrize("num_samples", range(1, 13))
@pytest.mark.parametrize("batch_size", [2, 3, 4])
def test_no_shard_ends_in_a_single_sample_batch(num_samples, batch_size):
    sampler = ResumableSampler(num_samples, seed=0, batch_size=batch_size)
    shard = [index for _, index in sampler]
    assert len(shard) == len(sampler) >= num_samples
    assert len(shard) % batch_size != 1
    assert set(shard) == set(range(num_samples))  # every sample is still seen each epoch


def test_training_with_a_remainder_of_one_image(tmp_path):
    """5 images in batches of 2 at 128 px with trainable BatchNorm: the third batch used to hold
    one image and crash in BatchNorm ("Expected more than 1 value per channel")."""
    cfg = setup_cfg(TINY, [
        "OUTPUT_DIR", str(tmp_path / "run"), "DATASETS.ROOT", str(tmp_path / "data"),
        "DATASETS.SYNTH.NUM_TRAIN", "5", "DATASETS.TEST", "()", "TEST.VIS_IMAGES", "0",
        "DATALOADER.NUM_WORKERS", "0", "SOLVER.IMS_PER_BATCH", "2", "SOLVER.MAX_ITER", "3",
        "INPUT.SIZE", "128", "MODEL.FREEZE_BN", "False"])
    launch = LaunchSpec(accelerator="cpu", devices=1, num_nodes=1, node_rank=0,
                        master_addr="127.0.0.1", master_port=29541)
    train(cfg, launch)
    assert (tmp_path / "run" / "model_final.safetensors").is_file()
