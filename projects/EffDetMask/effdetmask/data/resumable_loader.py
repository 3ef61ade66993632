"""A training DataLoader that resumes exactly where a checkpoint left it.

Three things make a resumed run see the same batches, with the same augmentations, as a run that was
never stopped:

* :class:`ResumableSampler` draws one permutation per ``(seed, epoch)``, shards it over the
  processes itself (Lightning's own sampler replacement is switched off) and can start mid-epoch.
* :class:`SeededSamples` seeds ``random``, ``numpy`` and ``torch`` from ``(seed, epoch, index)``
  before mapping a sample, so augmentation does not depend on worker count or RNG history.
* :class:`ResumableDataLoader` implements Lightning's ``state_dict``/``load_state_dict`` loader
  protocol. Lightning prefetches one batch ahead, so the loader's own count of yielded batches is
  one too many at save time; the state therefore stores the trainer's count of *processed*
  batches, read through ``progress_fn``.
"""

from __future__ import annotations

import random
from typing import Callable, Dict, Iterator, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, Sampler

__all__ = ["ResumableSampler", "SeededSamples", "ResumableDataLoader"]


def _rank_and_world() -> Tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class ResumableSampler(Sampler):
    """Yields ``(epoch, index)`` pairs: a seeded shuffle per epoch, sharded over processes.

    Every process gets ``ceil(len / world)`` samples (the permutation wraps around to even out
    the shards, as torch's DistributedSampler does), so all processes step the same number of times.
    """

    def __init__(self, num_samples: int, seed: int, shuffle: bool = True) -> None:
        if num_samples <= 0:
            raise ValueError("cannot sample from an empty dataset")
        self.num_samples = num_samples
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0
        self.start = 0  # samples of this process's shard to skip (resume mid-epoch)

    def set_epoch(self, epoch: int) -> None:
        # Lightning calls this at every epoch start; a resume sets epoch and start itself first.
        if epoch != self.epoch:
            self.epoch = epoch
            self.start = 0

    def _shard(self) -> Sequence[int]:
        rank, world = _rank_and_world()
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            order = torch.randperm(self.num_samples, generator=g).tolist()
        else:
            order = list(range(self.num_samples))
        per_rank = -(-self.num_samples // world)
        order = (order * (world + 1))[: per_rank * world]
        return order[rank::world]

    def __len__(self) -> int:
        return len(self._shard())

    def __iter__(self) -> Iterator[Tuple[int, int]]:
        epoch, shard, start = self.epoch, self._shard(), self.start
        self.start = 0
        for index in shard[start:]:
            yield epoch, index


class SeededSamples(Dataset):
    """Maps ``(epoch, index)`` to ``dataset[index]`` with every RNG seeded from the pair."""

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset = dataset
        self.seed = seed

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: Tuple[int, int]):
        epoch, index = key
        sample_seed = (self.seed * 1_000_003 + epoch * 10_007 + index) % (2**31)
        random.seed(sample_seed)
        np.random.seed(sample_seed)
        torch.manual_seed(sample_seed)
        return self.dataset[index]


class ResumableDataLoader(DataLoader):
    """DataLoader over a :class:`ResumableSampler` with Lightning's resumable-loader protocol.

    Args:
        progress_fn: returns ``(epoch, batches_processed_this_epoch)`` from the trainer.
    """

    def __init__(
        self,
        dataset: SeededSamples,
        sampler: ResumableSampler,
        batch_size: int,
        progress_fn: Optional[Callable[[], Tuple[int, int]]] = None,
        **kwargs,
    ) -> None:
        # Workers draw their base seed from this private generator, not the global torch RNG, so a
        # resumed run's RNG history matches the uninterrupted one (samples are seeded anyway).
        kwargs.setdefault("generator", torch.Generator().manual_seed(dataset.seed))
        super().__init__(dataset, batch_size=batch_size, sampler=sampler, **kwargs)
        self.progress_fn = progress_fn

    def state_dict(self) -> Dict[str, int]:
        epoch, processed = self.progress_fn() if self.progress_fn else (self.sampler.epoch, 0)
        return {"epoch": int(epoch), "batches_processed": int(processed)}

    def load_state_dict(self, state: Dict[str, int]) -> None:
        sampler: ResumableSampler = self.sampler  # type: ignore[assignment]
        epoch, processed = state["epoch"], state["batches_processed"]
        if processed >= len(self):  # saved at the very end of an epoch: resume at the next one
            epoch, processed = epoch + 1, 0
        sampler.epoch = epoch
        sampler.start = processed * (self.batch_size or 1)
