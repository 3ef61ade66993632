"""Fold inference-time BatchNorm into the convolution that feeds it.

In eval mode a BatchNorm after a convolution is a per-channel affine map, so it can be folded into
the convolution's weight and bias: the same outputs (up to float rounding) without two elementwise
passes over every feature map. On CPU that is most of the elementwise time of EfficientNet's
depthwise blocks (measured: ``benchmarks/bench_inference.py``, README Results).

Only pairs known to be ``conv -> bn`` in their module's ``forward`` are folded, named per module
type below (timm's EfficientNet blocks, effdet's BiFPN convs, torchvision's ResNet). A BatchNorm
whose input is not a single convolution (effdet's per-level BNs after the shared head convs) stays.
timm's ``BatchNormAct2d`` keeps its activation: it is replaced by its ``drop`` and ``act``.

A folded model cannot be trained again (its BatchNorms are gone): each folded BatchNorm leaves a
:class:`FoldedBatchNorm` in its place, whose forward refuses training mode; build a fresh model to
train.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn as nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from .frozen_bn import FROZEN_BN_TYPES

__all__ = ["fold_batch_norm", "FoldedBatchNorm", "FOLD_PAIRS"]

# module class name -> (conv, BatchNorm) submodule names (dotted: inside a child), in forward order
FOLD_PAIRS = {
    # timm EfficientNet (features_only) and its blocks
    "EfficientNetFeatures": (("conv_stem", "bn1"),),
    "DepthwiseSeparableConv": (("conv_s2d", "bn_s2d"), ("conv_dw", "bn1"), ("conv_pw", "bn2")),
    "InvertedResidual": (
        ("conv_s2d", "bn_s2d"), ("conv_pw", "bn1"), ("conv_dw", "bn2"), ("conv_pwl", "bn3"),
    ),
    # effdet BiFPN: separable conv (depthwise, pointwise, bn) and conv+bn resampling
    "SeparableConv2d": (("conv_pw", "bn"),),
    "ConvBnAct2d": (("conv", "bn"),),
    # torchvision ResNet (the Mask R-CNN baseline's backbone)
    "IntermediateLayerGetter": (("conv1", "bn1"),),
    "Bottleneck": (
        ("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3"), ("downsample.0", "downsample.1"),
    ),
}


def _is_batch_norm(module) -> bool:
    return isinstance(module, (nn.modules.batchnorm._BatchNorm,) + FROZEN_BN_TYPES)


class FoldedBatchNorm(nn.Module):
    """What stays of a BatchNorm folded into the convolution before it: its dropout and activation
    (timm's ``BatchNormAct2d``; none for a plain BatchNorm).

    Training mode is refused in ``forward``: the normalisation lives on in the convolution's
    weights with the statistics of the time of folding, so a training step would silently train a
    different model. ``train()`` itself behaves as for any module.
    """

    def __init__(self, drop: Optional[nn.Module] = None, act: Optional[nn.Module] = None) -> None:
        super().__init__()
        self.drop = drop
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            raise RuntimeError(
                "this model's BatchNorms were folded into its convolutions (build_model(cfg, "
                "inference_only=True) with TEST.FOLD_BN): it cannot train; build a new one with "
                "build_model(cfg) to train"
            )
        if self.drop is not None:
            x = self.drop(x)
        return x if self.act is None else self.act(x)


def _owner(parent: nn.Module, name: str) -> Tuple[Optional[nn.Module], str]:
    """The module holding the (possibly dotted) submodule ``name``, and its last name part."""
    *path, leaf = name.split(".")
    for part in path:
        parent = getattr(parent, part, None)
        if parent is None:
            return None, leaf
    return parent, leaf


def _fold(parent: nn.Module, conv_name: str, bn_name: str) -> bool:
    conv_owner, conv_leaf = _owner(parent, conv_name)
    bn_owner, bn_leaf = _owner(parent, bn_name)
    conv, bn = getattr(conv_owner, conv_leaf, None), getattr(bn_owner, bn_leaf, None)
    if not isinstance(conv, nn.Conv2d):
        return False
    if not _is_batch_norm(bn) or bn.running_mean is None:
        return False
    setattr(conv_owner, conv_leaf, fuse_conv_bn_eval(conv, bn))
    rest = FoldedBatchNorm(getattr(bn, "drop", None), getattr(bn, "act", None))
    setattr(bn_owner, bn_leaf, rest.train(bn.training))
    return True


def fold_batch_norm(model: nn.Module) -> int:
    """Fold every known ``conv -> BatchNorm`` pair of ``model`` (in eval mode) in place.

    Returns:
        The number of BatchNorms folded.
    """
    if model.training:
        raise ValueError("fold_batch_norm needs a model in eval mode (call model.eval() first)")
    folded = 0
    for module in list(model.modules()):
        for conv_name, bn_name in FOLD_PAIRS.get(type(module).__name__, ()):
            folded += _fold(module, conv_name, bn_name)
    return folded
