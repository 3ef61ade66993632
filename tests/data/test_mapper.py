"""DatasetMapper: output contract, letterbox, flip consistency, empty images."""

import os

import pytest
import torch

from effdetmask.data.fashionpedia import load_fashionpedia_json
from effdetmask.data.mapper import DatasetMapper, trivial_batch_collator
from effdetmask.data.synthetic import ensure_fashion_synth
from effdetmask.data.taxonomy import attribute_id_to_index


@pytest.fixture(scope="module")
def dicts(tmp_path_factory):
    path = ensure_fashion_synth(str(tmp_path_factory.mktemp("synth")), "train", 6, 128, seed=1)
    return load_fashionpedia_json(path, os.path.dirname(path))


def _annotation_boxes(d, scale):
    """The dataset dict's own ``bbox`` (xywh, original pixels) as xyxy input pixels."""
    xywh = torch.tensor([a["bbox"] for a in d["annotations"]], dtype=torch.float32)
    return torch.cat([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], dim=1) * scale


def _mapper(**kw):
    kw.setdefault("is_train", False)
    return DatasetMapper(image_size=160, attribute_id_to_index=attribute_id_to_index(), **kw)


def test_output_contract_and_letterbox(dicts):
    for d in dicts:
        out = _mapper()(d)
        h, w, s = d["height"], d["width"], out["scale"]
        assert out["image"].dtype == torch.uint8 and out["image"].shape == (3, 160, 160)
        assert round(max(h, w) * s) == 160 and (out["height"], out["width"]) == (h, w)
        th, tw = round(h * s), round(w * s)
        assert out["image"][:, th:].sum() == 0 and out["image"][:, :, tw:].sum() == 0
        inst = out["instances"]
        n = inst["classes"].shape[0]
        assert n > 0 and inst["classes"].dtype == torch.int64
        assert inst["boxes"].shape == (n, 4) and inst["boxes"].dtype == torch.float32
        assert inst["masks"].shape == (n, 160, 160) and inst["masks"].dtype == torch.uint8
        assert inst["attributes"].shape == (n, 294) and inst["attributes"].dtype == torch.float32
        assert inst["masks"][:, th:].sum() == 0 and inst["masks"][:, :, tw:].sum() == 0
        # the annotations, scaled: same order and classes, boxes within rasterisation error
        want = _annotation_boxes(d, s)
        assert inst["classes"].tolist() == [a["category_id"] for a in d["annotations"]]
        assert (inst["boxes"] - want).abs().max() <= 1.0 + s


def test_flip_consistency(dicts):
    d = dicts[0]
    plain = _mapper()(d)
    flipped = _mapper(is_train=True, hflip_prob=1.0, grayscale_prob=0.0)(d)
    tw = round(d["width"] * plain["scale"])
    assert torch.equal(flipped["image"][:, :, :tw], plain["image"][:, :, :tw].flip(-1))
    fi, pi = flipped["instances"], plain["instances"]
    assert torch.equal(fi["masks"][:, :, :tw], pi["masks"][:, :, :tw].flip(-1))
    want = _annotation_boxes(d, plain["scale"])
    want[:, [0, 2]] = tw - want[:, [2, 0]]  # the annotations, mirrored inside the image
    assert (fi["boxes"] - want).abs().max() <= 1.0 + plain["scale"]
    expect = pi["boxes"].clone()
    expect[:, [0, 2]] = tw - pi["boxes"][:, [2, 0]]
    assert torch.equal(fi["boxes"], expect)
    assert torch.equal(fi["classes"], pi["classes"])
    assert torch.equal(fi["attributes"], pi["attributes"])


def test_grayscale(dicts):
    out = _mapper(is_train=True, hflip_prob=0.0, grayscale_prob=1.0)(dicts[0])
    assert torch.equal(out["image"][0], out["image"][1]) and torch.equal(out["image"][1],
                                                                         out["image"][2])


def test_empty_and_vanishing_instances(dicts):
    d = dict(dicts[0], annotations=[])
    inst = _mapper()(d)["instances"]
    assert inst["boxes"].shape == (0, 4) and inst["masks"].shape == (0, 160, 160)
    assert inst["attributes"].shape == (0, 294) and inst["classes"].shape == (0,)
    # a one-pixel sliver vanishes at a smaller scale: dropped from all four fields together
    tiny = dict(segmentation=[[0.0, 0.0, 0.4, 0.0, 0.4, 0.4]], category_id=5, attribute_ids=[],
                iscrowd=0, bbox=[0, 0, 0.4, 0.4])
    d = dict(dicts[0], annotations=[tiny] + list(dicts[0]["annotations"][:2]))
    inst = _mapper()(d)["instances"]
    n = inst["classes"].shape[0]
    assert n == 2 and inst["masks"].shape[0] == inst["boxes"].shape[0]
    assert inst["attributes"].shape[0] == n
    assert 5 not in inst["classes"].tolist()


def test_no_annotations_key_and_collator(dicts):
    d = {k: v for k, v in dicts[0].items() if k != "annotations"}
    out = _mapper()(d)
    assert "instances" not in out
    assert trivial_batch_collator([out, out]) == [out, out]


def test_unknown_attribute_is_clear(dicts):
    ann = dict(dicts[0]["annotations"][0], attribute_ids=[9999])
    with pytest.raises(ValueError, match="9999"):
        _mapper()(dict(dicts[0], annotations=[ann]))
