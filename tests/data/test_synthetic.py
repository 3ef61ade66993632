"""The generated Fashionpedia-format dataset: deterministic, valid, parts inside their garments."""

import json
import os

import numpy as np
import pycocotools.mask as mask_util
import pytest

from effdetmask.data.synthetic import JSON_NAME, ensure_fashion_synth
from effdetmask.data.taxonomy import load_taxonomy


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("synth"))
    return root, ensure_fashion_synth(root, "train", 10, 128, seed=3)


def _decode(ann, h, w):
    seg = ann["segmentation"]
    rle = mask_util.merge(mask_util.frPyObjects(seg, h, w)) if isinstance(seg, list) else seg
    return mask_util.decode(rle)


def test_deterministic_and_cached(synth, tmp_path):
    root, path = synth
    other = ensure_fashion_synth(str(tmp_path), "train", 10, 128, seed=3)
    assert open(path).read() == open(other).read()
    mtime = os.path.getmtime(path)
    assert ensure_fashion_synth(root, "train", 10, 128, seed=3) == path
    assert os.path.getmtime(path) == mtime  # same parameters: not regenerated
    val = json.load(open(ensure_fashion_synth(str(tmp_path), "val", 10, 128, seed=3)))
    assert val["annotations"] != json.load(open(path))["annotations"]  # splits differ


def test_other_parameters_never_replace_a_split_in_use(tmp_path):
    """Two runs with different DATASETS.SYNTH parameters each get their own folder: the first
    run's images stay readable while the second generates (they were once replaced in place)."""
    path = ensure_fashion_synth(str(tmp_path), "train", 3, 96, seed=0)
    images = sorted(os.listdir(os.path.dirname(path)))
    path2 = ensure_fashion_synth(str(tmp_path), "train", 4, 96, seed=0)
    assert path2 != path and len(json.load(open(path2))["images"]) == 4
    assert json.load(open(path))["info"]["generator"]["num_images"] == 3
    assert sorted(os.listdir(os.path.dirname(path))) == images
    assert not [n for n in os.listdir(os.path.join(str(tmp_path), "fashion_synth")) if ".tmp" in n]


def test_interrupted_build_is_cleaned_and_concurrent_builders_share_one_split(tmp_path):
    import multiprocessing

    from effdetmask.data.synthetic import synth_split_dir

    final = synth_split_dir(str(tmp_path), "val", 3, 96, 1)
    os.makedirs(final + "_unrelated")  # another parameter set: must survive
    leftover = os.path.join(os.path.dirname(final), f".{os.path.basename(final)}.tmp-killed")
    os.makedirs(leftover)  # what a killed build leaves
    os.makedirs(final)  # a half-written split without its JSON
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(2) as pool:
        paths = pool.starmap(ensure_fashion_synth, [(str(tmp_path), "val", 3, 96, 1)] * 2)
    assert paths[0] == paths[1] and os.path.isfile(paths[0])
    assert not os.path.exists(leftover) and os.path.isdir(final + "_unrelated")
    assert len(json.load(open(paths[0]))["images"]) == 3


def test_valid_fashionpedia_format(synth):
    _, path = synth
    data = json.load(open(path))
    tax = load_taxonomy()
    assert JSON_NAME == os.path.basename(path)
    assert [c["name"] for c in data["categories"]] == tax.class_names
    assert [a["id"] for a in data["attributes"]] == tax.attribute_ids
    images = {im["id"]: im for im in data["images"]}
    assert len(images) == 10 and len(data["annotations"]) > 30
    for im in images.values():
        assert max(im["height"], im["width"]) == 128
        assert os.path.isfile(os.path.join(os.path.dirname(path), im["file_name"]))
    kinds = set()
    for ann in data["annotations"]:
        im = images[ann["image_id"]]
        assert 0 <= ann["category_id"] < 46 and ann["iscrowd"] == 0
        assert set(ann["attribute_ids"]) <= set(tax.attribute_ids)
        m = _decode(ann, im["height"], im["width"])
        assert m.sum() == ann["area"] > 0
        ys, xs = np.nonzero(m)
        assert ann["bbox"] == [xs.min(), ys.min(), xs.max() + 1 - xs.min(), ys.max() + 1 - ys.min()]
        kinds.add(type(ann["segmentation"]).__name__)
    assert kinds == {"list", "dict"}  # polygons and RLE both occur


def test_parts_overlap_their_garment(synth):
    _, path = synth
    data = json.load(open(path))
    tax = load_taxonomy()
    garments = {tax.class_name_to_id[n] for n in
                ("shirt, blouse", "top, t-shirt, sweatshirt", "jacket", "dress")}
    parts = {tax.class_name_to_id[n] for n in ("sleeve", "collar", "pocket", "neckline")}
    images = {im["id"]: im for im in data["images"]}
    checked = 0
    for img_id, im in images.items():
        anns = [a for a in data["annotations"] if a["image_id"] == img_id]
        gmasks = [_decode(a, im["height"], im["width"])
                  for a in anns if a["category_id"] in garments]
        for a in anns:
            if a["category_id"] in parts and gmasks:
                m = _decode(a, im["height"], im["width"]).astype(bool)
                best = max((m & g.astype(bool)).sum() / m.sum() for g in gmasks)
                assert best > 0.5
                checked += 1
    assert checked > 10
