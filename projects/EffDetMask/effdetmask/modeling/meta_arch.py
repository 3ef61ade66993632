"""The fused model: EfficientNet + BiFPN -> EfficientDet heads (detector) -> Mask R-CNN mask."""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Sequence

import torch
import torch.nn as nn

from .inference import inference_context
from .postprocess import instances_from_detections, select_detections
from .registry import (
    BACKBONE_REGISTRY,
    META_ARCH_REGISTRY,
    PROPOSAL_GENERATOR_REGISTRY,
    ROI_HEADS_REGISTRY,
)
from .weights import load_effdet_checkpoint

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
    """The mapper's ``instances`` on ``device``: ``boxes`` xyxy input pixels, ``classes`` 0..45,
    ``masks``, and ``attributes`` / ``attributes_known`` where the mapper gave them."""
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
        for key in ("attributes", "attributes_known"):
            if key in inst:
                targets[-1][key] = inst[key].to(device=device)
    return targets


@META_ARCH_REGISTRY.register()
class EffDetMask(nn.Module):
    """Composition only: normalise -> backbone -> proposal generator -> RoI heads -> postprocess.

    ``forward(batched_inputs, return_rle=None)`` takes a list of mapper outputs
    (``docs/interfaces.md``). Training: ``{"loss_cls", "loss_box", "loss_mask"}`` scalars (already
    weighted), plus ``loss_attribute`` with the attribute head. Eval: per image
    ``{"instances": {...}}``: the proposal generator's padded detections ->
    :func:`select_detections` -> one RoI-heads call (masks, attribute scores) ->
    :func:`instances_from_detections`, the same path as the ONNX graph and its runtime predictor;
    no per-image loop.
    """

    def __init__(
        self,
        *,
        backbone: nn.Module,
        proposal_generator: nn.Module,
        roi_heads: nn.Module,
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
        mask_threshold: float = 0.5,
        attribute_score_thresh: float = 0.5,
        score_thresh: float = 0.05,
        detections_per_image: int = 100,
        return_rle: bool = False,
        amp_dtype: str = "",
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.proposal_generator = proposal_generator
        self.roi_heads = roi_heads
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(3, 1, 1), persistent=False)
        self.mask_threshold = mask_threshold
        self.attribute_score_thresh = attribute_score_thresh
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
        proposals = PROPOSAL_GENERATOR_REGISTRY.get(cfg.MODEL.PROPOSAL_GENERATOR.NAME)
        proposal_generator = proposals(**proposals.from_config(cfg, input_shape=shape))
        roi_heads = ROI_HEADS_REGISTRY.get(cfg.MODEL.ROI_HEADS.NAME)
        return dict(
            backbone=backbone,
            proposal_generator=proposal_generator,
            roi_heads=roi_heads(**roi_heads.from_config(cfg, input_shape=shape)),
            pixel_mean=cfg.MODEL.PIXEL_MEAN,
            pixel_std=cfg.MODEL.PIXEL_STD,
            mask_threshold=cfg.MODEL.ROI_MASK_HEAD.MASK_THRESHOLD,
            attribute_score_thresh=cfg.MODEL.ROI_ATTRIBUTE_HEAD.SCORE_THRESH,
            score_thresh=cfg.TEST.SCORE_THRESH,
            detections_per_image=cfg.TEST.DETECTIONS_PER_IMAGE,
            return_rle=cfg.TEST.RETURN_RLE,
            amp_dtype=cfg.TEST.AMP_DTYPE,
        )

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    @property
    def mask_head(self) -> nn.Module:
        """The RoI heads' mask head (``roi_heads.mask_head``)."""
        return self.roi_heads.mask_head

    def load_effdet_checkpoint(self, path: str, prior_prob: float = 0.01) -> List[str]:
        """Backbone, BiFPN and box head from an effdet COCO checkpoint
        (MODEL.EFFDET_HEAD.EFFDET_CHECKPOINT, :func:`.weights.load_weights`); the class head is
        reset. Returns the state-dict keys assigned."""
        return load_effdet_checkpoint(self, path, prior_prob=prior_prob)

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
            kept = select_detections(detections, batched_inputs, score_thresh=self.score_thresh,
                                     max_detections=self.detections_per_image)
            rois = torch.cat([kept["image_index"][:, None].to(kept["boxes"].dtype),
                              kept["boxes"]], dim=1)
            outputs = self.roi_heads.inference(features, rois, kept["classes"])
        if "attribute_scores" in outputs:
            kept["attribute_scores"] = outputs["attribute_scores"]
        return instances_from_detections(
            kept, outputs["mask_probs"], batched_inputs, mask_threshold=self.mask_threshold,
            return_rle=self.return_rle if return_rle is None else return_rle,
            attribute_score_thresh=self.attribute_score_thresh,
        )

    def _losses(self, batched_inputs, features) -> Dict[str, torch.Tensor]:
        targets = targets_from_inputs(batched_inputs, self.device)
        detections, losses = self.proposal_generator(features, targets)
        losses.update(self.roi_heads(features, detections, targets))
        return losses
