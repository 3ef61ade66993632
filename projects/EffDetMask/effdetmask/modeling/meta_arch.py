"""The fused model: EfficientNet + BiFPN -> EfficientDet heads (detector) -> Mask R-CNN mask."""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Sequence

import torch
import torch.nn as nn

from .inference import inference_context
from .mask_head import mask_rcnn_loss, mask_rcnn_targets, select_training_rois
from .postprocess import finalize_instances, image_meta, select_padded
from .registry import (
    BACKBONE_REGISTRY,
    META_ARCH_REGISTRY,
    PROPOSAL_GENERATOR_REGISTRY,
    ROI_MASK_HEAD_REGISTRY,
)

__all__ = ["EffDetMask", "normalize_images", "targets_from_inputs"]


def normalize_images(
    batched_inputs: Sequence[Dict[str, Any]], pixel_mean: torch.Tensor, pixel_std: torch.Tensor
) -> torch.Tensor:
    """Stack mapper ``image`` (``uint8 [3, S, S]`` RGB) into ``float [B, 3, S, S]`` normalised.

    ``pixel_mean``/``pixel_std`` are ``[3, 1, 1]`` on the 0..255 scale; their device is used.
    """
    images = torch.stack([x["image"] for x in batched_inputs]).to(pixel_mean.device)
    return (images.float() - pixel_mean) / pixel_std


def targets_from_inputs(
    batched_inputs: Sequence[Dict[str, Any]], device: torch.device
) -> List[Dict[str, torch.Tensor]]:
    """The mapper's ``instances`` (boxes xyxy input pixels, classes 0..45, masks) on ``device``."""
    targets = []
    for k, x in enumerate(batched_inputs):
        if "instances" not in x:
            raise ValueError(f"training needs 'instances' in every input; input {k} "
                             f"(image_id {x.get('image_id')}) has none")
        inst = x["instances"]
        targets.append({
            "boxes": inst["boxes"].to(device=device, dtype=torch.float32).reshape(-1, 4),
            "classes": inst["classes"].to(device=device, dtype=torch.long).reshape(-1),
            "masks": inst["masks"].to(device=device),
        })
    return targets


@META_ARCH_REGISTRY.register()
class EffDetMask(nn.Module):
    """Composition only: normalise -> backbone -> proposal generator -> mask head -> postprocess.

    ``forward(batched_inputs, return_rle=None)`` takes a list of mapper outputs
    (``docs/interfaces.md``). Training: ``{"loss_cls", "loss_box", "loss_mask"}`` scalars (already
    weighted). Eval: per image ``{"instances": {...}}`` from :func:`finalize_instances`; the
    batch goes through padded detections and one mask-head call, no per-image loop.
    """

    def __init__(
        self,
        *,
        backbone: nn.Module,
        proposal_generator: nn.Module,
        mask_head: nn.Module,
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
        mask_train_score_thresh: float = 0.3,
        mask_iou_thresh: float = 0.5,
        mask_batch_size_per_image: int = 64,
        mask_gt_jitter_copies: int = 2,
        mask_gt_jitter_std: float = 0.1,
        mask_loss_weight: float = 1.0,
        mask_threshold: float = 0.5,
        score_thresh: float = 0.05,
        detections_per_image: int = 100,
        return_rle: bool = False,
        amp_dtype: str = "",
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.proposal_generator = proposal_generator
        self.mask_head = mask_head
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(3, 1, 1), persistent=False)
        self.roi_kwargs = dict(score_thresh=mask_train_score_thresh, iou_thresh=mask_iou_thresh,
                               batch_size_per_image=mask_batch_size_per_image,
                               jitter_copies=mask_gt_jitter_copies, jitter_std=mask_gt_jitter_std)
        self.mask_loss_weight = mask_loss_weight
        self.mask_threshold = mask_threshold
        self.score_thresh = score_thresh
        self.detections_per_image = detections_per_image
        self.return_rle = return_rle
        self.amp_dtype = amp_dtype
        # set by inference.apply_inference_options: a compiled / CUDA-graphed dense_forward
        self.dense_impl: Optional[Callable] = None

    @classmethod
    def from_config(cls, cfg) -> dict:
        backbone = BACKBONE_REGISTRY.get(cfg.MODEL.BACKBONE.NAME)
        backbone = backbone(**backbone.from_config(cfg))
        shape = backbone.output_shape()
        proposals = PROPOSAL_GENERATOR_REGISTRY.get(cfg.MODEL.EFFDET_HEAD.NAME)
        mask_head = ROI_MASK_HEAD_REGISTRY.get(cfg.MODEL.ROI_MASK_HEAD.NAME)
        head = cfg.MODEL.ROI_MASK_HEAD
        return dict(
            backbone=backbone,
            proposal_generator=proposals(**proposals.from_config(cfg, input_shape=shape)),
            mask_head=mask_head(**mask_head.from_config(cfg, input_shape=shape)),
            pixel_mean=cfg.MODEL.PIXEL_MEAN,
            pixel_std=cfg.MODEL.PIXEL_STD,
            mask_train_score_thresh=head.TRAIN_SCORE_THRESH,
            mask_iou_thresh=head.IOU_THRESH,
            mask_batch_size_per_image=head.BATCH_SIZE_PER_IMAGE,
            mask_gt_jitter_copies=head.GT_JITTER_COPIES,
            mask_gt_jitter_std=head.GT_JITTER_STD,
            mask_loss_weight=head.LOSS_WEIGHT,
            mask_threshold=head.MASK_THRESHOLD,
            score_thresh=cfg.TEST.SCORE_THRESH,
            detections_per_image=cfg.TEST.DETECTIONS_PER_IMAGE,
            return_rle=cfg.TEST.RETURN_RLE,
            amp_dtype=cfg.TEST.AMP_DTYPE,
        )

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def dense_forward(self, images: torch.Tensor):
        """The static-shape part (what ``torch.compile`` / CUDA graphs / ONNX capture):
        normalised ``float [B, 3, S, S]`` -> (features dict, class logits, box codes per level)."""
        features = self.backbone(images)
        cls_outputs, box_outputs = self.proposal_generator.head_outputs(features)
        return features, cls_outputs, box_outputs

    def forward(self, batched_inputs: List[Dict[str, Any]], return_rle: Optional[bool] = None):
        images = normalize_images(batched_inputs, self.pixel_mean, self.pixel_std)
        if self.training:
            return self._losses(batched_inputs, self.backbone(images))
        with inference_context(self.device, self.amp_dtype):
            features, cls_outputs, box_outputs = (self.dense_impl or self.dense_forward)(images)
            detections = self.proposal_generator.detect(cls_outputs, box_outputs)
            scales, heights, widths = image_meta(batched_inputs, self.device)
            keep = select_padded(detections, scales, heights, widths,
                                 score_thresh=self.score_thresh,
                                 max_detections=self.detections_per_image)
            kept = {k: v[keep] for k, v in detections.items()}
            image_idx = keep.nonzero()[:, :1].to(kept["boxes"].dtype)
            logits = self.mask_head.forward_rois(
                features, torch.cat([image_idx, kept["boxes"]], dim=1), kept["classes"])
        instances = finalize_instances(
            kept["boxes"], kept["scores"], kept["classes"], logits.float().sigmoid(),
            counts=keep.sum(1).tolist(), scales=[float(x["scale"]) for x in batched_inputs],
            heights=[int(x["height"]) for x in batched_inputs],
            widths=[int(x["width"]) for x in batched_inputs], mask_threshold=self.mask_threshold,
            return_rle=self.return_rle if return_rle is None else return_rle,
        )
        return [{"instances": inst} for inst in instances]

    def _losses(self, batched_inputs, features) -> Dict[str, torch.Tensor]:
        targets = targets_from_inputs(batched_inputs, self.device)
        detections, losses = self.proposal_generator(features, targets)
        rois, matched = select_training_rois(detections, targets, **self.roi_kwargs)
        classes = [t["classes"][m] for t, m in zip(targets, matched)]
        logits = self.mask_head(features, rois, classes)
        mask_targets = mask_rcnn_targets([t["masks"] for t in targets], rois, matched,
                                         logits.shape[-1])
        losses["loss_mask"] = self.mask_loss_weight * mask_rcnn_loss(logits, mask_targets)
        return losses
