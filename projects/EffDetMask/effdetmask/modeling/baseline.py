"""Baseline: torchvision Mask R-CNN R50-FPN behind the same input/output contract as EffDetMask."""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

import torch
import torch.nn as nn
from torch.nn.utils.rnn import pad_sequence
from torchvision.models.detection import maskrcnn_resnet50_fpn
from torchvision.models.detection.image_list import ImageList

from ..structures.boxes import classes_to_torchvision, torchvision_to_classes
from .attribute_head import ATTRIBUTE_LOSSES, attribute_loss, attribute_targets
from .meta_arch import normalize_images, targets_from_inputs
from .postprocess import instances_from_detections, select_detections
from .registry import META_ARCH_REGISTRY
from .roi_heads import build_attribute_head

__all__ = ["MaskRCNNBaseline"]

# torchvision's loss names -> this project's (loss_cls / loss_box / loss_mask as in EffDetMask)
_LOSS_NAMES = {
    "loss_classifier": "loss_cls",
    "loss_box_reg": "loss_box",
    "loss_mask": "loss_mask",
    "loss_objectness": "loss_rpn_cls",
    "loss_rpn_box_reg": "loss_rpn_box",
}


@META_ARCH_REGISTRY.register()
class MaskRCNNBaseline(nn.Module):
    """torchvision ``maskrcnn_resnet50_fpn`` with 46 apparel classes + background.

    Apparel class ``c`` (0..45, class 0 "shirt, blouse" included) is torchvision label ``c + 1``;
    the conversion is :mod:`effdetmask.structures.boxes`'. Inputs are the same mapper outputs as
    EffDetMask, normalised the same way; torchvision's ``GeneralizedRCNNTransform`` is bypassed
    (our mapper already letterboxes to ``S x S``, so it must not resize again) and its
    ``min_size = max_size = S`` only matters if ``self.net`` is called directly. Outputs go through
    the same :func:`select_detections` and :func:`instances_from_detections` as EffDetMask's
    (original coordinates, masks pasted at original resolution or RLE).

    ``attribute_head`` (optional, :class:`.attribute_head.AttributeHead` on ``[K, 256, 7, 7]``)
    is EffDetMask's attribute head on this model's own RoI features (its 7x7 box pooler): it trains
    on the positive proposals of torchvision's own matching and sampling (a separate draw from
    the box head's, after it), adding ``loss_attribute``, and scores the final boxes at inference.
    """

    def __init__(
        self,
        *,
        num_classes: int = 46,
        image_size: int = 512,
        pixel_mean: Sequence[float] = (123.675, 116.28, 103.53),
        pixel_std: Sequence[float] = (58.395, 57.12, 57.375),
        score_thresh: float = 0.05,
        detections_per_image: int = 100,
        mask_threshold: float = 0.5,
        return_rle: bool = False,
        attribute_head: Optional[nn.Module] = None,
        attribute_loss: str = "bce",
        attribute_loss_weight: float = 1.0,
        attribute_score_thresh: float = 0.5,
    ) -> None:
        super().__init__()
        self.net = maskrcnn_resnet50_fpn(
            weights=None, weights_backbone=None, num_classes=num_classes + 1,
            min_size=image_size, max_size=image_size,
            image_mean=[m / 255.0 for m in pixel_mean], image_std=[s / 255.0 for s in pixel_std],
            box_detections_per_img=detections_per_image, box_score_thresh=score_thresh,
        )
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(3, 1, 1), persistent=False)
        self.image_size = image_size
        self.score_thresh = score_thresh
        self.detections_per_image = detections_per_image
        self.mask_threshold = mask_threshold
        self.return_rle = return_rle
        if attribute_loss not in ATTRIBUTE_LOSSES:
            raise ValueError(f"MODEL.ROI_ATTRIBUTE_HEAD.LOSS must be one of {ATTRIBUTE_LOSSES}, "
                             f"got {attribute_loss!r}")
        self.attribute_head = attribute_head
        self.num_classes = num_classes
        self.attribute_loss = attribute_loss
        self.attribute_loss_weight = attribute_loss_weight
        self.attribute_score_thresh = attribute_score_thresh

    @classmethod
    def from_config(cls, cfg) -> dict:
        attr = cfg.MODEL.ROI_ATTRIBUTE_HEAD
        return dict(
            attribute_head=(build_attribute_head(cfg, in_channels=256, pooler_resolution=7)
                            if attr.ENABLED else None),
            attribute_loss=attr.LOSS,
            attribute_loss_weight=attr.LOSS_WEIGHT,
            attribute_score_thresh=attr.SCORE_THRESH,
            num_classes=cfg.MODEL.NUM_CLASSES,
            image_size=cfg.INPUT.SIZE,
            pixel_mean=cfg.MODEL.PIXEL_MEAN,
            pixel_std=cfg.MODEL.PIXEL_STD,
            score_thresh=cfg.TEST.SCORE_THRESH,
            detections_per_image=cfg.TEST.DETECTIONS_PER_IMAGE,
            mask_threshold=cfg.MODEL.ROI_MASK_HEAD.MASK_THRESHOLD,
            return_rle=cfg.TEST.RETURN_RLE,
        )

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def forward(self, batched_inputs: List[Dict[str, Any]], return_rle: Optional[bool] = None):
        images = normalize_images(batched_inputs, self.pixel_mean, self.pixel_std)
        image_list = ImageList(images, [tuple(images.shape[-2:])] * images.shape[0])
        features = self.net.backbone(images)
        ours, targets = None, None
        if self.training:
            ours = targets_from_inputs(batched_inputs, self.device)
            targets = [{"boxes": t["boxes"], "labels": classes_to_torchvision(t["classes"]),
                        "masks": t["masks"]} for t in ours]
        proposals, rpn_losses = self.net.rpn(image_list, features, targets)
        detections, head_losses = self.net.roi_heads(
            features, proposals, image_list.image_sizes, targets
        )
        if self.training:
            losses = {_LOSS_NAMES.get(k, k): v for k, v in {**rpn_losses, **head_losses}.items()}
            if self.attribute_head is not None:
                losses["loss_attribute"] = self._attribute_loss(
                    features, proposals, image_list.image_sizes, targets, ours)
            return losses
        if self.attribute_head is not None:
            x = self.net.roi_heads.box_roi_pool(features, [d["boxes"] for d in detections],
                                                image_list.image_sizes)
            scores = self.attribute_head(x).float().sigmoid()
            for d, s in zip(detections, scores.split([len(d["boxes"]) for d in detections])):
                d["attribute_scores"] = s
        return self._postprocess(batched_inputs, detections,
                                 self.return_rle if return_rle is None else return_rle)

    def _attribute_loss(self, features, proposals, image_sizes, targets, ours) -> torch.Tensor:
        """``loss_attribute`` on the positives of torchvision's matching and sampling of the
        (detached) proposals plus GT boxes; ``ours``: :func:`targets_from_inputs` output."""
        heads = self.net.roi_heads
        props, matched, labels, _ = heads.select_training_samples(
            [p.detach() for p in proposals], targets)
        pos = [torch.where(lab > 0)[0] for lab in labels]
        x = heads.box_roi_pool(features, [p[i] for p, i in zip(props, pos)], image_sizes)
        tgt = attribute_targets(ours, [m[i] for m, i in zip(matched, pos)], self.num_classes)
        return self.attribute_loss_weight * attribute_loss(
            self.attribute_head(x), tgt["attributes"], tgt["valid"], loss=self.attribute_loss)

    def _postprocess(self, batched_inputs, detections, return_rle: bool) -> List[Dict[str, Any]]:
        kept = select_detections(_pad(detections), batched_inputs, score_thresh=self.score_thresh,
                                 max_detections=self.detections_per_image)
        return instances_from_detections(kept, kept["masks"], batched_inputs,
                                         mask_threshold=self.mask_threshold, return_rle=return_rle,
                                         attribute_score_thresh=self.attribute_score_thresh)


def _pad(detections: List[Dict[str, torch.Tensor]]) -> Dict[str, torch.Tensor]:
    """torchvision's per-image detections (sorted by score) -> the padded batch of
    :func:`select_detections`: ``boxes [B, N, 4]``, ``scores``, ``classes`` (0..45), ``masks``
    ``[B, N, R, R]``, ``valid`` and, with an attribute head, ``attribute_scores`` ``[B, N, 294]``;
    ``N`` the largest count."""
    rows = {
        "boxes": [d["boxes"] for d in detections],
        "scores": [d["scores"] for d in detections],
        "classes": [torchvision_to_classes(d["labels"]) for d in detections],
        "masks": [d["masks"][:, 0] for d in detections],
        "valid": [torch.ones_like(d["scores"], dtype=torch.bool) for d in detections],
    }
    if detections and "attribute_scores" in detections[0]:
        rows["attribute_scores"] = [d["attribute_scores"] for d in detections]
    return {k: pad_sequence(v, batch_first=True, padding_value=-1 if k == "scores" else 0)
            for k, v in rows.items()}
