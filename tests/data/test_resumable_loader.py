"""The resumable sampler and loader: same order after a resume, shards cover the data."""

from unittest import mock

import torch

from effdetmask.data.resumable_loader import ResumableDataLoader, ResumableSampler, SeededSamples


class RandomAug(torch.utils.data.Dataset):
    """Returns the index plus a draw from the global torch RNG (stands in for augmentation)."""

    def __len__(self):
        return 10

    def __getitem__(self, i):
        return i, float(torch.rand(()))


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
