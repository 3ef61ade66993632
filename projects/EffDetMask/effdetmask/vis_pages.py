"""Pages of drawings for a person to check: predictions, their panel, and ground truth beside them.

Used by ``demo.py`` and by training's end-of-run visualisations. Images are RGB ``uint8``.
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Sequence

import cv2
import numpy as np
import torch

from .data.mapper import letterbox_size, resize_image
from .structures.boxes import xywh_to_xyxy
from .structures.masks import rasterize_segmentation
from .vis import Visualizer, save_png

__all__ = ["display_instances", "side_by_side", "write_instance_pngs"]


def display_instances(boxes_xyxy: Any, classes: Any, scores: Optional[Any],
                      segmentations: Sequence[Any], height: int, width: int, out_h: int,
                      out_w: int) -> Dict[str, Any]:
    """Instances of a ``height x width`` image redrawn at ``out_h x out_w`` for the Visualizer.

    Args:
        boxes_xyxy: ``[N, 4]`` xyxy original pixels; classes ``[N]``; scores ``[N]`` or None.
        segmentations: N polygons or COCO RLE dicts at the original size; rasterised one at a
            time at the display size, so a 5000-pixel photo never holds N full-size masks.
    Returns:
        ``boxes`` (display pixels), ``classes``, ``scores`` (if given), ``masks`` bool
        ``[N, out_h, out_w]``.
    """
    sx, sy = out_w / width, out_h / height
    boxes = torch.as_tensor(boxes_xyxy, dtype=torch.float32).reshape(-1, 4)
    masks = np.zeros((len(segmentations), out_h, out_w), bool)
    for i, segm in enumerate(segmentations):
        masks[i] = rasterize_segmentation(segm, height, width, out_h, out_w).astype(bool)
    out = {"boxes": boxes * boxes.new_tensor([sx, sy, sx, sy]),
           "classes": torch.as_tensor(classes).reshape(-1), "masks": masks}
    if scores is not None:
        out["scores"] = scores
    return out


def side_by_side(left: np.ndarray, right: np.ndarray, captions: Sequence[str]) -> np.ndarray:
    """Two RGB images of equal height, each under a caption strip, with a white gap between."""
    parts = []
    for image, caption in zip((left, right), captions):
        strip = np.full((28, image.shape[1], 3), 255, np.uint8)
        cv2.putText(strip, caption, (6, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 0, 0), 1,
                    cv2.LINE_AA)
        parts.append(np.concatenate([strip, image], axis=0))
    gap = np.full((parts[0].shape[0], 8, 3), 255, np.uint8)
    return np.concatenate([parts[0], gap, parts[1]], axis=1)


def write_instance_pngs(vis: Visualizer, prefix: str, image: np.ndarray,
                        inst: Mapping[str, Any], record: Optional[Mapping[str, Any]],
                        max_size: int, panel: bool, noise: bool,
                        min_score: float = 0.0) -> List[str]:
    """Write the PNGs of one image; returns their paths.

    Args:
        prefix: path prefix; writes ``<prefix>_overlay.png`` (+ ``_panel``, ``_gt``, ``_gt_panel``).
        image: ``uint8 [H, W, 3]`` RGB at original size.
        inst: predictions with ``boxes`` (xyxy original pixels), ``classes``, ``scores`` and
            ``masks_rle``.
        record: the image's dataset dict (ground truth) or None.
        max_size: downscale the drawings so the long side is at most this (0 = never).
        noise: the model has random weights (said in the caption).
        min_score: draw only predictions scoring at least this (said in the caption).
    """
    if min_score > 0:
        keep = [i for i, score in enumerate(inst["scores"]) if float(score) >= min_score]
        inst = {k: [v[i] for i in keep] if isinstance(v, list) else v[keep]
                for k, v in inst.items()}
    height, width = image.shape[:2]
    out_h, out_w = height, width
    if max_size > 0 and max(height, width) > max_size:
        out_h, out_w, _ = letterbox_size(height, width, max_size)
    small = resize_image(image, out_h, out_w)
    pred = display_instances(inst["boxes"], inst["classes"], inst["scores"], inst["masks_rle"],
                             height, width, out_h, out_w)
    overlay = vis.draw_instances(small, pred)
    paths = [f"{prefix}_overlay.png"]
    save_png(paths[-1], overlay)
    if panel:
        paths.append(f"{prefix}_panel.png")
        save_png(paths[-1], vis.draw_panel(small, pred))
    if record is not None:
        anns = record["annotations"]
        boxes = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32).reshape(-1, 4)
        truth = display_instances(xywh_to_xyxy(boxes), [a["category_id"] for a in anns], None,
                                  [a["segmentation"] for a in anns], height, width, out_h, out_w)
        shown = f"predicted >= {min_score:.2f}" if min_score > 0 else "predictions"
        captions = [f"ground truth ({len(anns)})", f"{shown} ({len(inst['scores'])}"
                    + (", random weights: noise)" if noise else ")")]
        paths.append(f"{prefix}_gt.png")
        save_png(paths[-1], side_by_side(vis.draw_instances(small, truth), overlay, captions))
        if panel:
            paths.append(f"{prefix}_gt_panel.png")
            save_png(paths[-1], vis.draw_panel(small, truth))
    return paths
