"""The one place where box and label conventions are converted.

Conventions met in this project:

* dataset dicts / COCO JSON: ``bbox`` = ``[x, y, w, h]`` in absolute pixels (``XYWH_ABS``);
  categories 0..45 (Fashionpedia ids, contiguous).
* inside the project (mapper targets, model outputs): ``boxes_xyxy`` = ``[x0, y0, x1, y1]`` float,
  classes 0..45.
* effdet: boxes ``[y0, x0, y1, x1]`` (yxyx), classes 1..46, targets padded with ``-1`` rows.
* torchvision detection models: boxes xyxy, label 0 = background, so apparel class ``c`` is
  ``c + 1``.
* letterbox: the model input is the image resized by ``scale`` (aspect kept) and padded at the
  bottom/right, so a point ``p`` of the input is ``p / scale`` in the original image.
"""

from __future__ import annotations

from typing import Sequence, Tuple

import torch

# effdet and torchvision both reserve 0 (effdet: "no class" after its 1-based shift; torchvision:
# background), so both see apparel class c as c + 1.
EFFDET_CLASS_OFFSET = 1
TORCHVISION_CLASS_OFFSET = 1
EFFDET_PAD_VALUE = -1.0


def xywh_to_xyxy(boxes_xywh: torch.Tensor) -> torch.Tensor:
    """``[..., 4]`` (x, y, w, h) -> (x0, y0, x1, y1)."""
    x, y, w, h = boxes_xywh.unbind(-1)
    return torch.stack((x, y, x + w, y + h), dim=-1)


def xyxy_to_xywh(boxes_xyxy: torch.Tensor) -> torch.Tensor:
    """``[..., 4]`` (x0, y0, x1, y1) -> (x, y, w, h)."""
    x0, y0, x1, y1 = boxes_xyxy.unbind(-1)
    return torch.stack((x0, y0, x1 - x0, y1 - y0), dim=-1)


def xyxy_to_yxyx(boxes_xyxy: torch.Tensor) -> torch.Tensor:
    """``[..., 4]`` xyxy -> effdet's yxyx (the same operation is its own inverse)."""
    return boxes_xyxy[..., [1, 0, 3, 2]]


def yxyx_to_xyxy(boxes_yxyx: torch.Tensor) -> torch.Tensor:
    """``[..., 4]`` effdet's yxyx -> xyxy."""
    return boxes_yxyx[..., [1, 0, 3, 2]]


def classes_to_effdet(classes: torch.Tensor) -> torch.Tensor:
    """Apparel classes 0..45 -> effdet's 1..46 (float, as effdet's anchor labeler expects)."""
    return classes.float() + EFFDET_CLASS_OFFSET


def effdet_to_classes(effdet_classes: torch.Tensor) -> torch.Tensor:
    """effdet's 1..46 -> apparel classes 0..45 (int64)."""
    return effdet_classes.long() - EFFDET_CLASS_OFFSET


def classes_to_torchvision(classes: torch.Tensor) -> torch.Tensor:
    """Apparel classes 0..45 -> torchvision labels 1..46 (0 is background)."""
    return classes.long() + TORCHVISION_CLASS_OFFSET


def torchvision_to_classes(labels: torch.Tensor) -> torch.Tensor:
    """torchvision labels 1..46 -> apparel classes 0..45."""
    return labels.long() - TORCHVISION_CLASS_OFFSET


def pad_effdet_targets(
    boxes_xyxy: Sequence[torch.Tensor], classes: Sequence[torch.Tensor], max_instances: int
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-image targets -> effdet's padded batch.

    Args:
        boxes_xyxy: per image, float ``[N_i, 4]`` xyxy in input pixels.
        classes: per image, int ``[N_i]`` 0..45.
        max_instances: rows of the padded tensors (>= max N_i).
    Returns:
        ``boxes_yxyx`` float ``[B, max_instances, 4]`` and ``classes`` float ``[B, max_instances]``
        (1..46), both padded with ``-1``.
    """
    batch = len(boxes_xyxy)
    device = boxes_xyxy[0].device if batch else torch.device("cpu")
    out_boxes = torch.full((batch, max_instances, 4), EFFDET_PAD_VALUE, device=device)
    out_classes = torch.full((batch, max_instances), EFFDET_PAD_VALUE, device=device)
    for i, (b, c) in enumerate(zip(boxes_xyxy, classes)):
        n = b.shape[0]
        if n > max_instances:
            raise ValueError(
                f"image {i} has {n} instances, more than max_instances={max_instances}"
            )
        out_boxes[i, :n] = xyxy_to_yxyx(b.float())
        out_classes[i, :n] = classes_to_effdet(c)
    return out_boxes, out_classes


def input_to_original(
    boxes_xyxy: torch.Tensor, scales: torch.Tensor, heights: torch.Tensor, widths: torch.Tensor
) -> torch.Tensor:
    """Boxes in letterboxed model-input pixels -> original image pixels, clipped to the image; a
    padded batch at once, without host syncs (traceable).

    Args:
        boxes_xyxy: ``float [B, N, 4]`` letterboxed input pixels.
        scales / heights / widths: ``float [B]`` per image.
    Returns:
        ``float [B, N, 4]`` original pixels, clipped to each image.
    """
    boxes = boxes_xyxy / scales[:, None, None]
    upper = torch.stack([widths, heights, widths, heights], dim=1)[:, None, :].to(boxes.dtype)
    return torch.minimum(boxes.clamp(min=0), upper)
