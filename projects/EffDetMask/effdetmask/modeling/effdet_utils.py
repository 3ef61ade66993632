"""Helpers shared by the parts built from effdet: its config object and its weight initialisation.

effdet builds its BiFPN, heads and anchors from one OmegaConf config. We start from effdet's own
``efficientdet_d0`` config (PyTorch-native "same" padding, swish, separable convs, fast-attention
BiFPN) and override only what our config controls, so every derived field stays consistent.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Sequence, Tuple

import torch.nn as nn
from effdet import get_efficientdet_config
from effdet.config.config_utils import set_config_writeable
from effdet.efficientdet import _init_weight
from omegaconf import DictConfig

__all__ = ["ShapeSpec", "make_effdet_config", "init_effdet_weights", "set_prior_bias", "prior_bias"]


class ShapeSpec(NamedTuple):
    """Channels and stride (input pixels per feature pixel) of one pyramid level."""

    channels: int
    stride: int


def make_effdet_config(
    *,
    image_size: int,
    num_classes: int,
    fpn_channels: int,
    fpn_cell_repeats: int = 3,
    box_class_repeats: int = 3,
    min_level: int = 3,
    max_level: int = 7,
    num_scales: int = 3,
    aspect_ratios: Sequence[Sequence[float]] = ((1.0, 1.0), (1.4, 0.7), (0.7, 1.4)),
    anchor_scale: float = 4.0,
    fpn_name: str = "bifpn_fa",
    act_type: str = "swish",
) -> DictConfig:
    """effdet config for our fixed square input; effdet's classes count excludes the background.

    ``fpn_name`` is effdet's BiFPN fusion ("bifpn_fa" fast normalised, "bifpn_sum" for the Lite
    models); ``act_type`` the activation of BiFPN and heads ("swish", "relu6" for Lite)."""
    config = get_efficientdet_config("efficientdet_d0")
    set_config_writeable(config)
    config.image_size = (int(image_size), int(image_size))
    config.num_classes = int(num_classes)
    config.fpn_channels = int(fpn_channels)
    config.fpn_cell_repeats = int(fpn_cell_repeats)
    config.box_class_repeats = int(box_class_repeats)
    config.min_level = int(min_level)
    config.max_level = int(max_level)
    config.num_levels = int(max_level) - int(min_level) + 1
    config.num_scales = int(num_scales)
    config.aspect_ratios = [tuple(float(v) for v in ar) for ar in aspect_ratios]
    config.anchor_scale = float(anchor_scale)
    config.fpn_name = str(fpn_name)
    config.act_type = str(act_type)
    return config


def prior_bias(prior_prob: float) -> float:
    """Focal-loss prior: the class-logit bias making every anchor start at probability ``p``."""
    return -math.log((1.0 - prior_prob) / prior_prob)


def init_effdet_weights(module: nn.Module, prefix: str) -> None:
    """effdet's TF-style init; ``prefix`` ("fpn", "class_net", "box_net") selects its rule.

    effdet's ``HeadNet`` does not initialise itself: ``EfficientDet.__init__`` applies this by
    module *name*, and it is what sets the class head's prior bias (p = 0.01).
    """
    for name, m in module.named_modules(prefix=prefix):
        _init_weight(m, name)


def set_prior_bias(class_net: nn.Module, prior_prob: float) -> None:
    """Set the bias of an effdet class head's output conv to ``-log((1 - p) / p)``."""
    predict = class_net.predict
    conv = predict.conv_pw if hasattr(predict, "conv_pw") else predict.conv
    nn.init.constant_(conv.bias, prior_bias(prior_prob))


def feat_size(image_size: int, level: int) -> Tuple[int, int]:
    """Feature map size of ``level`` for effdet's "same"-padded stride-2 chain."""
    size = image_size
    for _ in range(level):
        size = (size - 1) // 2 + 1
    return size, size
