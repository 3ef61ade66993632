"""From detections in model-input pixels to the output contract in original-image pixels.

Shared by :class:`~effdetmask.modeling.meta_arch.EffDetMask` and the Mask R-CNN baseline so both
report instances identically (``docs/interfaces.md``).
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from ..structures.boxes import input_to_original
from ..structures.masks import coco_rle_encode_crop
from .attribute_head import attribute_ids_from_scores
from .paste import iter_pasted_crops, paste_masks_in_images

__all__ = ["select_detections", "instances_from_detections", "finalize_instances"]


def _image_meta(batched_inputs: Sequence[Dict[str, Any]], device: torch.device
                ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``float [B]`` tensors of the inputs' ``scale``, ``height`` and ``width`` on ``device``."""
    meta = torch.tensor([[float(x["scale"]), float(x["height"]), float(x["width"])]
                         for x in batched_inputs])
    return tuple(meta.to(device).unbind(1))


def select_detections(
    detections: Dict[str, torch.Tensor],
    batched_inputs: Sequence[Dict[str, Any]],
    *,
    score_thresh: float,
    max_detections: int,
) -> Dict[str, torch.Tensor]:
    """The detections to report, for a padded batch at once (no per-image loop, no host sync).

    A row is kept when it is valid, scores ``>= score_thresh`` and its box is non-empty inside the
    original image (the rest lies on the letterbox padding); at most ``max_detections`` per image,
    the best ones (rows are sorted by score within each image).

    Args:
        detections: padded detections, every value ``[B, N, ...]``: ``boxes`` ``float [B, N, 4]``
            xyxy input pixels, ``scores`` ``[B, N]`` sorted decreasing per image, ``classes``,
            ``valid`` ``bool [B, N]``, and any other per-row entry (e.g. the ONNX graph's
            ``masks``). :meth:`EfficientDetProposalGenerator.detect
            <effdetmask.modeling.proposal_generator.EfficientDetProposalGenerator.detect>` makes
            them for PyTorch and the ONNX graph alike.
        batched_inputs: the mapper outputs of the batch (``scale``, ``height``, ``width``).
    Returns:
        the kept rows, image by image: every entry flattened to ``[K, ...]``, plus
        ``image_index`` ``int64 [K]``.
    """
    scales, heights, widths = _image_meta(batched_inputs, detections["boxes"].device)
    orig = input_to_original(detections["boxes"], scales, heights, widths)
    ok = detections["valid"] & (detections["scores"] >= score_thresh)
    ok = ok & (orig[..., 2] > orig[..., 0]) & (orig[..., 3] > orig[..., 1])
    # rows are sorted by score, so the first max_detections kept rows are the best
    keep = ok & (ok.cumsum(1) <= max_detections)
    kept = {k: v[keep] for k, v in detections.items() if k != "valid"}
    kept["image_index"] = keep.nonzero()[:, 0]
    return kept


def instances_from_detections(
    kept: Dict[str, torch.Tensor],
    mask_probs: torch.Tensor,
    batched_inputs: Sequence[Dict[str, Any]],
    *,
    mask_threshold: float = 0.5,
    return_rle: bool = False,
    attribute_score_thresh: float = 0.5,
) -> List[Dict[str, Any]]:
    """:func:`select_detections`' rows and their masks -> per image ``{"instances": ...}`` in
    original-image pixels (:func:`finalize_instances`); the eval output of every model.

    Args:
        kept: :func:`select_detections` output (``boxes``, ``scores``, ``classes``,
            ``image_index``, and ``attribute_scores`` ``float [K, 294]`` from an attribute head).
        mask_probs: ``float [K, R, R]`` probabilities of each row's class.
        attribute_score_thresh: an instance's ``attribute_ids`` score at least this.
    """
    counts = torch.bincount(kept["image_index"], minlength=len(batched_inputs)).tolist()
    instances = finalize_instances(
        kept["boxes"], kept["scores"], kept["classes"], mask_probs, counts=counts,
        scales=[float(x["scale"]) for x in batched_inputs],
        heights=[int(x["height"]) for x in batched_inputs],
        widths=[int(x["width"]) for x in batched_inputs], mask_threshold=mask_threshold,
        return_rle=return_rle, attribute_scores=kept.get("attribute_scores"),
        attribute_score_thresh=attribute_score_thresh,
    )
    return [{"instances": inst} for inst in instances]


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
    attribute_scores: Optional[torch.Tensor] = None,
    attribute_score_thresh: float = 0.5,
) -> List[Dict[str, Any]]:
    """Instances of a batch in original-image pixels; image ``i`` owns ``counts[i]`` rows.

    Shared by EffDetMask, the baseline and the ONNX runtime path, so all report identically.

    Args:
        boxes_xyxy: ``float [K, 4]`` in letterboxed input pixels.
        scores: ``float [K]``; classes: ``int64 [K]`` 0..45.
        mask_probs: ``float [K, R, R]`` probabilities of each box's class.
        scales: input pixels per original pixel; heights/widths: original sizes (per image).
        attribute_scores: ``float [K, 294]`` (dense attribute order) or ``None`` (no attribute
            head: no attribute entries in the instances).
    Returns:
        per image ``{"boxes": float32 [N, 4] xyxy original pixels, "scores": float32 [N],
        "classes": int64 [N], "masks": bool [N, height, width]}`` or ``"masks_rle"`` (list of
        COCO RLE dicts with ``str`` counts) instead of ``"masks"``. ``N`` may be 0 or 1. With
        ``attribute_scores`` also ``"attribute_scores": float32 [N, 294]`` and
        ``"attribute_ids"``: per instance the sorted sparse Fashionpedia ids (``List[int]``)
        scoring ``>= attribute_score_thresh``.
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
    boxes_orig = input_to_original(boxes_xyxy[:, None], *meta.unbind(1))[:, 0]
    out = []
    for b, s, c, m in zip(boxes_orig.split(counts), scores.reshape(-1).float().split(counts),
                          classes.reshape(-1).long().split(counts), masks):
        inst: Dict[str, Any] = {"boxes": b, "scores": s, "classes": c}
        inst["masks_rle" if return_rle else "masks"] = m
        out.append(inst)
    if attribute_scores is not None:
        attribute_scores = attribute_scores.reshape(-1, attribute_scores.shape[-1]).float()
        for inst, a in zip(out, attribute_scores.split(counts)):
            inst["attribute_scores"] = a
            inst["attribute_ids"] = attribute_ids_from_scores(a, attribute_score_thresh)
    return out


def _encode_rle(mask_probs: torch.Tensor, boxes: torch.Tensor, height: int, width: int,
                threshold: float) -> List[Dict[str, Any]]:
    """One image's masks as COCO RLEs, equal to encoding :func:`paste_masks_in_image`'s output."""
    return [coco_rle_encode_crop(crop.cpu().numpy(), top, left, height, width)
            for top, left, crop in iter_pasted_crops(mask_probs, boxes, height, width, threshold)]
