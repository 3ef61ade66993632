"""A training DataLoader that resumes exactly where a checkpoint left it.

Three things make a resumed run see the same batches, with the same augmentations, as a run that was
never stopped:

* :class:`ResumableSampler` draws one permutation per ``(seed, epoch)``, shards it over the
  processes itself (Lightning's own sampler replacement is switched off) and can start mid-epoch.
* :class:`SeededSamples` hands every sample its own ``torch.Generator`` seeded from
  ``(seed, epoch, index)``, so augmentation does not depend on worker count or RNG history, and
  no process-global RNG is touched (with ``NUM_WORKERS=0`` the samples are mapped in the main
  process, whose RNGs the model's own sampling uses).
* :class:`ResumableDataLoader` implements Lightning's ``state_dict``/``load_state_dict`` loader
  protocol. Lightning prefetches one batch ahead, so the loader's own count of yielded batches is
  one too many at save time; the state therefore stores the trainer's count of *processed*
  batches, read through ``progress_fn``.

Worker errors: torch re-creates an exception raised in a DataLoader worker from its message alone,
so a type whose constructor takes other arguments arrives as a bare ``RuntimeError`` and every
attribute is lost. :class:`ErrorForwardingDataLoader` (the base of :class:`ResumableDataLoader`, and
the test loader's class) catches the exception in the worker, sends it pickled as a
:class:`WorkerError` and raises it again, intact, in the main process, with the worker's traceback
as its ``__cause__``.
"""

from __future__ import annotations

import os
import pickle
import traceback
from typing import Any, Callable, Dict, Iterator, Optional, Sequence, Tuple

import torch
import torch.distributed as dist
from torch.utils.data import (
    DataLoader,
    Dataset,
    Sampler,
    default_collate,
    default_convert,
    get_worker_info,
)
from torch.utils.data.dataloader import _MultiProcessingDataLoaderIter

__all__ = [
    "ResumableSampler",
    "SeededSamples",
    "ResumableDataLoader",
    "ErrorForwardingDataLoader",
    "WorkerError",
]


def _rank_and_world() -> Tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class ResumableSampler(Sampler):
    """Yields ``(epoch, index)`` pairs: a seeded shuffle per epoch, sharded over processes.

    Every process gets ``ceil(len / world)`` samples (the permutation wraps around to even out
    the shards, as torch's DistributedSampler does), so all processes step the same number of times.
    With ``batch_size``, a shard whose last batch would hold a single sample gets one more (the
    next of the wrapped permutation): training BatchNorm cannot normalise a batch of one image on
    a 1x1 pyramid level, and no sample is dropped.
    """

    def __init__(self, num_samples: int, seed: int, shuffle: bool = True,
                 batch_size: int = 0) -> None:
        if num_samples <= 0:
            raise ValueError("cannot sample from an empty dataset")
        self.num_samples = num_samples
        self.seed = seed
        self.shuffle = shuffle
        self.batch_size = batch_size
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
        if self.batch_size > 1 and per_rank % self.batch_size == 1:
            per_rank += 1
        order = (order * (per_rank * world // self.num_samples + 1))[: per_rank * world]
        return order[rank::world]

    def __len__(self) -> int:
        return len(self._shard())

    def __iter__(self) -> Iterator[Tuple[int, int]]:
        epoch, shard, start = self.epoch, self._shard(), self.start
        self.start = 0
        for index in shard[start:]:
            yield epoch, index


class SeededSamples(Dataset):
    """Maps ``(epoch, index)`` to sample ``index`` drawn with a generator seeded from the pair.

    The wrapped dataset gets a fresh ``torch.Generator`` seeded from ``(seed, epoch, index)``
    through its ``get_sample(index, generator)`` method
    (:class:`~effdetmask.data.build.MapDataset` passes it on to the mapper's augmentation); a
    dataset without that method is indexed as it is. No process-global RNG is seeded or drawn from.
    """

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset = dataset
        self.seed = seed

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def generator(self, epoch: int, index: int) -> torch.Generator:
        """The generator sample ``index`` of ``epoch`` is drawn with."""
        sample_seed = (self.seed * 1_000_003 + epoch * 10_007 + index) % (2**31)
        return torch.Generator().manual_seed(sample_seed)

    def __getitem__(self, key: Tuple[int, int]):
        epoch, index = key
        get_sample = getattr(self.dataset, "get_sample", None)
        if get_sample is None:
            return self.dataset[index]
        return get_sample(index, self.generator(epoch, index))


class _RemoteTraceback(Exception):
    """Carries a worker's formatted traceback; set as the re-raised exception's ``__cause__``."""

    def __init__(self, tb: str) -> None:
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return self.tb


class WorkerError:
    """An exception raised in a DataLoader worker, sent to the main process as data.

    The exception is pickled in the worker and checked to unpickle there; one that cannot be
    rebuilt is replaced by a ``RuntimeError`` that keeps its type name and message.
    """

    def __init__(self, exc: BaseException, key: Any) -> None:
        info = get_worker_info()
        self.where = (f"DataLoader worker {info.id if info else '?'} (pid {os.getpid()}), "
                      f"sample {key!r}")
        self.traceback = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        try:
            self.payload: Optional[bytes] = pickle.dumps(exc)
            pickle.loads(self.payload)
        except Exception as e:  # whatever breaks pickling: send the text
            self.payload = None
            self.fallback = (f"{type(exc).__module__}.{type(exc).__qualname__}: {exc} (the "
                             f"exception could not be sent from the worker intact: {e})")

    def exception(self) -> BaseException:
        """The worker's exception, rebuilt, with the worker's traceback as ``__cause__``."""
        exc = (pickle.loads(self.payload) if self.payload is not None
               else RuntimeError(self.fallback))
        exc.__cause__ = _RemoteTraceback(f"\n\nraised in {self.where}:\n\n{self.traceback}")
        return exc


class _CatchErrors(Dataset):
    """Worker side: returns a :class:`WorkerError` instead of raising (attributes pass through)."""

    def __init__(self, dataset: Dataset) -> None:
        self.inner = dataset

    def __len__(self) -> int:
        return len(self.inner)  # type: ignore[arg-type]

    def __getattr__(self, name: str) -> Any:
        if name == "inner":  # not set yet (unpickling): avoid recursing
            raise AttributeError(name)
        return getattr(self.inner, name)

    def __getitem__(self, key: Any) -> Any:
        try:
            return self.inner[key]
        except Exception as e:
            return WorkerError(e, key)


class _PassErrors:
    """Worker side: a batch holding a :class:`WorkerError` becomes that error (not collated)."""

    def __init__(self, collate_fn: Callable[[Any], Any]) -> None:
        self.collate_fn = collate_fn

    def __call__(self, samples: Any) -> Any:
        if isinstance(samples, WorkerError):
            return samples
        if isinstance(samples, list):
            for s in samples:
                if isinstance(s, WorkerError):
                    return s
        return self.collate_fn(samples)


class _ForwardingIter(_MultiProcessingDataLoaderIter):
    def _next_data(self) -> Any:
        data = super()._next_data()
        if isinstance(data, WorkerError):
            raise data.exception()
        return data


class ErrorForwardingDataLoader(DataLoader):
    """A DataLoader whose worker exceptions reach the main process intact (type, attributes).

    With ``num_workers > 0`` the dataset is wrapped (its attributes stay reachable through
    ``loader.dataset``) and ``collate_fn`` too; with no workers nothing changes.
    """

    def __init__(self, dataset: Dataset, batch_size: Optional[int] = 1, *,
                 num_workers: int = 0, collate_fn: Optional[Callable] = None, **kwargs) -> None:
        if num_workers > 0:
            if not isinstance(dataset, _CatchErrors):
                dataset = _CatchErrors(dataset)
            if not isinstance(collate_fn, _PassErrors):
                # DataLoader's own default: default_collate when batching, else default_convert
                auto = batch_size is not None or kwargs.get("batch_sampler") is not None
                collate_fn = _PassErrors(collate_fn or (default_collate if auto
                                                        else default_convert))
        super().__init__(dataset, batch_size=batch_size, num_workers=num_workers,
                         collate_fn=collate_fn, **kwargs)

    def _get_iterator(self):  # type: ignore[override]
        if self.num_workers == 0:
            return super()._get_iterator()
        self.check_worker_number_rationality()
        return _ForwardingIter(self)


class ResumableDataLoader(ErrorForwardingDataLoader):
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
