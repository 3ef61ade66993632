"""The resumable sampler and loader: same order after a resume, shards cover the data."""

import random
from unittest import mock

import numpy as np
import torch

from effdetmask.data.build import MapDataset
from effdetmask.data.resumable_loader import ResumableDataLoader, ResumableSampler, SeededSamples


class RandomAug(torch.utils.data.Dataset):
    """Returns the index plus a draw from the sample's generator (stands in for augmentation)."""

    def __len__(self):
        return 10

    def __getitem__(self, i):
        return self.get_sample(i)

    def get_sample(self, i, generator=None):
        return i, float(torch.rand((), generator=generator))


def _global_rng_states():
    return random.getstate(), np.random.get_state()[1].tolist(), torch.get_rng_state()


def _same_states(a, b):
    return a[0] == b[0] and a[1] == b[1] and torch.equal(a[2], b[2])


def _loader(progress):
    dataset = SeededSamples(RandomAug(), seed=3)
    return ResumableDataLoader(
        dataset, ResumableSampler(10, seed=3), batch_size=3, progress_fn=progress, collate_fn=list
    )


def test_epochs_differ_and_repeat():
    sampler = ResumableSampler(10, seed=1)
    first = list(sampler)
    assert sorted(i for _, i in first) == list(range(10))
    sampler.set_epoch(1)
    second = list(sampler)
    assert [i for _, i in first] != [i for _, i in second]
    sampler.set_epoch(0)
    assert list(sampler) == first


def test_resume_mid_epoch_yields_the_remaining_batches_with_same_augmentation():
    full = [b for b in _loader(lambda: (0, 0))]
    loader = _loader(lambda: (0, 2))
    state = loader.state_dict()
    resumed = _loader(None)
    resumed.load_state_dict(state)
    assert [b for b in resumed] == full[2:]


def test_samples_draw_from_their_own_generator_and_leave_global_rngs_alone():
    """With NUM_WORKERS=0 samples are mapped in the main process, whose RNGs the model's own
    sampling (training RoIs, jitter) draws from: seeding a sample must not reset them."""
    dataset = SeededSamples(RandomAug(), seed=3)
    torch.manual_seed(123)
    before = _global_rng_states()
    first = [dataset[(0, i)] for i in range(10)]
    assert _same_states(before, _global_rng_states())
    assert [dataset[(0, i)] for i in range(10)] == first  # same (epoch, index), same draw
    assert [dataset[(1, i)] for i in range(10)] != first


def test_map_dataset_hands_the_sample_generator_to_the_mapper():
    def mapper(item, generator=None):
        return {"x": item["x"], "draw": float(torch.rand((), generator=generator))}

    seeded = SeededSamples(MapDataset([{"x": 0}, {"x": 1}], mapper), seed=5)
    expected = float(torch.rand((), generator=seeded.generator(2, 1)))
    before = _global_rng_states()
    assert seeded[(2, 1)] == {"x": 1, "draw": expected}
    assert _same_states(before, _global_rng_states())


def test_state_at_epoch_end_resumes_at_next_epoch():
    loader = _loader(None)
    loader.load_state_dict({"epoch": 0, "batches_processed": len(loader)})
    assert loader.sampler.epoch == 1 and loader.sampler.start == 0


def test_shards_over_processes_cover_everything_evenly():
    shards = []
    for rank in range(3):
        with mock.patch("effdetmask.data.resumable_loader._rank_and_world", return_value=(rank, 3)):
            shards.append([i for _, i in ResumableSampler(10, seed=0)])
    assert len({len(s) for s in shards}) == 1
    assert set().union(*map(set, shards)) == set(range(10))
