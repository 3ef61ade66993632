"""Frozen BatchNorm that really freezes: running statistics AND affine parameters never change.

The paper's code matched BatchNorm layers by class name, which misses timm's ``BatchNormAct2d`` (a
``BatchNorm2d`` subclass that also applies the activation), and left running statistics updating in
``train()``. Here every ``nn.BatchNorm2d`` (effdet's BiFPN/heads, torchvision) becomes torchvision's
``FrozenBatchNorm2d`` and every timm ``BatchNormAct2d`` becomes timm's ``FrozenBatchNormAct2d`` (its
activation and drop layer are kept). Both hold ``weight``, ``bias``, ``running_mean`` and
``running_var`` as *buffers*: no gradient, no optimiser update, eval behaviour in ``train()``,
and the same state-dict keys as the unfrozen layer (``num_batches_tracked`` is dropped on load).
"""

from __future__ import annotations

import logging

import torch.nn as nn
from timm.layers import FrozenBatchNormAct2d, freeze_batch_norm_2d
from torchvision.ops.misc import FrozenBatchNorm2d

__all__ = ["freeze_batch_norm", "count_batch_norm", "FROZEN_BN_TYPES"]

logger = logging.getLogger(__name__)

FROZEN_BN_TYPES = (FrozenBatchNorm2d, FrozenBatchNormAct2d)


def count_batch_norm(module: nn.Module) -> tuple[int, int]:
    """Return ``(trainable, frozen)`` counts of BatchNorm layers in ``module``."""
    trainable = sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules())
    frozen = sum(isinstance(m, FROZEN_BN_TYPES) for m in module.modules())
    return trainable, frozen


def freeze_batch_norm(module: nn.Module) -> nn.Module:
    """Replace every BatchNorm2d / SyncBatchNorm / timm BatchNormAct2d by a frozen copy.

    Works in place on children; returns the (possibly new) top module, which differs from ``module``
    only when ``module`` itself is a BatchNorm layer. Values are copied, so outputs in eval mode are
    unchanged by the conversion.
    """
    # timm's converter handles both BatchNorm2d and BatchNormAct2d (keeping .act and .drop); it is
    # the maintained version of what the paper's code attempted by class-name matching.
    out = freeze_batch_norm_2d(module)
    trainable, frozen = count_batch_norm(out)
    if trainable:
        # a BatchNorm1d/3d or an exotic subclass would silently keep training: say so loudly
        leftovers = sorted({type(m).__name__ for m in out.modules()
                            if isinstance(m, nn.modules.batchnorm._BatchNorm)})
        raise TypeError(f"freeze_batch_norm left {trainable} unfrozen BatchNorms: {leftovers}")
    logger.debug("froze %d BatchNorm layers", frozen)
    return out
