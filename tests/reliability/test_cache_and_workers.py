"""Cache builds and DataLoader workers: errors cross process boundaries intact, dead workers end
the build (no hang), stale temporary files go, every altered byte of a cache record is caught,
and --skip-invalid skips (and names) bad annotations as well as bad images."""

import contextlib
import importlib.util
import json
import logging
import os
import shutil
import signal
from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest
import torch

from effdetmask.data import hdf5_cache
from effdetmask.data.build import MapDataset, SampleError
from effdetmask.data.builtin import register_all
from effdetmask.data.fashionpedia import load_fashionpedia_json
from effdetmask.data.hdf5_cache import CachedDataset, CacheError, build_cache, verify_cache
from effdetmask.data.mapper import DatasetMapper
from effdetmask.data.resumable_loader import (
    ErrorForwardingDataLoader,
    ResumableDataLoader,
    ResumableSampler,
    SeededSamples,
)
from effdetmask.data.synthetic import ensure_fashion_synth
from effdetmask.data.taxonomy import attribute_id_to_index
from effdetmask.data.validation import DatasetIssue, Reason

SIZE = 96
CLI = Path(__file__).resolve().parents[2] / "datasets" / "build_cache.py"


@contextlib.contextmanager
def deadline(seconds):
    """Fail (TimeoutError) instead of hanging when the block takes longer than ``seconds``."""

    def expire(signum, frame):
        raise TimeoutError(f"still running after {seconds} s (hung?)")

    old = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


@pytest.fixture(scope="module")
def dicts(tmp_path_factory):
    path = ensure_fashion_synth(str(tmp_path_factory.mktemp("synth")), "train", 6, 128, seed=5)
    return load_fashionpedia_json(path, os.path.dirname(path))


@pytest.fixture(scope="module")
def cache(dicts, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("cache") / "c.h5")
    build_cache(dicts, out, SIZE, progress=False)
    return out


def _copy(cache, tmp_path, name="bad.h5"):
    out = str(tmp_path / name)
    shutil.copyfile(cache, out)
    return out


# ---------------------------------------------------------------- defect 1: worker processes


def test_bad_image_in_a_worker_raises_its_dataset_issue_no_hang(dicts, tmp_path):
    gone = str(tmp_path / "gone.jpg")
    items = [dicts[0], dict(dicts[1], file_name=gone)] + list(dicts[2:])
    out = str(tmp_path / "w.h5")
    with deadline(60), pytest.raises(DatasetIssue) as info:
        build_cache(items, out, SIZE, workers=2, progress=False)
    assert info.value.source == gone and info.value.reason == Reason.MISSING_FILE
    assert "gone.jpg" in str(info.value) and "does not exist" in str(info.value)
    assert not os.path.exists(out) and not os.path.exists(out + ".tmp")


class _KillsTheWorker:
    """Unpickled in an encoder process, it kills that process (as the OOM killer would)."""

    def __reduce__(self):
        return (signal.raise_signal, (int(signal.SIGKILL),))


def test_dead_worker_ends_the_build_naming_the_lost_images(dicts, tmp_path):
    victim = dict(dicts[2], killer=_KillsTheWorker())
    items = list(dicts[:2]) + [victim] + list(dicts[3:])
    out = str(tmp_path / "k.h5")
    with deadline(60), pytest.raises(CacheError) as info:
        build_cache(items, out, SIZE, workers=2, progress=False)
    msg = str(info.value)
    assert "worker process died" in msg and out in msg
    assert f"{victim['file_name']} (image id {victim['image_id']})" in msg
    assert not os.path.exists(out) and not os.path.exists(out + ".tmp")


def test_stale_tmp_of_a_killed_build_is_removed_and_logged(dicts, tmp_path, caplog):
    out = str(tmp_path / "s.h5")
    Path(out + ".tmp").write_bytes(b"half-written by a build that was killed")
    with caplog.at_level(logging.WARNING, logger="effdetmask.data.hdf5_cache"):
        build_cache(dicts[:2], out, SIZE, progress=False)
    assert any("stale" in r.getMessage() and out + ".tmp" in r.getMessage()
               for r in caplog.records)
    assert not os.path.exists(out + ".tmp") and len(CachedDataset(out)) == 2


class _Bad(torch.utils.data.Dataset):
    """Raises a DatasetIssue (a constructor with four arguments) for sample 3."""

    def __len__(self):
        return 6

    def __getitem__(self, i):
        if i == 3:
            raise DatasetIssue(f"/data/img{i}.jpg", "cannot decode", f"image id {i}",
                               Reason.CORRUPT_IMAGE)
        return i


def test_dataloader_worker_exception_arrives_intact():
    loader = ResumableDataLoader(SeededSamples(_Bad(), seed=0),
                                 ResumableSampler(6, seed=0, shuffle=False), batch_size=2,
                                 num_workers=2, collate_fn=list)
    assert loader.dataset.seed == 0  # the wrapped dataset's attributes stay reachable
    with deadline(60), pytest.raises(DatasetIssue) as info:
        list(loader)
    e = info.value
    assert (e.source, e.problem, e.record, e.reason) == (
        "/data/img3.jpg", "cannot decode", "image id 3", Reason.CORRUPT_IMAGE)
    assert str(e) == "/data/img3.jpg: image id 3: cannot decode"
    assert "DataLoader worker" in str(e.__cause__) and "raise DatasetIssue" in str(e.__cause__)


class _Unpicklable(Exception):
    def __init__(self, path, extra):
        super().__init__(f"{path}: broken")


class _RaisesUnpicklable(_Bad):
    def __getitem__(self, i):
        raise _Unpicklable("/data/x.jpg", 1)


def test_dataloader_worker_exception_that_cannot_pickle_keeps_its_message():
    loader = ErrorForwardingDataLoader(_RaisesUnpicklable(), batch_size=2, num_workers=1)
    with deadline(60), pytest.raises(RuntimeError, match=r"_Unpicklable: /data/x.jpg: broken"):
        list(loader)


def test_test_loader_sample_error_from_a_worker_names_the_file(dicts, tmp_path):
    mapper = DatasetMapper(image_size=64, is_train=False,
                           attribute_id_to_index=attribute_id_to_index())
    gone = str(tmp_path / "gone.jpg")
    ds = MapDataset([dicts[0], dict(dicts[1], file_name=gone)], mapper)
    loader = ErrorForwardingDataLoader(ds, batch_size=1, num_workers=1, collate_fn=list)
    with deadline(60), pytest.raises(SampleError) as info:
        list(loader)
    assert str(info.value).startswith(f"cannot load sample {gone}")  # the original message
    assert "DatasetIssue" in str(info.value.__cause__)  # the worker's traceback, chain included


# ---------------------------------------------------------------- defect 2: cache integrity


def _flip_byte(path, name, element, byte):
    """XOR one byte (``byte`` of element ``element``) of dataset ``name`` in place."""
    with h5py.File(path, "a") as f:
        d = f[name]
        value = np.array(d[element:element + 1])
        raw = value.view(np.uint8).reshape(-1)
        raw[byte] ^= 0xFF
        d[element:element + 1] = value


def _record_of_instance(cache, k):
    with h5py.File(cache, "r") as f:
        return int(np.searchsorted(f["inst_offsets"][:], k, side="right") - 1)


def _positions(cache):
    """(label, dataset, element, byte, record) of bytes to alter, in the JPEG and annotations."""
    with h5py.File(cache, "r") as f:
        jo, io_, ro, ao = (f[k][:] for k in ("jpeg_offsets", "inst_offsets", "rle_offsets",
                                             "attr_offsets"))
        k = int(io_[1])  # first instance of record 1
        with_attrs = int(np.flatnonzero(np.diff(ao) > 0)[0])
    rec_attr = _record_of_instance(cache, with_attrs)
    n = int(jo[2] - jo[1])
    out = [(f"jpeg[{p}]", "jpeg", int(jo[1]) + p, 0, 1) for p in (3, n // 3, n // 2, n - 3)]
    out += [("jpeg last record", "jpeg", int(jo[-1]) - 10, 0, len(jo) - 2)]
    out += [(f"classes byte {b}", "classes", k, b, 1) for b in (0, 7)]
    out += [(f"boxes[{c}] byte {b}", "boxes", k, c * 4 + b, 1) for c, b in ((0, 0), (3, 3))]
    out += [("rle", "rle", int(ro[k]) + 1, 0, 1), ("rle end", "rle", int(ro[k + 1]) - 1, 0, 1)]
    out += [("attr_ids byte 0", "attr_ids", int(ao[with_attrs]), 0, rec_attr),
            ("attr_ids byte 3", "attr_ids", int(ao[with_attrs]), 3, rec_attr)]
    out += [("image_ids", "image_ids", 4, 0, 4), ("scales", "scales", 2, 1, 2)]
    return out


def test_verify_reports_every_altered_byte(cache, tmp_path):
    assert verify_cache(cache) == []
    for label, name, element, byte, record in _positions(cache):
        bad = _copy(cache, tmp_path)
        _flip_byte(bad, name, element, byte)
        problems = verify_cache(bad)
        assert any(f"record {record} " in p for p in problems), (label, problems)


def test_reader_names_a_corrupt_record_or_skips_and_counts_it(cache, dicts, tmp_path):
    bad = _copy(cache, tmp_path)
    with h5py.File(bad, "r") as f:
        mid = int((f["jpeg_offsets"][2] + f["jpeg_offsets"][3]) // 2)
    _flip_byte(bad, "jpeg", mid, 0)  # inside the JPEG data: decodes, to another image
    ds = CachedDataset(bad)
    with pytest.raises(CacheError) as info:
        ds[2]
    msg = str(info.value)
    assert bad in msg and "record 2" in msg and f"image id {dicts[2]['image_id']}" in msg
    assert "checksum" in msg and "rebuild" in msg
    assert ds[1]["image_id"] == dicts[1]["image_id"]
    mapper = DatasetMapper(image_size=SIZE, is_train=False,
                           attribute_id_to_index=attribute_id_to_index())
    with pytest.raises(SampleError, match="record 2"):
        MapDataset(ds, mapper)[2]
    skipping = MapDataset(ds, mapper, skip_invalid=True)
    assert skipping[2]["image_id"] == dicts[3]["image_id"] and skipping.report.total == 1


def _set_with_valid_checksum(path, name, element, value):
    """Store a value and a matching checksum (a writer bug, not bit rot)."""
    with h5py.File(path, "a") as f:
        f[name][element] = value
    ds = CachedDataset(path)
    crcs = []
    for i in range(len(ds)):
        raw = ds._read(i)
        crcs.append(hdf5_cache._record_crc(
            raw["image_id"], raw["file_name"], raw["orig_hw"], raw["cache_hw"], raw["scale"],
            raw["has_annotations"], raw["jpeg"], raw["classes"], raw["boxes"],
            np.diff(raw["rle_offsets"]), raw["rle"], np.diff(raw["attr_offsets"]), raw["attr_ids"],
            raw["attr_known"]))
    ds._f().close()
    with h5py.File(path, "a") as f:
        f["crc32"][:] = np.array(crcs, np.uint32)


@pytest.mark.parametrize("name, value, words", [
    ("classes", 46, "category id 46 is not a class id of the taxonomy (0..45)"),
    ("classes", -1, "category id -1"),
    ("attr_ids", 999, "attribute id(s) [999] not in the taxonomy"),
])
def test_reader_rejects_ids_outside_the_taxonomy(cache, tmp_path, name, value, words):
    bad = _copy(cache, tmp_path)
    with h5py.File(bad, "r") as f:
        ao = f["attr_offsets"][:]
    k = 0 if name == "classes" else int(np.flatnonzero(np.diff(ao) > 0)[0])
    element = k if name == "classes" else int(ao[k])
    record = _record_of_instance(bad, k)
    _set_with_valid_checksum(bad, name, element, value)
    with pytest.raises(CacheError) as info:
        CachedDataset(bad)[record]
    assert f"record {record} " in str(info.value) and words in str(info.value)
    assert any(words in p for p in verify_cache(bad))


def test_old_cache_without_checksums_asks_for_a_rebuild(cache, tmp_path):
    old = _copy(cache, tmp_path, "old.h5")
    with h5py.File(old, "a") as f:
        f.attrs["version"] = 1
        del f["crc32"]
    with pytest.raises(CacheError, match=r"old.h5: cache format version 1 \(it has no "
                                         r"per-record checksums\).*rebuild it"):
        CachedDataset(old)
    with pytest.raises(CacheError, match="rebuild"):
        verify_cache(old)


def test_build_rejects_class_ids_outside_the_taxonomy(dicts, tmp_path):
    ann = dict(dicts[0]["annotations"][0], category_id=46)
    item = dict(dicts[0], annotations=[ann])
    with pytest.raises(DatasetIssue) as info:
        build_cache([item], str(tmp_path / "x.h5"), SIZE, progress=False)
    assert info.value.reason == Reason.UNKNOWN_CATEGORY
    assert dicts[0]["file_name"] in str(info.value) and "annotation 0" in str(info.value)


# ------------------------------------------------- defect 3: --skip-invalid and bad annotations


def test_skip_invalid_drops_bad_annotations_and_keeps_the_image(dicts, tmp_path, caplog):
    good = dicts[0]["annotations"]
    bad = [dict(good[0], segmentation=[[1, 1, 5, 5]]),  # polygon with 2 points
           dict(good[0], category_id=99),
           dict(good[0], attribute_ids=[999]),
           dict(good[0], segmentation={"size": [3, 3], "counts": "garbage"})]
    item = dict(dicts[0], annotations=list(good) + bad)
    out = str(tmp_path / "a.h5")
    with pytest.raises(DatasetIssue, match=f"annotation {len(good)}"):
        build_cache([item], out, SIZE, progress=False)
    with caplog.at_level(logging.WARNING):
        report = build_cache([item] + list(dicts[1:3]), out, SIZE, skip_invalid=True, workers=2,
                             progress=False)
    ds = CachedDataset(out)
    assert len(ds) == 3 and len(ds[0]["annotations"]) == len(good)
    assert report.total == 4
    for reason in (Reason.INVALID_POLYGON, Reason.UNKNOWN_CATEGORY, Reason.UNKNOWN_ATTRIBUTE,
                   Reason.INVALID_RLE):
        assert report.count(reason) == 1, report.summary()
    for j in range(len(good), len(good) + 4):  # each skipped annotation is named
        assert f"{dicts[0]['file_name']}: image id {dicts[0]['image_id']}, annotation {j}" in (
            caplog.text), j


def _image(path):
    img = np.zeros((40, 60, 3), np.uint8)
    img[10:30, 20:50] = 200
    cv2.imwrite(str(path), img)


@pytest.fixture
def sample_root(tmp_path):
    """A dataset root holding a 'fashionpedia_api_sample' with bad annotations and a bad image."""
    base = tmp_path / "root" / "fashionpedia_api_sample"
    (base / "images").mkdir(parents=True)
    for name in ("a.jpg", "b.jpg", "c.jpg"):
        _image(base / "images" / name)
    (base / "images" / "c.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    poly = [[20, 10, 50, 10, 50, 30, 20, 30]]
    ann = dict(category_id=23, iscrowd=0, attribute_ids=[204], segmentation=poly)
    data = {
        "images": [{"id": i, "file_name": n, "height": 40, "width": 60}
                   for i, n in ((1, "a.jpg"), (2, "b.jpg"), (3, "c.jpg"))],
        "annotations": [dict(ann, id=10, image_id=1), dict(ann, id=11, image_id=1,
                                                           category_id=99),
                        dict(ann, id=12, image_id=2), dict(ann, id=13, image_id=2,
                                                           segmentation=[[1, 1, 5, 5]]),
                        dict(ann, id=14, image_id=3)],
        "categories": [{"id": 23, "name": "shoe"}],
        "attributes": [{"id": 204, "name": "set-in sleeve"}],
    }
    (base / "sample.json").write_text(json.dumps(data))
    yield str(tmp_path / "root")
    register_all(overwrite=True)  # the CLI re-registered the built-ins under this root


def _cli():
    spec = importlib.util.spec_from_file_location("build_cache_cli", CLI)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cli_skip_invalid_skips_bad_annotations_with_one_summary(sample_root, tmp_path, caplog):
    out = str(tmp_path / "cli.h5")
    cli = _cli()
    args = ["--dataset", "fashionpedia_api_sample", "--root", sample_root, "--output", out,
            "--size", "64", "--workers", "0"]
    with caplog.at_level(logging.INFO):
        assert cli.main(args) == 1  # without --skip-invalid: the first bad annotation stops it
    assert "annotation id 11" in caplog.text and "unknown category id 99" in caplog.text
    assert not os.path.exists(out)
    caplog.clear()
    with caplog.at_level(logging.INFO):
        assert cli.main(args + ["--skip-invalid"]) == 0
    messages = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]
    summaries = [m for m in messages if "skipped" in m and "item(s)" in m]
    assert len(summaries) == 1, messages
    assert "skipped 3 item(s)" in summaries[0]
    for words in ("annotation id 11", "annotation id 13", "c.jpg"):
        assert any(words in m for m in messages if m not in summaries), words
    ds = CachedDataset(out)
    assert len(ds) == 2 and [len(ds[i]["annotations"]) for i in range(2)] == [1, 1]
    assert cli.main(["--output", out, "--verify"]) == 0


def test_cli_caches_the_generated_split_it_is_told_of(tmp_path):
    """`generate_synth.py --num-images 6` then `build_cache.py --synth 6 ...` caches those 6 images
    (it once regenerated the 200-image default over them, silently)."""
    from effdetmask.data.synthetic import ensure_fashion_synth

    root = str(tmp_path / "datasets")
    made = ensure_fashion_synth(root, "train", 6, 96, 0)  # what generate_synth.py writes
    before = sorted(os.listdir(os.path.dirname(made)))
    out = str(tmp_path / "synth.h5")
    args = ["--dataset", "fashion_synth_train", "--root", root, "--output", out, "--size", "64",
            "--workers", "0", "--synth", "6", "96", "0"]
    assert _cli().main(args) == 0
    assert len(CachedDataset(out)) == 6
    assert sorted(os.listdir(os.path.dirname(made))) == before
    splits = [n for n in os.listdir(os.path.join(root, "fashion_synth")) if not n.endswith(".lock")]
    assert splits == [os.path.basename(os.path.dirname(made))]  # no other split was generated
