"""Backbone + feature pyramid: timm EfficientNet (``features_only``) followed by effdet's BiFPN."""

from __future__ import annotations

import logging
import math
from typing import Dict, List, Sequence, Tuple

import torch
import torch.nn as nn
from effdet.efficientdet import BiFpn

from .effdet_utils import ShapeSpec, init_effdet_weights, make_effdet_config
from .pretrained import create_timm_features, create_timm_features_and_keys
from .registry import BACKBONE_REGISTRY

__all__ = ["TimmBiFPNBackbone", "create_timm_features"]

logger = logging.getLogger(__name__)


@BACKBONE_REGISTRY.register()
class TimmBiFPNBackbone(nn.Module):
    """EfficientNet features at strides ``2**min_level ..`` fused by a BiFPN into P_min..P_max.

    ``forward(images: float [B, 3, S, S] normalised) -> {"p3": [B, C, S/8, S/8], ..., "p7": ...}``
    with ``C = fpn_channels``. Levels above the backbone's last are made by the BiFPN's
    down-sampling. ``S`` must be the ``image_size`` the module was built for (effdet's resampling
    layers are sized for it) and divisible by ``2**max_level``.
    """

    def __init__(
        self,
        *,
        timm_name: str = "efficientnet_b0",
        out_indices: Sequence[int] = (2, 3, 4),
        pretrained: str = "",
        fpn_channels: int = 64,
        fpn_repeats: int = 3,
        min_level: int = 3,
        max_level: int = 7,
        image_size: int = 512,
        drop_path_rate: float = 0.1,
        fusion: str = "bifpn_fa",
        act_type: str = "swish",
    ) -> None:
        super().__init__()
        if image_size % (2**max_level):
            raise ValueError(
                f"input size {image_size} must be divisible by 2**MAX_LEVEL = {2 ** max_level}"
            )
        self.body, loaded = create_timm_features_and_keys(
            timm_name, out_indices, pretrained, drop_path_rate
        )
        # keys of ``body.state_dict()`` that came from MODEL.BACKBONE.PRETRAINED (BN statistics
        # included): the BatchNorms that may be frozen; empty for random init
        self.body_loaded_keys: Tuple[str, ...] = loaded
        feature_info: List[dict] = self.body.feature_info.get_dicts(keys=["num_chs", "reduction"])
        levels = [int(round(math.log2(f["reduction"]))) for f in feature_info]
        expected = list(range(min_level, min_level + len(levels)))
        if levels != expected or levels[-1] > max_level:
            raise ValueError(
                f"{timm_name} out_indices {list(out_indices)} give strides "
                f"{[f['reduction'] for f in feature_info]} (levels {levels}); BIFPN.MIN_LEVEL "
                f"{min_level}..MAX_LEVEL {max_level} needs consecutive levels starting at "
                f"{min_level} (e.g. OUT_INDICES [2, 3, 4] for P3, [1, 2, 3, 4] for P2)"
            )
        self.min_level, self.max_level = min_level, max_level
        self.image_size = image_size
        self.fpn_channels = fpn_channels
        config = make_effdet_config(
            image_size=image_size,
            num_classes=1,  # unused by the BiFPN
            fpn_channels=fpn_channels,
            fpn_cell_repeats=fpn_repeats,
            min_level=min_level,
            max_level=max_level,
            fpn_name=fusion,
            act_type=act_type,
        )
        # BiFpn appends to feature_info while building: give it its own copy
        self.fpn = BiFpn(config, [dict(f) for f in feature_info])
        init_effdet_weights(self.fpn, "fpn")
        self._names = [f"p{lvl}" for lvl in range(min_level, max_level + 1)]

    @classmethod
    def from_config(cls, cfg) -> dict:
        return dict(
            timm_name=cfg.MODEL.BACKBONE.TIMM_NAME,
            out_indices=tuple(cfg.MODEL.BACKBONE.OUT_INDICES),
            # MODEL.WEIGHTS replaces every tensor: loading (or downloading) ImageNet weights
            # first would be wasted, and would fail offline for eval/demo/export
            pretrained="" if cfg.MODEL.WEIGHTS else cfg.MODEL.BACKBONE.PRETRAINED,
            drop_path_rate=cfg.MODEL.BACKBONE.DROP_PATH_RATE,
            fpn_channels=cfg.MODEL.BIFPN.CHANNELS,
            fpn_repeats=cfg.MODEL.BIFPN.REPEATS,
            min_level=cfg.MODEL.BIFPN.MIN_LEVEL,
            max_level=cfg.MODEL.BIFPN.MAX_LEVEL,
            image_size=cfg.INPUT.SIZE,
            fusion=cfg.MODEL.BIFPN.FUSION,
            act_type=cfg.MODEL.BIFPN.ACT_TYPE,
        )

    @property
    def body_pretrained(self) -> bool:
        """Whether MODEL.BACKBONE.PRETRAINED loaded the body's weights."""
        return bool(self.body_loaded_keys)

    def output_shape(self) -> Dict[str, ShapeSpec]:
        """Level name -> (channels, stride)."""
        return {n: ShapeSpec(self.fpn_channels, 2 ** int(n[1:])) for n in self._names}

    def forward(self, images: torch.Tensor) -> Dict[str, torch.Tensor]:
        if images.shape[-2:] != (self.image_size, self.image_size):
            raise ValueError(
                f"backbone built for {self.image_size}x{self.image_size} inputs, got "
                f"{tuple(images.shape[-2:])} (INPUT.SIZE must match the mapper's output)"
            )
        feats = self.fpn(self.body(images))
        return dict(zip(self._names, feats))
