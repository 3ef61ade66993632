"""``attribute_ids_known`` survives the loaders and the mapper as ``attributes_known``: a blank
Kaggle ``AttributesIds`` cell means "unknown", which must not become "no attributes"."""

import cv2
import numpy as np
import pytest
import torch

from effdetmask.data.kaggle import load_imaterialist_csv
from effdetmask.data.mapper import DatasetMapper, attribute_ids_known
from effdetmask.data.taxonomy import attribute_id_to_index

H, W = 40, 60


def _box_polygon(x0, y0, x1, y1):
    return [[x0, y0, x1, y0, x1, y1, x0, y1]]


@pytest.fixture()
def image_file(tmp_path):
    path = str(tmp_path / "img.png")
    cv2.imwrite(path, np.full((H, W, 3), 128, np.uint8))
    return path


def _dict(image_file):
    anns = [
        dict(category_id=0, segmentation=_box_polygon(2, 2, 20, 30), attribute_ids=[317, 157],
             attribute_ids_known=True, bbox=[2, 2, 18, 28]),
        dict(category_id=31, segmentation=_box_polygon(25, 5, 35, 15), attribute_ids=[],
             attribute_ids_known=True, bbox=[25, 5, 10, 10]),
        # an instance whose mask vanishes: dropped, and the flags stay aligned with the rest
        dict(category_id=6, segmentation=_box_polygon(50, 30, 50.1, 30.1), attribute_ids=[],
             attribute_ids_known=False, bbox=[50, 30, 0.1, 0.1]),
        dict(category_id=10, segmentation=_box_polygon(40, 10, 58, 38), attribute_ids=[],
             attribute_ids_known=False, bbox=[40, 10, 18, 28]),
    ]
    return dict(file_name=image_file, image_id=1, height=H, width=W, annotations=anns)


def _mapper(**kw):
    return DatasetMapper(image_size=64, attribute_id_to_index=attribute_id_to_index(), **kw)


def test_mapper_outputs_attributes_known_aligned_with_the_instances(image_file):
    inst = _mapper(is_train=False)(_dict(image_file))["instances"]
    assert inst["classes"].tolist() == [0, 31, 10]
    assert inst["attributes_known"].dtype == torch.bool
    assert inst["attributes_known"].tolist() == [True, True, False]
    assert inst["attributes"].sum(dim=1).tolist() == [2.0, 0.0, 0.0]


def test_flip_keeps_attributes_known(image_file):
    plain = _mapper(is_train=False)(_dict(image_file))["instances"]
    flipped = _mapper(is_train=True, hflip_prob=1.0, grayscale_prob=0.0)(
        _dict(image_file))["instances"]
    assert torch.equal(flipped["masks"], plain["masks"].flip(-1))
    assert flipped["attributes_known"].tolist() == plain["attributes_known"].tolist()


def test_no_annotations_gives_an_empty_flag_vector(image_file):
    d = dict(_dict(image_file), annotations=[])
    inst = _mapper(is_train=False)(d)["instances"]
    assert inst["attributes_known"].shape == (0,) and inst["attributes_known"].dtype == torch.bool


def test_default_when_a_dict_does_not_say():
    assert attribute_ids_known({"attribute_ids": []})  # a list given is the instance's attributes
    assert not attribute_ids_known({"category_id": 3})  # no attribute field at all: unknown
    assert not attribute_ids_known({"attribute_ids": [], "attribute_ids_known": False})


def test_blank_kaggle_cell_is_unknown_through_the_mapper(tmp_path):
    cv2.imwrite(str(tmp_path / "a.jpg"), np.full((H, W, 3), 90, np.uint8))
    # column-major 1-indexed RLE: columns 5..14, rows 3..22 (two instances, same pixels)
    runs = " ".join(f"{c * H + 4} 20" for c in range(5, 15))
    csv_file = tmp_path / "train.csv"
    csv_file.write_text("ImageId,EncodedPixels,Height,Width,ClassId,AttributesIds\n"
                        f"a,{runs},{H},{W},0,\"317,157\"\n"
                        f"a,{runs},{H},{W},1,\n")
    dicts = load_imaterialist_csv(str(csv_file), str(tmp_path))
    assert [a["attribute_ids_known"] for a in dicts[0]["annotations"]] == [True, False]
    inst = _mapper(is_train=False)(dicts[0])["instances"]
    assert inst["attributes_known"].tolist() == [True, False]
