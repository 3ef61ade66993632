"""Multi-level RoIAlign on ``[K, 5]`` RoIs, with torchvision ``MultiScaleRoIAlign``'s level rule.

torchvision's pooler takes a per-image list of boxes, which a traced graph (ONNX, CUDA graphs)
unrolls over a fixed batch size; this one takes the flat RoI tensor with image indices, so the
batch stays dynamic. Level assignment and sampling are torchvision's: ``floor(4 + log2(sqrt(area)
/ 224))`` clamped to the given levels, ``aligned=False``.
"""

from __future__ import annotations

import math
from typing import List, Sequence

import torch
import torch.nn as nn
import torchvision
from torchvision.ops import roi_align
from torchvision.ops.poolers import _onnx_merge_levels, initLevelMapper

__all__ = ["MultiLevelRoIAlign"]


class MultiLevelRoIAlign(nn.Module):
    """``forward(features: per level [B, C, H_l, W_l], rois: float [K, 5]) -> [K, C, R, R]``.

    ``rois`` rows are ``(image index, x0, y0, x1, y1)`` in input pixels; ``strides`` are the
    levels' strides (powers of two, increasing).
    """

    def __init__(self, *, strides: Sequence[int], output_size: int, sampling_ratio: int) -> None:
        super().__init__()
        self.scales = [1.0 / s for s in strides]
        self.output_size = (output_size, output_size)
        self.sampling_ratio = sampling_ratio
        self.mapper = initLevelMapper(int(math.log2(strides[0])), int(math.log2(strides[-1])))

    def forward(self, features: List[torch.Tensor], rois: torch.Tensor) -> torch.Tensor:
        rois = rois.to(features[0].dtype)
        if len(features) == 1:
            return roi_align(features[0], rois, self.output_size, self.scales[0],
                             self.sampling_ratio)
        levels = self.mapper([rois[:, 1:]])
        if torchvision._is_tracing():
            per_level = [
                roi_align(f, rois[torch.where(levels == lvl)[0]], self.output_size, s,
                          self.sampling_ratio).to(features[0].dtype)
                for lvl, (f, s) in enumerate(zip(features, self.scales))
            ]
            return _onnx_merge_levels(levels, per_level)
        out = rois.new_zeros(rois.shape[0], features[0].shape[1], *self.output_size)
        for lvl, (f, s) in enumerate(zip(features, self.scales)):
            idx = torch.where(levels == lvl)[0]
            # under autocast levels may come back in different dtypes: match the output's
            out[idx] = roi_align(f, rois[idx], self.output_size, s, self.sampling_ratio).to(
                out.dtype)
        return out
