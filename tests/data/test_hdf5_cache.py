"""HDF5 cache: identical masks, size target, atomic build, --verify, clear errors."""

import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from effdetmask.data import hdf5_cache
from effdetmask.data.fashionpedia import load_fashionpedia_json
from effdetmask.data.hdf5_cache import CachedDataset, CacheError, build_cache, verify_cache
from effdetmask.data.mapper import DatasetMapper
from effdetmask.data.synthetic import ensure_fashion_synth
from effdetmask.data.taxonomy import attribute_id_to_index

SIZE = 160
CLI = Path(__file__).resolve().parents[2] / "datasets" / "build_cache.py"


@pytest.fixture(scope="module")
def dicts(tmp_path_factory):
    path = ensure_fashion_synth(str(tmp_path_factory.mktemp("synth")), "train", 8, 200, seed=2)
    dicts = load_fashionpedia_json(path, os.path.dirname(path))
    # a blank Kaggle AttributesIds cell: attributes unknown, which is not "no attributes"
    anns = [a for d in dicts for a in d["annotations"]]
    for a in anns[::3]:
        a.update(attribute_ids=[], attribute_ids_known=False)
    return dicts


@pytest.fixture(scope="module")
def cache(dicts, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("cache") / "c.h5")
    build_cache(dicts, out, SIZE, workers=2, progress=False)
    return out


def test_round_trip_identical_masks(dicts, cache):
    mapper = DatasetMapper(image_size=SIZE, is_train=False,
                           attribute_id_to_index=attribute_id_to_index())
    ds = CachedDataset(cache)
    assert len(ds) == len(dicts)
    known = []
    for i, d in enumerate(dicts):
        a, b = mapper(d), mapper(ds[i])
        assert (b["image_id"], b["file_name"], b["height"], b["width"]) == (
            d["image_id"], d["file_name"], d["height"], d["width"])
        assert b["scale"] == a["scale"]
        for k in ("masks", "boxes", "classes", "attributes", "attributes_known"):
            assert np.array_equal(a["instances"][k].numpy(), b["instances"][k].numpy()), k
        known.extend(b["instances"]["attributes_known"].tolist())
        # JPEG q95: close to the directly resized image, not equal
        diff = np.abs(a["image"].numpy().astype(int) - b["image"].numpy().astype(int)).mean()
        assert diff < 3.0
    assert True in known and False in known
    assert verify_cache(cache) == []


def test_cache_records_which_attributes_are_unknown(dicts, cache):
    ds = CachedDataset(cache)
    for i, d in enumerate(dicts):
        want = [(a["attribute_ids"], a["attribute_ids_known"]) for a in d["annotations"]]
        got = [(a["attribute_ids"], a["attribute_ids_known"]) for a in ds[i]["annotations"]]
        assert got == want


def test_checksum_covers_the_known_flags(cache, tmp_path):
    bad = str(tmp_path / "flag.h5")
    with open(cache, "rb") as src, open(bad, "wb") as dst:
        dst.write(src.read())
    with h5py.File(bad, "a") as f:
        k = int(f["inst_offsets"][3])  # first instance of record 3
        f["attr_known"][k] = not f["attr_known"][k]
    with pytest.raises(CacheError, match="record 3 .*checksum"):
        CachedDataset(bad)[3]
    assert any("record 3 " in p and "checksum" in p for p in verify_cache(bad))


def test_cache_of_an_older_format_is_refused_by_name(cache, tmp_path):
    old = str(tmp_path / "v2.h5")
    with open(cache, "rb") as src, open(old, "wb") as dst:
        dst.write(src.read())
    with h5py.File(old, "a") as f:
        f.attrs["version"] = 2
        del f["attr_known"]
    with pytest.raises(CacheError, match=r"version 2 \(it does not record which instances' "
                                         r"attributes are unknown\).*rebuild") as e:
        CachedDataset(old)
    assert old in str(e.value)


def test_size_per_image(dicts, tmp_path):
    out = str(tmp_path / "c512.h5")
    build_cache(dicts, out, 512, progress=False)  # fixed overhead included
    assert os.path.getsize(out) / len(dicts) <= 200_000


def test_interrupted_build_leaves_nothing_complete(dicts, tmp_path, monkeypatch):
    out = str(tmp_path / "x.h5")
    calls = {"n": 0}
    real = hdf5_cache.encode_record

    def failing(item, size, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(item, size, **kwargs)

    monkeypatch.setattr(hdf5_cache, "encode_record", failing)
    with pytest.raises(KeyboardInterrupt):
        build_cache(dicts, out, SIZE, workers=0, progress=False)
    assert not os.path.exists(out) and not os.path.exists(out + ".tmp")
    # a file a killed writer left behind (no completion marker) is refused by name
    with h5py.File(out, "w") as f:
        f.attrs["version"] = hdf5_cache.CACHE_VERSION
    with pytest.raises(CacheError, match="incomplete.*") as e:
        CachedDataset(out)
    assert out in str(e.value)


def test_unreadable_cache_is_clear(tmp_path):
    bad = tmp_path / "junk.h5"
    bad.write_bytes(b"not hdf5 at all")
    with pytest.raises(CacheError, match="junk.h5"):
        CachedDataset(str(bad))
    with pytest.raises(CacheError, match="not found"):
        CachedDataset(str(tmp_path / "missing.h5"))


def test_verify_catches_corruption(cache, tmp_path):
    bad = str(tmp_path / "bad.h5")
    with open(cache, "rb") as src, open(bad, "wb") as dst:
        dst.write(src.read())
    with h5py.File(bad, "a") as f:
        f["boxes"][1] = f["boxes"][1] + 1.0  # box no longer the mask's box
        start = int(f["jpeg_offsets"][2])
        f["jpeg"][start:start + 4] = 0  # JPEG header destroyed
    problems = verify_cache(bad)
    assert any("record 2" in p for p in problems)
    assert any("mask box" in p for p in problems)
    r = subprocess.run([sys.executable, str(CLI), "--output", bad, "--verify"],
                       capture_output=True, text=True)
    assert r.returncode == 1 and "problem" in r.stderr
    r = subprocess.run([sys.executable, str(CLI), "--output", cache, "--verify"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_skip_invalid_counts_bad_images(dicts, tmp_path):
    broken = dict(dicts[0], file_name=str(tmp_path / "nope.jpg"))
    out = str(tmp_path / "s.h5")
    with pytest.raises(Exception, match="nope.jpg"):
        build_cache([broken] + dicts[1:3], out, SIZE, progress=False)
    report = build_cache([broken] + dicts[1:3], out, SIZE, skip_invalid=True, progress=False)
    assert report.total == 1 and len(CachedDataset(out)) == 2
