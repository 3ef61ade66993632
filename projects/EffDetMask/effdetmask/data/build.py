"""Training and test data loaders: catalog (JPEG+JSON) or HDF5 cache -> mapper -> batches (lists).

Per-sample failures inside DataLoader workers become a :class:`SampleError` that names the file or
cache record; with ``DATASETS.SKIP_INVALID`` the sample is skipped (the next one is used instead)
and counted in that process's :class:`SkipReport`; the skips also travel with the next good
sample (key ``SKIPPED_KEY``) so that the trainer's ``SkipSummary`` counts the skips of every
DataLoader worker in the main process. Both loaders are
:class:`~effdetmask.data.resumable_loader.ErrorForwardingDataLoader` s, so an exception raised in a
worker reaches the main process intact (type, message naming the sample, attributes).
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import torch
from torch.utils.data import Dataset, Sampler

from effdetmask.data.builtin import register_all_from_cfg
from effdetmask.data.catalog import DatasetCatalog
from effdetmask.data.hdf5_cache import CachedDataset
from effdetmask.data.mapper import DatasetMapper, trivial_batch_collator
from effdetmask.data.resumable_loader import (
    ErrorForwardingDataLoader,
    ResumableDataLoader,
    ResumableSampler,
    SeededSamples,
    _rank_and_world,
)
from effdetmask.data.validation import SkipReport, collect_skips

logger = logging.getLogger(__name__)

__all__ = [
    "get_detection_dataset_dicts",
    "MapDataset",
    "SKIPPED_KEY",
    "ShardedSequentialSampler",
    "SampleError",
    "build_train_dataset",
    "build_train_loader",
    "build_test_loader",
]

_MAX_CONSECUTIVE_SKIPS = 100  # a dataset that is bad almost everywhere should fail, not spin


class SampleError(RuntimeError):
    """A sample that could not be read or mapped; the message names the file/record.

    One message argument, so it pickles as is (DataLoader workers send it to the main process).
    """


def get_detection_dataset_dicts(names: Union[str, Sequence[str]],
                                skip_invalid: bool = False) -> List[Dict[str, Any]]:
    """Concatenate the dataset dicts of registered datasets.

    Args:
        names: registered dataset name(s).
        skip_invalid: drop dicts without the keys every consumer needs (instead of raising).
    Returns:
        dataset dicts (``docs/interfaces.md``), in catalog order.
    """
    names = [names] if isinstance(names, str) else list(names)
    if not names:
        raise ValueError("no dataset names given")
    dicts: List[Dict[str, Any]] = []
    report = SkipReport(",".join(names))
    for name in names:
        num_annotations = 0
        for d in DatasetCatalog.get(name):
            missing = [k for k in ("file_name", "height", "width", "image_id") if k not in d]
            if missing:
                rec = d.get("file_name", d.get("image_id"))
                msg = f"dataset {name!r}: record {rec} lacks {missing}"
                if not skip_invalid:
                    raise ValueError(msg)
                report.add("malformed record", msg)
                continue
            num_annotations += len(d.get("annotations") or [])
            dicts.append(d)
        if num_annotations == 0:
            # images without annotations train as negatives, but a dataset with none at all would
            # train silently with zero box and mask losses
            raise ValueError(f"dataset {name!r} has no annotations at all (no image has an "
                             "instance): check its annotation file")
    if report.total:
        report.log_summary(logger)
    if not dicts:
        raise ValueError(f"datasets {names} hold no usable images")
    return dicts


SKIPPED_KEY = "skipped_samples"


class ShardedSequentialSampler(Sampler):
    """In-order indices of this process's shard: rank ``r`` of ``w`` gets ``r, r + w, ...``.

    Shards are disjoint and together cover the dataset; a shard that is one short is padded with
    the dataset's first index so that every process runs the same number of batches (the
    evaluator keys predictions by image id, so the repeat counts once). The process group is read
    at iteration time: the loader is built before Lightning starts it.
    """

    def __init__(self, num_samples: int) -> None:
        self.num_samples = num_samples

    def _shard(self) -> List[int]:
        rank, world = _rank_and_world()
        shard = list(range(rank, self.num_samples, world))
        per_rank = -(-self.num_samples // world)
        return shard + [0] * (per_rank - len(shard)) if self.num_samples else shard

    def __len__(self) -> int:
        return len(self._shard())

    def __iter__(self) -> Iterator[int]:
        return iter(self._shard())


class MapDataset(Dataset):
    """``dataset[i]`` passed through ``mapper``, with errors that name the sample.

    Args:
        dataset: a list of dataset dicts or a :class:`CachedDataset`.
        mapper: callable producing the model sample; ``mapper(item, generator=g)`` when a
            generator is given (:meth:`get_sample`, the training loader), else ``mapper(item)``.
        skip_invalid: on a bad sample, log, count and return the next good one instead of raising.
    """

    def __init__(self, dataset: Any, mapper: Callable[[Any], Dict[str, Any]],
                 skip_invalid: bool = False) -> None:
        self.dataset = dataset
        self.mapper = mapper
        self.skip_invalid = skip_invalid
        self.report = SkipReport("samples")
        self.load_report: Optional[SkipReport] = None  # records skipped when loading the source

    def __len__(self) -> int:
        return len(self.dataset)

    def _describe(self, i: int) -> str:
        if isinstance(self.dataset, CachedDataset):
            return f"{self.dataset.path}: record {i}"
        item = self.dataset[i]
        return f"{item.get('file_name', '?')} (image_id {item.get('image_id', '?')})"

    def __getitem__(self, index: int) -> Dict[str, Any]:
        return self.get_sample(index)

    def get_sample(self, index: int, generator: Optional[torch.Generator] = None
                   ) -> Dict[str, Any]:
        """Sample ``index`` (or the next good one), its augmentation drawn from ``generator``
        (:class:`~effdetmask.data.resumable_loader.SeededSamples` passes one per sample)."""
        kwargs = {} if generator is None else {"generator": generator}
        skipped: List[Tuple[str, str]] = []
        for attempt in range(_MAX_CONSECUTIVE_SKIPS):
            i = (index + attempt) % len(self.dataset)
            try:
                sample = self.mapper(self.dataset[i], **kwargs)
            except Exception as e:  # any failure: name the sample and say what went wrong
                msg = f"{self._describe(i)}: {type(e).__name__}: {e}"
                if not self.skip_invalid:
                    raise SampleError(f"cannot load sample {msg}") from e
                self.report.add(type(e).__name__, msg)
                skipped.append((type(e).__name__, msg))
                continue
            if skipped:
                # this process's report may live in a DataLoader worker: the skips travel with the
                # sample to the main process, where the trainer counts them (SkipSummary)
                sample = dict(sample)
                sample[SKIPPED_KEY] = skipped
            return sample
        raise SampleError(f"{_MAX_CONSECUTIVE_SKIPS} consecutive bad samples from index {index}; "
                          f"{self.report.summary()}")


def _source(cfg: Any, names: Sequence[str], use_cache: bool) -> Any:
    if use_cache and cfg.DATASETS.TRAIN_CACHE:
        ds = CachedDataset(cfg.DATASETS.TRAIN_CACHE)
        if ds.size != cfg.INPUT.SIZE:
            logger.warning("cache %s was built at size %d but INPUT.SIZE is %d: images and masks "
                           "are resized again", ds.path, ds.size, cfg.INPUT.SIZE)
        return ds
    register_all_from_cfg(cfg)  # built-ins follow the config's root and synth parameters
    return get_detection_dataset_dicts(names, skip_invalid=cfg.DATASETS.SKIP_INVALID)


def build_train_dataset(cfg: Any) -> MapDataset:
    """The mapped training set: ``DATASETS.TRAIN_CACHE`` when set, else ``DATASETS.TRAIN``.

    The records skipped while loading are counted in the result's ``load_report``.
    """
    load_report = SkipReport("training data (loading)")
    with collect_skips(load_report):
        source = _source(cfg, cfg.DATASETS.TRAIN, True)
    if load_report.total:
        load_report.log_summary(logger)
    dataset = MapDataset(source, DatasetMapper.from_config(cfg, True),
                         skip_invalid=cfg.DATASETS.SKIP_INVALID)
    dataset.load_report = load_report
    return dataset


def build_train_loader(
    cfg: Any, progress_fn: Optional[Callable[[], Tuple[int, int]]] = None
) -> ResumableDataLoader:
    """The training loader: seeded shuffle, seeded augmentation, sharded over processes, resumable.

    Batches are lists of ``SOLVER.IMS_PER_BATCH`` mapper outputs. Each sample's augmentation draws
    from a generator seeded from ``(SEED, epoch, index)`` (see
    :mod:`effdetmask.data.resumable_loader`), so the
    ``DATALOADER.NUM_WORKERS`` worker processes can stay alive between epochs without changing
    what a resumed run sees. ``progress_fn`` (the trainer's ``(epoch, batches processed)``) makes
    the loader's state exact at checkpoint time.
    """
    dataset = build_train_dataset(cfg)
    seed = cfg.SEED if cfg.SEED >= 0 else 0
    workers = cfg.DATALOADER.NUM_WORKERS
    loader = ResumableDataLoader(
        SeededSamples(dataset, seed),
        ResumableSampler(len(dataset), seed=seed, shuffle=True,
                         batch_size=cfg.SOLVER.IMS_PER_BATCH),
        batch_size=cfg.SOLVER.IMS_PER_BATCH,
        progress_fn=progress_fn,
        num_workers=workers,
        persistent_workers=workers > 0,
        collate_fn=trivial_batch_collator,
        drop_last=False,
    )
    loader.load_skip_report = dataset.load_report  # the trainer's SkipSummary counts these too
    return loader


def build_test_loader(cfg: Any, dataset_name: str) -> ErrorForwardingDataLoader:
    """In-order loader over one registered dataset (JPEG+JSON, no augmentation)."""
    dataset = MapDataset(_source(cfg, [dataset_name], False), DatasetMapper.from_config(cfg, False),
                         skip_invalid=cfg.DATASETS.SKIP_INVALID)
    workers = cfg.DATALOADER.NUM_WORKERS
    # each process evaluates its own shard; COCOEvaluator.evaluate gathers the predictions
    return ErrorForwardingDataLoader(dataset, batch_size=cfg.TEST.IMS_PER_BATCH,
                                     sampler=ShardedSequentialSampler(len(dataset)),
                                     num_workers=workers,
                                     persistent_workers=workers > 0,
                                     collate_fn=trivial_batch_collator)
