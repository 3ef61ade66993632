"""One pixel convention for RoI features, mask targets and paste; every pyramid level in use;
training RoIs that look like detections."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.ops import box_iou

from effdetmask.modeling.mask_head import (
    jitter_boxes,
    mask_rcnn_targets,
    select_training_rois,
    unreachable_levels,
)
from effdetmask.modeling.roi_pool import MultiLevelRoIAlign, assign_fpn_levels

STRIDES = (8, 16, 32, 64)
R = 14


def _ramp_pyramid(size: int):
    """Per level a 2-channel map whose values are the input-pixel coordinates (x, y) of each
    feature pixel's centre, ``(i + 0.5) * stride``: pooling it returns where it sampled."""
    levels = []
    for s in STRIDES:
        n = size // s
        centres = (torch.arange(n, dtype=torch.float32) + 0.5) * s
        x = centres[None, :].expand(n, n)
        y = centres[:, None].expand(n, n)
        levels.append(torch.stack([x, y])[None])
    return levels


def test_pooled_bins_sit_on_the_mask_target_grid():
    """Each pooled bin must average the features around its bin centre in input pixels, the
    same grid the mask targets are cut on (``x0 + (j + 0.5) * w / R``). With aligned=False the
    bins of a P3 box were half a stride (4 px) off."""
    size = 512
    pooler = MultiLevelRoIAlign(strides=STRIDES, output_size=R, sampling_ratio=2,
                                canonical_box_size=size / 8, canonical_level=4)  # all 4 in use
    boxes = torch.tensor([[100.0, 120, 140, 152], [150, 90, 230, 200], [64, 96, 240, 300],
                          [40, 50, 470, 480]])
    levels = assign_fpn_levels(boxes, min_level=3, max_level=6, canonical_box_size=size / 8,
                               canonical_level=4)
    assert levels.tolist() == [0, 1, 2, 3]  # one box per level, P3..P6
    pooled = pooler(_ramp_pyramid(size), torch.cat([torch.zeros(4, 1), boxes], dim=1))
    frac = (torch.arange(R, dtype=torch.float32) + 0.5) / R
    for k, (x0, y0, x1, y1) in enumerate(boxes.tolist()):
        want_x = x0 + frac * (x1 - x0)
        want_y = y0 + frac * (y1 - y0)
        torch.testing.assert_close(pooled[k, 0], want_x[None, :].expand(R, R), atol=1e-3,
                                   rtol=0)
        torch.testing.assert_close(pooled[k, 1], want_y[:, None].expand(R, R), atol=1e-3,
                                   rtol=0)


def test_mask_targets_use_pixel_centres():
    """A mask whose columns < 50 are on, cut on RoI x 30..70 at 28 bins: bin j is on exactly when
    its centre 30 + (j + 0.5) * 40 / 28 lies left of 50, i.e. j <= 13."""
    mask = torch.zeros(1, 100, 100, dtype=torch.uint8)
    mask[0, :, :50] = 1
    target = mask_rcnn_targets([mask], [torch.tensor([[30.0, 10, 70, 60]])], [torch.tensor([0])])
    assert target[0, 5].tolist() == [1.0] * 14 + [0.0] * 14


CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"


@pytest.mark.parametrize("path", sorted(p for p in CONFIG_DIR.rglob("*.yaml")
                                        if not p.name.startswith("Base-")),
                         ids=lambda p: str(p.relative_to(CONFIG_DIR)))
def test_no_shipped_config_lists_a_dead_mask_level(path):
    """Every level a shipped config pools from receives boxes at its input size (the configs once
    listed P6, which no box below ~900 px inputs reaches under the 224 px rule)."""
    from effdetmask.config import setup_cfg

    cfg = setup_cfg(str(path))
    if cfg.MODEL.META_ARCHITECTURE != "EffDetMask":
        pytest.skip("torchvision's own pooler")
    head = cfg.MODEL.ROI_MASK_HEAD
    levels = list(head.IN_LEVELS)
    assert unreachable_levels(levels, cfg.INPUT.SIZE, head.CANONICAL_BOX_SIZE,
                              head.CANONICAL_LEVEL) == []
    # the largest box of the input lands on the top listed level (or beyond, clamped)
    sides = torch.tensor([[0.0, 0.0, cfg.INPUT.SIZE, cfg.INPUT.SIZE]])
    top = assign_fpn_levels(sides, min_level=levels[0], max_level=levels[-1],
                            canonical_box_size=head.CANONICAL_BOX_SIZE,
                            canonical_level=head.CANONICAL_LEVEL)
    assert int(top) == len(levels) - 1


def test_unreachable_levels_are_named():
    assert unreachable_levels([3, 4, 5, 6], 512, 224, 4) == [6]
    assert unreachable_levels([3, 4, 5, 6], 256, 224, 4) == [5, 6]
    assert unreachable_levels([3, 4, 5, 6], 1024, 224, 4) == []


def test_jittered_gt_boxes_join_the_training_rois():
    torch.manual_seed(0)
    gt_boxes = torch.tensor([[10.0, 10, 50, 60], [60, 60, 100, 120]])
    jittered = jitter_boxes(gt_boxes, copies=200, std=0.1)
    assert jittered.shape == (400, 4)
    assert bool((jittered[:, 2:] > jittered[:, :2]).all()) and bool((jittered >= 0).all())
    # each edge moves by ~N(0, 0.1 * side): the spread of x0 of box 0 is about 4 px
    x0 = jittered.reshape(200, 2, 4)[:, 0, 0]
    assert 3.0 < float(x0.std()) < 5.0 and abs(float(x0.mean()) - 10) < 1.0
    gt = {"boxes": gt_boxes, "classes": torch.tensor([0, 5])}
    no_dets = {"boxes": torch.zeros(1, 0, 4), "scores": torch.zeros(1, 0),
               "valid": torch.zeros(1, 0, dtype=torch.bool)}
    rois, matched = select_training_rois(no_dets, [gt], batch_size_per_image=64,
                                         jitter_copies=4, jitter_std=0.1)
    assert 2 < rois[0].shape[0] <= 10  # the two GT boxes and the copies that still overlap
    iou = box_iou(rois[0], gt_boxes)
    assert torch.equal(iou.argmax(dim=1), matched[0])
    assert float(iou.max(dim=1).values.min()) >= 0.5
    exact, _ = select_training_rois(no_dets, [gt], jitter_copies=0)
    assert exact[0].shape == (2, 4)


def test_centre_aligned_mask_resize():
    """RLE masks are resized with centre-aligned nearest neighbour: output column j takes input
    column floor((j + 0.5) * in / out), so resizing commutes with flipping (INTER_NEAREST, which
    samples at j * in / out, shifted Kaggle masks by about half an input pixel)."""
    from pycocotools import mask as mask_util

    from effdetmask.structures.masks import rasterize_segmentation

    src = np.zeros((30, 101), np.uint8)
    src[:, 37:70] = 1
    rle = mask_util.encode(np.asfortranarray(src))
    rle["counts"] = rle["counts"].decode("ascii")
    out = rasterize_segmentation(rle, 30, 101, 30, 64)
    cols = np.floor((np.arange(64) + 0.5) * 101 / 64).astype(int)
    assert out[0].tolist() == src[0, cols].tolist()
    flipped = mask_util.encode(np.asfortranarray(src[:, ::-1]))
    flipped["counts"] = flipped["counts"].decode("ascii")
    assert np.array_equal(rasterize_segmentation(flipped, 30, 101, 30, 64), out[:, ::-1])
    assert math.isclose(out.mean(), src.mean(), rel_tol=0.05)
