"""RoI heads of EffDetMask: training RoIs, the mask head, the attribute head, their losses and
their inference (detectron2's ``StandardROIHeads``; the contract is
:data:`.registry.ROI_HEADS_REGISTRY`'s).
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import torch
import torch.nn as nn

from ..data.taxonomy import NUM_ATTRIBUTES
from .attribute_head import ATTRIBUTE_LOSSES, AttributeHead, attribute_loss, attribute_targets
from .effdet_utils import ShapeSpec
from .mask_head import mask_rcnn_loss, mask_rcnn_targets, select_training_rois
from .registry import ROI_HEADS_REGISTRY, ROI_MASK_HEAD_REGISTRY
from .roi_pool import MultiLevelRoIAlign

__all__ = ["EffDetROIHeads", "build_attribute_head", "flat_rois"]


def flat_rois(boxes_xyxy: Sequence[torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
    """Per-image ``[N_i, 4]`` boxes -> ``[sum N_i, 5]`` rows ``(image index, x0, y0, x1, y1)``."""
    rows = [torch.cat([torch.full_like(b[:, :1], i), b], dim=1).to(dtype)
            for i, b in enumerate(boxes_xyxy)]
    return torch.cat(rows) if rows else torch.zeros(0, 5, dtype=dtype)


@ROI_HEADS_REGISTRY.register()
class EffDetROIHeads(nn.Module):
    """Training RoI selection (:func:`.mask_head.select_training_rois`) -> mask head (+ attribute
    head on the same RoIs) -> losses; at inference both heads on the reported detections.

    Args:
        mask_head: a ``ROI_MASK_HEAD_REGISTRY`` module (``forward`` / ``forward_rois``).
        attribute_head: an :class:`.attribute_head.AttributeHead` or ``None`` (no attribute
            outputs, no ``loss_attribute``: the model of before the head existed).
        attribute_pooler: RoIAlign of the attribute head's input, over ``in_features``.
        in_features: the pyramid levels (``"p3"``...) ``attribute_pooler`` pools from.
        num_classes: categories (0..num_classes-1).
        train_score_thresh, iou_thresh, batch_size_per_image, gt_jitter_copies, gt_jitter_std:
            :func:`.mask_head.select_training_rois`' arguments.
        mask_loss_weight / attribute_loss_weight: weights of ``loss_mask`` / ``loss_attribute``.
        attribute_loss: ``"bce"`` or ``"focal"`` (:func:`.attribute_head.attribute_loss`).
    """

    def __init__(
        self,
        *,
        mask_head: nn.Module,
        attribute_head: Optional[nn.Module] = None,
        attribute_pooler: Optional[nn.Module] = None,
        in_features: Sequence[str] = ("p3", "p4", "p5"),
        num_classes: int = 46,
        train_score_thresh: float = 0.3,
        iou_thresh: float = 0.5,
        batch_size_per_image: int = 64,
        gt_jitter_copies: int = 2,
        gt_jitter_std: float = 0.1,
        mask_loss_weight: float = 1.0,
        attribute_loss: str = "bce",
        attribute_loss_weight: float = 1.0,
    ) -> None:
        super().__init__()
        if attribute_loss not in ATTRIBUTE_LOSSES:
            raise ValueError(f"MODEL.ROI_ATTRIBUTE_HEAD.LOSS must be one of {ATTRIBUTE_LOSSES}, "
                             f"got {attribute_loss!r}")
        if (attribute_head is None) != (attribute_pooler is None):
            raise ValueError("attribute_head and attribute_pooler go together")
        self.mask_head = mask_head
        if attribute_head is not None:
            self.attribute_head = attribute_head
            self.attribute_pooler = attribute_pooler
        else:
            self.attribute_head = self.attribute_pooler = None
        self.in_features = list(in_features)
        self.num_classes = num_classes
        self.roi_kwargs = dict(score_thresh=train_score_thresh, iou_thresh=iou_thresh,
                               batch_size_per_image=batch_size_per_image,
                               jitter_copies=gt_jitter_copies, jitter_std=gt_jitter_std)
        self.mask_loss_weight = mask_loss_weight
        self.attribute_loss = attribute_loss
        self.attribute_loss_weight = attribute_loss_weight

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]) -> dict:
        mask = cfg.MODEL.ROI_MASK_HEAD
        heads = cfg.MODEL.ROI_HEADS
        attr = cfg.MODEL.ROI_ATTRIBUTE_HEAD
        mask_cls = ROI_MASK_HEAD_REGISTRY.get(mask.NAME)
        in_features = [f"p{lvl}" for lvl in mask.IN_LEVELS]
        kwargs = dict(
            mask_head=mask_cls(**mask_cls.from_config(cfg, input_shape=input_shape)),
            in_features=in_features,
            num_classes=cfg.MODEL.NUM_CLASSES,
            train_score_thresh=heads.TRAIN_SCORE_THRESH,
            iou_thresh=heads.IOU_THRESH,
            batch_size_per_image=heads.BATCH_SIZE_PER_IMAGE,
            gt_jitter_copies=heads.GT_JITTER_COPIES,
            gt_jitter_std=heads.GT_JITTER_STD,
            mask_loss_weight=mask.LOSS_WEIGHT,
            attribute_loss=attr.LOSS,
            attribute_loss_weight=attr.LOSS_WEIGHT,
        )
        if attr.ENABLED:
            kwargs["attribute_pooler"] = MultiLevelRoIAlign(
                strides=[input_shape[n].stride for n in in_features],
                output_size=attr.POOLER_RESOLUTION, sampling_ratio=mask.POOLER_SAMPLING_RATIO,
                canonical_box_size=mask.CANONICAL_BOX_SIZE, canonical_level=mask.CANONICAL_LEVEL)
            kwargs["attribute_head"] = build_attribute_head(
                cfg, in_channels=input_shape[in_features[0]].channels)
        return kwargs

    def forward(
        self,
        features: Dict[str, torch.Tensor],
        detections: Dict[str, torch.Tensor],
        targets: List[Dict[str, torch.Tensor]],
    ) -> Dict[str, torch.Tensor]:
        """Training losses: ``loss_mask`` and, with the attribute head, ``loss_attribute``."""
        rois, matched = select_training_rois(detections, targets, **self.roi_kwargs)
        classes = [t["classes"][m] for t, m in zip(targets, matched)]
        logits = self.mask_head(features, rois, classes)
        mask_targets = mask_rcnn_targets([t["masks"] for t in targets], rois, matched,
                                         logits.shape[-1])
        losses = {"loss_mask": self.mask_loss_weight * mask_rcnn_loss(logits, mask_targets)}
        if self.attribute_head is not None:
            x = self.attribute_pooler([features[n] for n in self.in_features],
                                      flat_rois(rois, features[self.in_features[0]].dtype))
            tgt = attribute_targets(targets, matched, self.num_classes)
            losses["loss_attribute"] = self.attribute_loss_weight * attribute_loss(
                self.attribute_head(x), tgt["attributes"], tgt["valid"], loss=self.attribute_loss)
        return losses

    def inference(self, features: Dict[str, torch.Tensor], rois: torch.Tensor,
                  classes: torch.Tensor) -> Dict[str, torch.Tensor]:
        """``mask_probs`` float ``[K, 2R, 2R]`` and (with the attribute head)
        ``attribute_scores`` float ``[K, 294]`` of flat ``rois`` ``[K, 5]`` of ``classes``."""
        out = {"mask_probs": self.mask_head.forward_rois(features, rois, classes).float()
               .sigmoid()}
        if self.attribute_head is not None:
            x = self.attribute_pooler([features[n] for n in self.in_features], rois)
            out["attribute_scores"] = self.attribute_head(x).float().sigmoid()
        return out


def build_attribute_head(cfg, in_channels: int,
                         pooler_resolution: Optional[int] = None) -> AttributeHead:
    """The :class:`.attribute_head.AttributeHead` of MODEL.ROI_ATTRIBUTE_HEAD on ``in_channels``
    pooled channels at ``pooler_resolution`` (default its POOLER_RESOLUTION): the fused model's
    and the baseline's (which pools with its own 7x7 box pooler).

    Its initial weights are drawn from a fork of the global RNG, so every other part of a model
    initialises the same with the head as without it."""
    attr = cfg.MODEL.ROI_ATTRIBUTE_HEAD
    with torch.random.fork_rng(devices=[]):
        return AttributeHead(
            in_channels=in_channels, conv_dim=attr.CONV_DIM, num_conv=attr.NUM_CONV,
            pooler_resolution=pooler_resolution or attr.POOLER_RESOLUTION, fc_dim=attr.FC_DIM,
            num_attributes=NUM_ATTRIBUTES)
