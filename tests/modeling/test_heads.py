"""Proposal generator (EfficientDet heads) and mask head, as separate parts."""

import math

import pytest
import torch
from torchvision.ops import batched_nms

from effdetmask.modeling import (
    EfficientDetProposalGenerator,
    MaskRCNNConvUpsampleHead,
    TimmBiFPNBackbone,
    mask_rcnn_loss,
    mask_rcnn_targets,
    paste_masks_in_image,
    select_training_rois,
)

S = 128


@pytest.fixture(scope="module")
def parts():
    torch.manual_seed(0)
    backbone = TimmBiFPNBackbone(image_size=S, fpn_channels=32, fpn_repeats=1)
    shape = backbone.output_shape()
    proposals = EfficientDetProposalGenerator(input_shape=shape, image_size=S, repeats=1)
    mask_head = MaskRCNNConvUpsampleHead(input_shape=shape, image_size=S, conv_dim=16, num_conv=2)
    return backbone, proposals, mask_head


def _targets(n_per_image):
    out = []
    for n in n_per_image:
        boxes = torch.tensor([[10.0 + 9 * k, 12.0, 70.0 + 9 * k, 90.0] for k in range(n)])
        out.append({"boxes": boxes.reshape(-1, 4), "classes": torch.arange(n) % 46})
    return out


def test_class_head_has_focal_prior_bias(parts):
    _, proposals, _ = parts
    bias = proposals.class_net.predict.conv_pw.bias
    torch.testing.assert_close(bias, torch.full_like(bias, -math.log((1 - 0.01) / 0.01)))


def test_proposals_shapes_losses_and_boxes_inside(parts):
    backbone, proposals, _ = parts
    feats = backbone(torch.randn(2, 3, S, S))
    dets, losses = proposals(feats, _targets([2, 0]))
    assert set(losses) == {"loss_cls", "loss_box"}
    assert all(torch.isfinite(v) and v.ndim == 0 for v in losses.values())
    # one padded batch: [B, N] rows, the valid ones first, by decreasing score
    assert dets["boxes"].shape[:2] == dets["scores"].shape == dets["valid"].shape
    assert dets["classes"].dtype == torch.int64 and dets["valid"].dtype == torch.bool
    for b, scores, classes, valid in zip(dets["boxes"], dets["scores"], dets["classes"],
                                         dets["valid"]):
        n = int(valid.sum())
        assert 0 < n <= 100 and valid[:n].all() and (scores[n:] == -1).all()
        assert (scores[:n].diff() <= 0).all()
        assert 0 <= classes[:n].min() <= classes[:n].max() < 46
        b = b[:n]
        assert (b >= 0).all() and (b <= S).all() and (b[:, 2:] >= b[:, :2]).all()
    assert not dets["boxes"].requires_grad
    _, empty_losses = proposals(feats, _targets([0, 0]))
    assert all(torch.isfinite(v) for v in empty_losses.values())
    assert empty_losses["loss_box"] == 0


def test_batched_detections_match_per_image_reference(parts):
    backbone, _, _ = parts
    torch.manual_seed(3)
    proposals = EfficientDetProposalGenerator(input_shape=backbone.output_shape(), image_size=S,
                                              repeats=1, pre_nms_topk=500, max_detections=20)
    cls_out = [torch.randn(3, 9 * 46, S // 2**lvl, S // 2**lvl) for lvl in range(3, 8)]
    box_out = [torch.randn(3, 9 * 4, S // 2**lvl, S // 2**lvl) * 0.1 for lvl in range(3, 8)]
    batched = proposals.detect(cls_out, box_out)
    for i in range(3):
        single = proposals.detect([c[i:i + 1] for c in cls_out], [b[i:i + 1] for b in box_out])
        for key in ("boxes", "scores", "classes", "valid"):
            torch.testing.assert_close(batched[key][i], single[key][0])
        # the reference: per-class NMS inside this image
        n = int(single["valid"].sum())
        keep = batched_nms(single["boxes"][0, :n], single["scores"][0, :n],
                           single["classes"][0, :n], 0.5)
        assert keep.numel() == n


def test_mask_head_shapes_and_zero_boxes(parts):
    backbone, _, mask_head = parts
    feats = backbone(torch.randn(2, 3, S, S))
    boxes = [torch.tensor([[0.0, 0, 64, 64], [10, 10, 30, 40]]), torch.zeros(0, 4)]
    logits = mask_head(feats, boxes, [torch.tensor([3, 45]), torch.zeros(0, dtype=torch.long)])
    assert logits.shape == (2, 28, 28)
    empty = mask_head(feats, [torch.zeros(0, 4)] * 2, [torch.zeros(0, dtype=torch.long)] * 2)
    assert empty.shape == (0, 28, 28)
    loss = mask_rcnn_loss(empty, torch.zeros(0, 28, 28))
    assert loss == 0 and torch.isfinite(loss)


def test_training_rois_and_targets():
    gt = {"boxes": torch.tensor([[10.0, 10, 50, 60], [60, 60, 100, 120]]),
          "classes": torch.tensor([0, 5])}
    # a padded batch of one image; the last row is padding: not valid, so never used
    dets = {"boxes": torch.tensor([[[11.0, 10, 50, 61], [0, 0, 5, 5], [60, 60, 101, 119],
                                    [10, 10, 50, 60]]]),
            "scores": torch.tensor([[0.9, 0.95, 0.1, 0.99]]),
            "valid": torch.tensor([[True, True, True, False]])}
    rois, matched = select_training_rois(dets, [gt], score_thresh=0.3, batch_size_per_image=64,
                                         jitter_copies=0)
    # the good high-score detection + both GT; the background one and the low-score one are out
    assert rois[0].shape == (3, 4) and matched[0].tolist() == [0, 0, 1]
    rois_small, _ = select_training_rois(dets, [gt], score_thresh=0.3, batch_size_per_image=2,
                                         jitter_copies=0)
    assert rois_small[0].shape == (2, 4)
    masks = torch.zeros(2, S, S, dtype=torch.uint8)
    masks[0, 10:60, 10:50] = 1
    masks[1, 60:120, 60:100] = 1
    targets = mask_rcnn_targets([masks], [gt["boxes"]], [torch.tensor([0, 1])])
    assert targets.shape == (2, 28, 28) and targets.min() == 1  # a full-box rectangle
    half = mask_rcnn_targets([masks], [torch.tensor([[30.0, 10, 70, 60]])], [torch.tensor([0])])
    assert 0.4 < half.mean() < 0.6  # the left half of the RoI is on
    _, no_gt = select_training_rois(dets, [{"boxes": torch.zeros(0, 4),
                                            "classes": torch.zeros(0, dtype=torch.long)}])
    assert no_gt[0].numel() == 0


def test_paste_masks_only_inside_box():
    probs = torch.ones(2, 28, 28)
    boxes = torch.tensor([[10.0, 20.0, 40.0, 30.0], [250.0, 150.0, 400.0, 260.0]])
    pasted = paste_masks_in_image(probs, boxes, 200, 300)
    assert pasted.shape == (2, 200, 300) and pasted.dtype == torch.bool
    expected = torch.zeros(200, 300, dtype=torch.bool)
    expected[20:30, 10:40] = True
    assert torch.equal(pasted[0], expected)
    assert pasted[1].sum() == 50 * 50 and pasted[1, 150:, 250:].all()  # clipped to the image
    assert paste_masks_in_image(torch.zeros(0, 28, 28), torch.zeros(0, 4), 5, 7).shape == (0, 5, 7)


@pytest.mark.parametrize("batch,n,k", [(1, 4 * 4600, 1000), (3, 2 * 999, 500), (2, 7 * 13, 5),
                                       (1, 100, 100)])
def test_chunked_topk_equals_topk(batch, n, k):
    from effdetmask.modeling.proposal_generator import chunked_topk

    values = torch.randn(batch, n, generator=torch.Generator().manual_seed(n))
    want_values, want_idx = values.topk(k, dim=1)
    got_values, got_idx = chunked_topk(values, k)
    assert torch.equal(got_values, want_values)
    assert torch.equal(got_idx, want_idx)  # distinct random values: no ties
