"""From detections in model-input pixels to the output contract in original-image pixels.

Shared by :class:`~effdetmask.modeling.meta_arch.EffDetMask` and the Mask R-CNN baseline so both
report instances identically (``docs/interfaces.md``).
"""

from __future__ import annotations

from typing import Any, Dict

import torch

from ..structures.boxes import input_to_original
from ..structures.masks import coco_rle_encode
from .mask_head import paste_masks_in_image

__all__ = ["select_detections", "detector_postprocess"]


def select_detections(
    boxes_xyxy: torch.Tensor,
    scores: torch.Tensor,
    classes: torch.Tensor,
    *,
    scale: float,
    height: int,
    width: int,
    score_thresh: float,
    max_detections: int,
) -> torch.Tensor:
    """Indices of the detections to report: score ``>= score_thresh``, a non-empty box inside the
    original image (the rest lies on the letterbox padding), at most ``max_detections``, by score.

    Args:
        boxes_xyxy: ``float [N, 4]`` input pixels; scores ``[N]``; classes ``[N]``.
    Returns:
        ``int64 [K]`` indices, ``K <= max_detections``, sorted by decreasing score.
    """
    orig = input_to_original(boxes_xyxy, scale, height, width)
    ok = (scores >= score_thresh) & (orig[:, 2] > orig[:, 0]) & (orig[:, 3] > orig[:, 1])
    idx = torch.nonzero(ok).reshape(-1)
    order = scores[idx].argsort(descending=True)[:max_detections]
    return idx[order]


def detector_postprocess(
    boxes_xyxy: torch.Tensor,
    scores: torch.Tensor,
    classes: torch.Tensor,
    mask_probs: torch.Tensor,
    *,
    scale: float,
    height: int,
    width: int,
    mask_threshold: float = 0.5,
    return_rle: bool = False,
) -> Dict[str, Any]:
    """One image's instances in original-image pixels.

    Args:
        boxes_xyxy: ``float [N, 4]`` in letterboxed input pixels.
        scores: ``float [N]``; classes: ``int64 [N]`` 0..45.
        mask_probs: ``float [N, R, R]`` probabilities of each box's class.
        scale: input pixels per original pixel; height/width: the original size.
    Returns:
        ``{"boxes": float32 [N, 4] xyxy original pixels, "scores": float32 [N], "classes": int64
        [N], "masks": bool [N, height, width]}`` or ``"masks_rle"`` (list of COCO RLE dicts with
        ``str`` counts) instead of ``"masks"``. ``N`` may be 0 or 1; nothing is 0-d.
    """
    boxes_xyxy = boxes_xyxy.reshape(-1, 4).float()
    # paste with the unclipped box the mask was predicted for; report the clipped box
    boxes_orig = boxes_xyxy / scale
    masks = paste_masks_in_image(
        mask_probs.reshape(-1, *mask_probs.shape[-2:]), boxes_orig, height, width, mask_threshold
    )
    out: Dict[str, Any] = {
        "boxes": input_to_original(boxes_xyxy, scale, height, width),
        "scores": scores.reshape(-1).float(),
        "classes": classes.reshape(-1).long(),
    }
    if return_rle:
        out["masks_rle"] = [coco_rle_encode(m) for m in masks.cpu().numpy()]
    else:
        out["masks"] = masks
    return out
