"""From detections in model-input pixels to the output contract in original-image pixels.

Shared by :class:`~effdetmask.modeling.meta_arch.EffDetMask` and the Mask R-CNN baseline so both
report instances identically (``docs/interfaces.md``).
"""

from __future__ import annotations

from typing import Any, Dict, List, Sequence, Tuple

import torch

from ..structures.boxes import input_to_original, input_to_original_batched
from ..structures.masks import coco_rle_encode_crop
from .paste import iter_pasted_crops, paste_masks_in_images

__all__ = ["select_detections", "select_padded", "image_meta", "finalize_instances",
           "detector_postprocess"]


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


def select_padded(
    detections: Dict[str, torch.Tensor],
    scales: torch.Tensor,
    heights: torch.Tensor,
    widths: torch.Tensor,
    *,
    score_thresh: float,
    max_detections: int,
) -> torch.Tensor:
    """:func:`select_detections` for a padded batch at once (no per-image loop, no host sync).

    Args:
        detections: :func:`~effdetmask.modeling.proposal_generator.padded_detections` output
            (``boxes [B, N, 4]`` input pixels, ``scores [B, N]`` sorted, ``valid [B, N]``).
        scales / heights / widths: ``float [B]`` per image.
    Returns:
        ``bool [B, N]``: the rows to report, at most ``max_detections`` per image.
    """
    orig = input_to_original_batched(detections["boxes"], scales, heights, widths)
    ok = detections["valid"] & (detections["scores"] >= score_thresh)
    ok = ok & (orig[..., 2] > orig[..., 0]) & (orig[..., 3] > orig[..., 1])
    # rows are sorted by score, so the first max_detections kept rows are the best
    return ok & (ok.cumsum(1) <= max_detections)


def image_meta(batched_inputs: Sequence[Dict[str, Any]], device: torch.device
               ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``float [B]`` tensors of the inputs' ``scale``, ``height`` and ``width`` on ``device``."""
    meta = torch.tensor([[float(x["scale"]), float(x["height"]), float(x["width"])]
                         for x in batched_inputs])
    return tuple(meta.to(device).unbind(1))


def finalize_instances(
    boxes_xyxy: torch.Tensor,
    scores: torch.Tensor,
    classes: torch.Tensor,
    mask_probs: torch.Tensor,
    *,
    counts: Sequence[int],
    scales: Sequence[float],
    heights: Sequence[int],
    widths: Sequence[int],
    mask_threshold: float = 0.5,
    return_rle: bool = False,
) -> List[Dict[str, Any]]:
    """Instances of a batch in original-image pixels; image ``i`` owns ``counts[i]`` rows.

    Shared by EffDetMask, the baseline and the ONNX runtime path, so all report identically.

    Args:
        boxes_xyxy: ``float [K, 4]`` in letterboxed input pixels.
        scores: ``float [K]``; classes: ``int64 [K]`` 0..45.
        mask_probs: ``float [K, R, R]`` probabilities of each box's class.
        scales: input pixels per original pixel; heights/widths: original sizes (per image).
    Returns:
        per image ``{"boxes": float32 [N, 4] xyxy original pixels, "scores": float32 [N],
        "classes": int64 [N], "masks": bool [N, height, width]}`` or ``"masks_rle"`` (list of
        COCO RLE dicts with ``str`` counts) instead of ``"masks"``. ``N`` may be 0 or 1.
    """
    counts = [int(c) for c in counts]
    boxes_xyxy = boxes_xyxy.reshape(-1, 4).float()
    device = boxes_xyxy.device
    # per-row image meta, so the whole batch is converted with a few ops and no per-image kernels
    meta = torch.tensor(list(zip(scales, heights, widths)), dtype=torch.float32).reshape(-1, 3)
    meta = meta.to(device).repeat_interleave(torch.tensor(counts, device=device), dim=0)
    # paste with the unclipped box the mask was predicted for; report the clipped box
    mask_probs = mask_probs.reshape(-1, *mask_probs.shape[-2:])
    paste_boxes = boxes_xyxy / meta[:, :1]
    sizes = list(zip(heights, widths))
    if return_rle:
        # mask by mask, each only inside its box: memory grows with the box areas, never with
        # N x H x W (a 6000x4000 photo's dense masks take 24 MB each)
        masks: Sequence[Any] = [
            _encode_rle(p, b, int(h), int(w), mask_threshold)
            for p, b, (h, w) in zip(mask_probs.split(counts), paste_boxes.split(counts), sizes)
        ]
    else:
        masks = paste_masks_in_images(mask_probs, paste_boxes, counts, sizes, mask_threshold)
    boxes_orig = input_to_original_batched(boxes_xyxy[:, None], *meta.unbind(1))[:, 0]
    out = []
    for b, s, c, m in zip(boxes_orig.split(counts), scores.reshape(-1).float().split(counts),
                          classes.reshape(-1).long().split(counts), masks):
        inst: Dict[str, Any] = {"boxes": b, "scores": s, "classes": c}
        inst["masks_rle" if return_rle else "masks"] = m
        out.append(inst)
    return out


def _encode_rle(mask_probs: torch.Tensor, boxes: torch.Tensor, height: int, width: int,
                threshold: float) -> List[Dict[str, Any]]:
    """One image's masks as COCO RLEs, equal to encoding :func:`paste_masks_in_image`'s output."""
    return [coco_rle_encode_crop(crop.cpu().numpy(), top, left, height, width)
            for top, left, crop in iter_pasted_crops(mask_probs, boxes, height, width, threshold)]


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
    """One image's instances: :func:`finalize_instances` for a batch of one."""
    return finalize_instances(
        boxes_xyxy, scores, classes, mask_probs, counts=[boxes_xyxy.reshape(-1, 4).shape[0]],
        scales=[scale], heights=[height], widths=[width], mask_threshold=mask_threshold,
        return_rle=return_rle,
    )[0]
