"""Mask format conversions: polygons, COCO RLE, Kaggle RLE, boxes, and their errors."""

import numpy as np
import pytest

from effdetmask.structures.masks import (
    MaskFormatError,
    coco_rle_decode,
    coco_rle_encode,
    kaggle_rle_decode,
    kaggle_rle_encode,
    kaggle_rle_to_coco_rle,
    mask_to_box_xyxy,
    masks_to_boxes_xyxy,
    polygons_to_mask,
    rasterize_segmentation,
    rle_to_box_xywh,
    segmentation_to_mask,
    validate_coco_rle,
)


def _random_mask(seed, h=23, w=17):
    rng = np.random.default_rng(seed)
    return (rng.random((h, w)) > 0.6).astype(np.uint8)


def test_polygon_to_mask():
    mask = polygons_to_mask([[2, 3, 8, 3, 8, 9, 2, 9]], 12, 10)
    assert mask.shape == (12, 10) and mask.dtype == np.uint8
    assert mask_to_box_xyxy(mask).tolist() == [2, 3, 8, 9]
    assert mask.sum() == 36


def test_coco_rle_roundtrip_compressed_and_uncompressed():
    mask = _random_mask(0)
    rle = coco_rle_encode(mask)
    assert isinstance(rle["counts"], str) and rle["size"] == [23, 17]
    np.testing.assert_array_equal(coco_rle_decode(rle), mask)
    # uncompressed counts (COCO iscrowd): runs of zeros/ones, column-major
    flat = mask.T.ravel()
    counts, cur, run = [], 0, 0
    for v in flat:
        if v != cur:
            counts.append(run)
            cur, run = v, 0
        run += 1
    counts.append(run)
    uncompressed = {"size": [23, 17], "counts": counts}
    np.testing.assert_array_equal(segmentation_to_mask(uncompressed, 23, 17), mask)


def test_kaggle_rle_convention():
    # H=3, W=2: pixel 2 (1-indexed) is row 1 of column 0 in column-major order.
    mask = kaggle_rle_decode("2 2 6 1", 3, 2)
    np.testing.assert_array_equal(mask, [[0, 0], [1, 0], [1, 1]])
    assert kaggle_rle_encode(mask) == "2 2 6 1"


@pytest.mark.parametrize("seed", range(3))
def test_kaggle_to_coco_without_decoding(seed):
    mask = _random_mask(seed)
    encoded = kaggle_rle_encode(mask)
    np.testing.assert_array_equal(kaggle_rle_decode(encoded, 23, 17), mask)
    rle = kaggle_rle_to_coco_rle(encoded, 23, 17)
    np.testing.assert_array_equal(coco_rle_decode(rle), mask)
    x, y, w, h = rle_to_box_xywh(rle)
    assert [x, y, x + w, y + h] == mask_to_box_xyxy(mask).tolist()


def test_boxes_of_masks():
    masks = np.zeros((2, 5, 6), np.uint8)
    masks[0, 1:3, 2:5] = 1
    boxes = masks_to_boxes_xyxy(masks)
    assert boxes.dtype == np.float32 and boxes.shape == (2, 4)
    assert boxes.tolist() == [[2, 1, 5, 3], [0, 0, 0, 0]]  # empty mask -> zeros
    assert masks_to_boxes_xyxy(np.zeros((0, 5, 6), np.uint8)).shape == (0, 4)
    many = np.stack([_random_mask(seed) for seed in range(5)])
    assert np.array_equal(masks_to_boxes_xyxy(many), np.stack([mask_to_box_xyxy(m) for m in many]))


def test_rasterize_segmentation_is_the_one_conversion_at_any_size():
    """The mapper and the HDF5 cache rasterise with this: at the source size it equals the
    validated conversions; polygons scale with the output; bad polygons raise the same error."""
    poly = [[2, 3, 8, 3, 8, 9, 2, 9]]
    same_size = rasterize_segmentation(poly, 12, 10, 12, 10)
    assert np.array_equal(same_size, polygons_to_mask(poly, 12, 10))
    assert mask_to_box_xyxy(rasterize_segmentation(poly, 12, 10, 24, 20)).tolist() == [4, 6, 16, 18]
    mask = _random_mask(2)
    rle = coco_rle_encode(mask)
    assert np.array_equal(rasterize_segmentation(rle, 23, 17, 23, 17), mask)
    assert rasterize_segmentation(rle, 23, 17, 46, 34).sum() == 4 * mask.sum()
    with pytest.raises(MaskFormatError, match="at least 3"):
        rasterize_segmentation([[1, 1, 5, 1]], 10, 10, 5, 5)


@pytest.mark.parametrize(
    "polygons, message",
    [([[1, 1, 5, 1]], "at least 3"), ([[1, 1, 5, 1, 5]], "odd number"), ([], "non-empty")],
)
def test_bad_polygons(polygons, message):
    with pytest.raises(MaskFormatError, match=message):
        polygons_to_mask(polygons, 10, 10)


def test_bad_coco_rle():
    rle = coco_rle_encode(_random_mask(1))
    with pytest.raises(MaskFormatError, match="differs from the image size"):
        validate_coco_rle(rle, 24, 17)
    with pytest.raises(MaskFormatError, match="cover"):
        validate_coco_rle({"size": [4, 4], "counts": [3, 2]})
    with pytest.raises(MaskFormatError, match="bad character"):
        validate_coco_rle({"size": [4, 4], "counts": "a b"})
    with pytest.raises(MaskFormatError, match="negative"):
        validate_coco_rle({"size": [2, 2], "counts": [5, -1]})
    with pytest.raises(MaskFormatError, match="'size' and 'counts'"):
        coco_rle_decode({"counts": "00"})


@pytest.mark.parametrize(
    "encoded, message",
    [
        ("5 10", "beyond"),
        ("0 2", "start < 1"),
        ("1 2 3", "pairs"),
        ("1 3 2 2", "overlap"),
        ("1 x", "integers"),
        ("3 0", "length <= 0"),
    ],
)
def test_bad_kaggle_rle(encoded, message):
    with pytest.raises(MaskFormatError, match=message):
        kaggle_rle_decode(encoded, 3, 4)
