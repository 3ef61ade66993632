"""Mask R-CNN mask head on RoIAlign features of the BiFPN, and its plain-function helpers.

The learned part is the module; choosing training RoIs, building targets, the loss and pasting
masks into images are functions, as in torchvision's ``roi_heads``.
"""

from __future__ import annotations

import logging
import math
from typing import Dict, List, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.ops import box_iou, roi_align

from .effdet_utils import ShapeSpec
from .paste import paste_masks_in_image
from .registry import ROI_MASK_HEAD_REGISTRY
from .roi_pool import MultiLevelRoIAlign

logger = logging.getLogger(__name__)

__all__ = [
    "MaskRCNNConvUpsampleHead",
    "select_training_rois",
    "jitter_boxes",
    "unreachable_levels",
    "mask_rcnn_targets",
    "mask_rcnn_loss",
    "paste_masks_in_image",
]


def unreachable_levels(in_levels: Sequence[int], image_size: int, canonical_box_size: float,
                       canonical_level: int) -> List[int]:
    """The levels of ``in_levels`` above the one an ``image_size``-wide box is assigned to:
    no box of that input ever pools from them."""
    top = math.floor(canonical_level + math.log2(image_size / canonical_box_size) + 1e-6)
    return [lvl for lvl in in_levels if lvl > max(top, min(in_levels))]


@ROI_MASK_HEAD_REGISTRY.register()
class MaskRCNNConvUpsampleHead(nn.Module):
    """RoIAlign (FPN level mapping) -> ``num_conv`` x (3x3 conv + ReLU) -> 2x deconv + ReLU -> 1x1.

    ``forward(features, boxes_xyxy, classes) -> float [sum N_i, 2R, 2R]``: mask logits of the given
    class for each box, ``R = pooler_resolution``. ``boxes_xyxy`` are per image ``[N_i, 4]`` in
    input pixels, ``classes`` per image ``int64 [N_i]`` 0..num_classes-1.
    """

    def __init__(
        self,
        *,
        input_shape: Dict[str, ShapeSpec],
        in_levels: Sequence[int] = (3, 4, 5, 6),
        image_size: int = 512,
        num_classes: int = 46,
        pooler_resolution: int = 14,
        sampling_ratio: int = 2,
        conv_dim: int = 256,
        num_conv: int = 4,
        canonical_box_size: float = 224.0,
        canonical_level: int = 4,
    ) -> None:
        super().__init__()
        self.in_features = [f"p{lvl}" for lvl in in_levels]
        missing = [n for n in self.in_features if n not in input_shape]
        if missing:
            raise ValueError(
                f"ROI_MASK_HEAD.IN_LEVELS {list(in_levels)} needs {missing}; the backbone gives "
                f"{sorted(input_shape)}"
            )
        # a box pools from level floor(canonical_level + log2(sqrt(area) / canonical_box_size)),
        # clamped to the given levels: the FPN assignment of the Mask R-CNN paper
        dead = unreachable_levels(in_levels, image_size, canonical_box_size, canonical_level)
        if dead:
            logger.warning(
                "ROI_MASK_HEAD.IN_LEVELS %s: no box of a %d px input reaches level(s) %s (a box "
                "of side s pools from floor(%d + log2(s / %g))); drop them or lower "
                "CANONICAL_BOX_SIZE", list(in_levels), image_size, dead, canonical_level,
                canonical_box_size)
        self.pooler = MultiLevelRoIAlign(
            strides=[input_shape[n].stride for n in self.in_features],
            output_size=pooler_resolution, sampling_ratio=sampling_ratio,
            canonical_box_size=canonical_box_size, canonical_level=canonical_level,
        )
        self.image_size = image_size
        in_ch = input_shape[self.in_features[0]].channels
        layers: List[nn.Module] = []
        for k in range(num_conv):
            layers += [nn.Conv2d(in_ch if k == 0 else conv_dim, conv_dim, 3, padding=1), nn.ReLU()]
        self.convs = nn.Sequential(*layers)
        last = conv_dim if num_conv else in_ch
        self.deconv = nn.ConvTranspose2d(last, last, kernel_size=2, stride=2)
        self.predictor = nn.Conv2d(last, num_classes, kernel_size=1)
        for m in [*self.convs, self.deconv]:
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
        # small logits at the start: detectron2's and torchvision's predictor init
        nn.init.normal_(self.predictor.weight, std=0.001)
        nn.init.zeros_(self.predictor.bias)

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]) -> dict:
        head = cfg.MODEL.ROI_MASK_HEAD
        return dict(
            input_shape=input_shape,
            in_levels=tuple(head.IN_LEVELS),
            image_size=cfg.INPUT.SIZE,
            num_classes=cfg.MODEL.NUM_CLASSES,
            pooler_resolution=head.POOLER_RESOLUTION,
            sampling_ratio=head.POOLER_SAMPLING_RATIO,
            conv_dim=head.CONV_DIM,
            num_conv=head.NUM_CONV,
            canonical_box_size=head.CANONICAL_BOX_SIZE,
            canonical_level=head.CANONICAL_LEVEL,
        )

    def forward(
        self,
        features: Dict[str, torch.Tensor],
        boxes_xyxy: List[torch.Tensor],
        classes: List[torch.Tensor],
    ) -> torch.Tensor:
        dtype = features[self.in_features[0]].dtype
        boxes = [b.to(dtype) for b in boxes_xyxy]
        ids = [torch.full_like(b[:, :1], i) for i, b in enumerate(boxes)]
        rois = torch.cat([torch.cat(ids), torch.cat(boxes)], dim=1) if boxes else None
        if rois is None:
            rois = features[self.in_features[0]].new_zeros(0, 5)
        cls = torch.cat(classes) if classes else rois.new_zeros(0, dtype=torch.long)
        return self.forward_rois(features, rois, cls)

    def forward_rois(
        self, features: Dict[str, torch.Tensor], rois: torch.Tensor, classes: torch.Tensor
    ) -> torch.Tensor:
        """``rois``: ``float [K, 5]`` (image index, x0, y0, x1, y1 input pixels); ``classes``
        ``int64 [K]``. Returns the ``[K, 2R, 2R]`` logits of each RoI's class.

        The 1x1 predictor is evaluated for the one class each RoI needs instead of all of them
        (same values; ~2% of the head's FLOPs saved at 46 classes).
        """
        x = self.pooler([features[n] for n in self.in_features], rois)
        x = F.relu(self.deconv(self.convs(x)))
        weight = self.predictor.weight[:, :, 0, 0][classes]  # [K, C]
        return torch.einsum("kchw,kc->khw", x, weight.to(x.dtype)) + self.predictor.bias[
            classes
        ].to(x.dtype)[:, None, None]


def jitter_boxes(boxes_xyxy: torch.Tensor, copies: int, std: float) -> torch.Tensor:
    """``copies`` randomly shifted versions of each ``[N, 4]`` box: every edge moves by a normal
    offset of ``std`` times the box's width (x edges) or height (y edges). Returns
    ``[N * copies, 4]``, boxes at least 1 px wide and high, not left of or above 0."""
    if copies <= 0 or boxes_xyxy.numel() == 0:
        return boxes_xyxy.new_zeros(0, 4)
    size = (boxes_xyxy[:, 2:] - boxes_xyxy[:, :2]).repeat(1, 2)  # [N, 4]: w, h, w, h
    noise = torch.randn(copies, *boxes_xyxy.shape, device=boxes_xyxy.device,
                        dtype=boxes_xyxy.dtype)
    out = (boxes_xyxy + noise * std * size).reshape(-1, 4).clamp(min=0)
    return torch.cat([out[:, :2], torch.maximum(out[:, 2:], out[:, :2] + 1)], dim=1)


def select_training_rois(
    detections: Dict[str, torch.Tensor],
    targets: List[Dict[str, torch.Tensor]],
    *,
    score_thresh: float = 0.3,
    iou_thresh: float = 0.5,
    batch_size_per_image: int = 64,
    jitter_copies: int = 2,
    jitter_std: float = 0.1,
) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
    """Training RoIs: detections above ``score_thresh``, the GT boxes and ``jitter_copies``
    jittered copies of each GT box (:func:`jitter_boxes`), positives only.

    Early in training no detection passes the threshold, so exact GT boxes alone would train the
    head on RoIs unlike the detections it sees at test time; the jittered copies close that gap.
    A RoI is positive when its best IoU with a GT box is ``>= iou_thresh`` (the GT boxes always
    are) and is matched to that box; at most ``batch_size_per_image`` positives are sampled at
    random per image.

    Args:
        detections: the proposal generator's padded batch (``boxes`` ``[B, N, 4]``, ``scores``
            ``[B, N]``, ``valid`` ``bool [B, N]``); ``targets`` one dict per image.
    Returns:
        per image ``rois_xyxy`` float ``[M_i, 4]`` (input pixels, detached) and ``matched`` int64
        ``[M_i]`` (index of the matched GT instance).
    """
    rois, matched = [], []
    passing = detections["valid"] & (detections["scores"] > score_thresh)
    for boxes, ok, tgt in zip(detections["boxes"], passing, targets):
        gt = tgt["boxes"].to(boxes.dtype)
        cand = torch.cat([boxes[ok].detach(), gt, jitter_boxes(gt, jitter_copies, jitter_std)])
        if gt.numel() == 0:
            rois.append(cand.new_zeros(0, 4))
            matched.append(torch.zeros(0, dtype=torch.long, device=cand.device))
            continue
        best_iou, idx = box_iou(gt, cand).max(dim=0)  # per candidate: best GT
        pos = torch.nonzero(best_iou >= iou_thresh).squeeze(1)
        if pos.numel() > batch_size_per_image:
            perm = torch.randperm(pos.numel(), device=pos.device)[:batch_size_per_image]
            pos = pos[perm]
        rois.append(cand[pos])
        matched.append(idx[pos])
    return rois, matched


def mask_rcnn_targets(
    gt_masks: List[torch.Tensor], rois_xyxy: List[torch.Tensor], matched: List[torch.Tensor],
    resolution: int = 28,
) -> torch.Tensor:
    """GT masks cropped to each RoI and resized with RoIAlign: ``float [sum M_i, R, R]`` of 0/1.

    ``gt_masks`` per image ``uint8 [N_i, S, S]`` (input resolution), ``matched`` indexes them.
    One ``roi_align`` call for the batch: image ``i``'s indices are offset by the masks before it.
    """
    device = rois_xyxy[0].device if rois_xyxy else torch.device("cpu")
    offsets, start = [], 0
    for m, idx in zip(gt_masks, matched):
        offsets.append(idx + start)
        start += m.shape[0]
    rois = torch.cat(rois_xyxy).float()
    if rois.numel() == 0:
        return torch.zeros(0, resolution, resolution, device=device)
    masks = torch.cat([m for m in gt_masks if m.shape[0]]).to(device=device, dtype=torch.float32)
    index = torch.cat(offsets).to(device=device, dtype=torch.float32)
    crops = roi_align(masks[:, None], torch.cat([index[:, None], rois], dim=1),
                      (resolution, resolution), spatial_scale=1.0, sampling_ratio=0, aligned=True)
    return (crops[:, 0] >= 0.5).float()


def mask_rcnn_loss(mask_logits: torch.Tensor, mask_targets: torch.Tensor) -> torch.Tensor:
    """Mean per-pixel BCE on the GT class channel; 0 (still in the graph) when there are no RoIs."""
    if mask_logits.numel() == 0:
        return mask_logits.sum() * 0.0
    return F.binary_cross_entropy_with_logits(mask_logits.float(), mask_targets)
