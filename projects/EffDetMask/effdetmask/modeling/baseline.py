"""Baseline: torchvision Mask R-CNN R50-FPN behind the same input/output contract as EffDetMask."""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

import torch
import torch.nn as nn
from torchvision.models.detection import maskrcnn_resnet50_fpn
from torchvision.models.detection.image_list import ImageList

from ..structures.boxes import classes_to_torchvision, torchvision_to_classes
from .meta_arch import normalize_images, targets_from_inputs
from .postprocess import finalize_instances, select_detections
from .registry import META_ARCH_REGISTRY

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
    the same :func:`finalize_instances` (original coordinates, masks pasted at original
    resolution or RLE).
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

    @classmethod
    def from_config(cls, cfg) -> dict:
        return dict(
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
        targets = None
        if self.training:
            targets = [
                {"boxes": t["boxes"], "labels": classes_to_torchvision(t["classes"]),
                 "masks": t["masks"]}
                for t in targets_from_inputs(batched_inputs, self.device)
            ]
        proposals, rpn_losses = self.net.rpn(image_list, features, targets)
        detections, head_losses = self.net.roi_heads(
            features, proposals, image_list.image_sizes, targets
        )
        if self.training:
            return {_LOSS_NAMES.get(k, k): v for k, v in {**rpn_losses, **head_losses}.items()}
        return self._postprocess(batched_inputs, detections,
                                 self.return_rle if return_rle is None else return_rle)

    def _postprocess(self, batched_inputs, detections, return_rle: bool) -> List[Dict[str, Any]]:
        picked = []
        for x, det in zip(batched_inputs, detections):
            classes = torchvision_to_classes(det["labels"])
            idx = select_detections(
                det["boxes"], det["scores"], classes, scale=float(x["scale"]),
                height=int(x["height"]), width=int(x["width"]),
                score_thresh=self.score_thresh, max_detections=self.detections_per_image,
            )
            picked.append((det["boxes"][idx], det["scores"][idx], classes[idx],
                           det["masks"][idx, 0]))
        boxes, scores, classes, probs = (torch.cat(t) for t in zip(*picked))
        instances = finalize_instances(
            boxes, scores, classes, probs, counts=[len(p[1]) for p in picked],
            scales=[float(x["scale"]) for x in batched_inputs],
            heights=[int(x["height"]) for x in batched_inputs],
            widths=[int(x["width"]) for x in batched_inputs],
            mask_threshold=self.mask_threshold, return_rle=return_rle,
        )
        return [{"instances": inst} for inst in instances]
