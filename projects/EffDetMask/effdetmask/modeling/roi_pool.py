"""Multi-level RoIAlign on ``[K, 5]`` RoIs with the FPN level rule, traceable for ONNX.

torchvision's ``MultiScaleRoIAlign`` takes a per-image list of boxes, which a traced graph (ONNX,
CUDA graphs) unrolls over a fixed batch size; this one takes the flat RoI tensor with image
indices, so the batch stays dynamic. It uses only torchvision's public ``roi_align``.

Conventions: ``aligned=True`` (a feature pixel ``i`` at stride ``s`` is centred on input pixel
``(i + 0.5) * s``), the same convention as the mask targets (:func:`.mask_head.mask_rcnn_targets`)
and the paste, as in detectron2. The level of a box is the FPN rule of the Mask R-CNN paper,
``floor(canonical_level + log2(sqrt(area) / canonical_box_size))``, clamped to the given levels.
"""

from __future__ import annotations

import math
from typing import List, Sequence

import torch
import torch.nn as nn
from torchvision.ops import roi_align

__all__ = ["MultiLevelRoIAlign", "assign_fpn_levels"]

_EPS = 1e-6  # keeps a box exactly at a level boundary on the upper level (as torchvision)


def assign_fpn_levels(boxes_xyxy: torch.Tensor, *, min_level: int, max_level: int,
                      canonical_box_size: float, canonical_level: int) -> torch.Tensor:
    """Pyramid level of each ``[K, 4]`` box (input pixels), as int64 ``level - min_level``."""
    size = torch.sqrt(((boxes_xyxy[:, 2] - boxes_xyxy[:, 0])
                       * (boxes_xyxy[:, 3] - boxes_xyxy[:, 1])).clamp(min=1e-6))
    level = torch.floor(canonical_level + torch.log2(size / canonical_box_size) + _EPS)
    return (level.clamp(min=min_level, max=max_level) - min_level).to(torch.int64)


class MultiLevelRoIAlign(nn.Module):
    """``forward(features: per level [B, C, H_l, W_l], rois: float [K, 5]) -> [K, C, R, R]``.

    ``rois`` rows are ``(image index, x0, y0, x1, y1)`` in input pixels; ``strides`` are the
    levels' strides (consecutive powers of two, increasing).
    """

    def __init__(self, *, strides: Sequence[int], output_size: int, sampling_ratio: int,
                 canonical_box_size: float = 224.0, canonical_level: int = 4) -> None:
        super().__init__()
        self.scales = [1.0 / s for s in strides]
        self.output_size = (output_size, output_size)
        self.sampling_ratio = sampling_ratio
        self.min_level = int(math.log2(strides[0]))
        self.max_level = int(math.log2(strides[-1]))
        self.canonical_box_size = float(canonical_box_size)
        self.canonical_level = int(canonical_level)

    def _pool(self, feature: torch.Tensor, rois: torch.Tensor, scale: float) -> torch.Tensor:
        return roi_align(feature, rois, self.output_size, scale, self.sampling_ratio, aligned=True)

    def forward(self, features: List[torch.Tensor], rois: torch.Tensor) -> torch.Tensor:
        rois = rois.to(features[0].dtype)
        if len(features) == 1:
            return self._pool(features[0], rois, self.scales[0])
        levels = assign_fpn_levels(
            rois[:, 1:], min_level=self.min_level, max_level=self.max_level,
            canonical_box_size=self.canonical_box_size, canonical_level=self.canonical_level)
        out = rois.new_zeros(rois.shape[0], features[0].shape[1], *self.output_size)
        for lvl, (f, s) in enumerate(zip(features, self.scales)):
            idx = torch.where(levels == lvl)[0]
            # index_put (not in-place) traces to one ScatterND per level for ONNX; under autocast
            # levels may come back in different dtypes, so match the output's
            out = out.index_put((idx,), self._pool(f, rois[idx], s).to(out.dtype))
        return out
