"""Data loaders: batches from JSON and from the cache with workers; bad samples named or skipped."""

import os

import pytest
import torch

from effdetmask.config import get_cfg
from effdetmask.data.build import (
    MapDataset,
    SampleError,
    build_test_loader,
    build_train_loader,
    get_detection_dataset_dicts,
)
from effdetmask.data.catalog import DatasetCatalog
from effdetmask.data.fashionpedia import load_fashionpedia_json
from effdetmask.data.hdf5_cache import build_cache
from effdetmask.data.mapper import DatasetMapper
from effdetmask.data.synthetic import ensure_fashion_synth
from effdetmask.data.taxonomy import attribute_id_to_index

NAME = "test_build_synth"


@pytest.fixture(scope="module")
def cfg(tmp_path_factory):
    path = ensure_fashion_synth(str(tmp_path_factory.mktemp("synth")), "train", 6, 128, seed=4)
    if NAME in DatasetCatalog:
        DatasetCatalog.remove(NAME)
    DatasetCatalog.register(NAME, lambda: load_fashionpedia_json(path, os.path.dirname(path)))
    c = get_cfg()
    c.DATASETS.TRAIN, c.DATASETS.TEST = (NAME,), (NAME,)
    c.INPUT.SIZE, c.SOLVER.IMS_PER_BATCH, c.TEST.IMS_PER_BATCH = 128, 2, 3
    c.DATALOADER.NUM_WORKERS = 2
    yield c
    DatasetCatalog.remove(NAME)


def _check(batch, size):
    assert isinstance(batch, list) and batch
    for s in batch:
        assert s["image"].shape == (3, size, size) and s["image"].dtype == torch.uint8
        assert s["instances"]["masks"].shape[1:] == (size, size)


def test_train_loader_json_and_cache(cfg, tmp_path):
    loader = build_train_loader(cfg)
    batches = list(loader)
    assert sum(len(b) for b in batches) == 6
    _check(batches[0], 128)
    c = cfg.clone()
    c.DATASETS.TRAIN_CACHE = str(tmp_path / "c.h5")
    build_cache(get_detection_dataset_dicts([NAME]), c.DATASETS.TRAIN_CACHE, 128, progress=False)
    batches = list(build_train_loader(c))
    assert sum(len(b) for b in batches) == 6
    _check(batches[0], 128)


def test_test_loader_in_order(cfg):
    ids = [s["image_id"] for b in build_test_loader(cfg, NAME) for s in b]
    assert ids == [d["image_id"] for d in get_detection_dataset_dicts(NAME)]


def test_bad_sample_named_or_skipped(cfg, tmp_path):
    dicts = get_detection_dataset_dicts(NAME)
    bad = dict(dicts[1], file_name=str(tmp_path / "gone.jpg"))
    mapper = DatasetMapper(image_size=64, is_train=False,
                           attribute_id_to_index=attribute_id_to_index())
    with pytest.raises(SampleError, match="gone.jpg"):
        MapDataset([dicts[0], bad], mapper)[1]
    ds = MapDataset([dicts[0], bad, dicts[2]], mapper, skip_invalid=True)
    assert ds[1]["image_id"] == dicts[2]["image_id"] and ds.report.total == 1
