"""Frozen BatchNorm that really freezes: running statistics AND affine parameters never change.

The paper's code matched BatchNorm layers by class name, which misses timm's ``BatchNormAct2d`` (a
``BatchNorm2d`` subclass that also applies the activation), and left running statistics updating in
``train()``. Here a ``nn.BatchNorm2d`` (effdet's BiFPN/heads, torchvision) becomes torchvision's
``FrozenBatchNorm2d`` and a timm ``BatchNormAct2d`` becomes timm's ``FrozenBatchNormAct2d`` (its
activation and drop layer are kept). Both hold ``weight``, ``bias``, ``running_mean`` and
``running_var`` as *buffers*: no gradient, no optimiser update, eval behaviour in ``train()``,
and the same state-dict keys as the unfrozen layer (``num_batches_tracked`` is dropped on load).

Freezing only makes sense for BatchNorms whose statistics came from somewhere: a freshly built
BatchNorm (mean 0, var 1, weight 1, bias 0) frozen is an identity, and a network of them passes
almost nothing through (the BiFPN outputs of a fully frozen random d0 have std ~1e-4). So
:func:`freeze_loaded_batch_norms` freezes only the layers whose statistics were loaded.
"""

from __future__ import annotations

import logging
from typing import Callable, Collection, List

import torch
import torch.nn as nn
from timm.layers import FrozenBatchNormAct2d, freeze_batch_norm_2d
from torchvision.ops.misc import FrozenBatchNorm2d

__all__ = [
    "freeze_batch_norm",
    "freeze_loaded_batch_norms",
    "count_batch_norm",
    "identity_batch_norms",
    "FROZEN_BN_TYPES",
]

logger = logging.getLogger(__name__)

FROZEN_BN_TYPES = (FrozenBatchNorm2d, FrozenBatchNormAct2d)
_TRAINABLE_BN = nn.modules.batchnorm._BatchNorm


def count_batch_norm(module: nn.Module) -> tuple[int, int]:
    """Return ``(trainable, frozen)`` counts of BatchNorm layers in ``module``."""
    trainable = sum(isinstance(m, _TRAINABLE_BN) for m in module.modules())
    frozen = sum(isinstance(m, FROZEN_BN_TYPES) for m in module.modules())
    return trainable, frozen


def identity_batch_norms(module: nn.Module) -> List[str]:
    """Names of the *frozen* BatchNorms that compute the identity (mean 0, var 1, weight 1, bias
    0: the statistics of a layer nothing initialised)."""
    names = []
    for name, m in module.named_modules():
        if isinstance(m, FROZEN_BN_TYPES):
            fields = (m.running_mean, m.running_var - 1, m.weight - 1, m.bias)
            if all(bool(torch.all(t == 0)) for t in fields):
                names.append(name)
    return names


def _freeze_where(module: nn.Module, select: Callable[[str], bool], prefix: str = "") -> int:
    """Replace, in place, each BatchNorm child whose qualified name ``select`` accepts."""
    count = 0
    for child_name, child in module.named_children():
        name = f"{prefix}{child_name}"
        if isinstance(child, _TRAINABLE_BN) and select(name):
            # timm's converter handles both BatchNorm2d and BatchNormAct2d (keeping .act and
            # .drop): the maintained version of what the paper's code attempted by class name
            setattr(module, child_name, freeze_batch_norm_2d(child))
            count += 1
        else:
            count += _freeze_where(child, select, f"{name}.")
    return count


def freeze_batch_norm(module: nn.Module) -> nn.Module:
    """Replace every BatchNorm2d / SyncBatchNorm / timm BatchNormAct2d by a frozen copy.

    Works in place on children; returns the (possibly new) top module, which differs from ``module``
    only when ``module`` itself is a BatchNorm layer. Values are copied, so outputs in eval mode are
    unchanged by the conversion. Use it on modules whose statistics are meaningful; a model
    builder wants :func:`freeze_loaded_batch_norms`.
    """
    out = freeze_batch_norm_2d(module)
    trainable, frozen = count_batch_norm(out)
    if trainable:
        # a BatchNorm1d/3d or an exotic subclass would silently keep training: say so loudly
        leftovers = sorted({type(m).__name__ for m in out.modules()
                            if isinstance(m, _TRAINABLE_BN)})
        raise TypeError(f"freeze_batch_norm left {trainable} unfrozen BatchNorms: {leftovers}")
    logger.debug("froze %d BatchNorm layers", frozen)
    return out


def freeze_loaded_batch_norms(model: nn.Module, loaded_keys: Collection[str]) -> tuple[int, int]:
    """Freeze the BatchNorms of ``model`` whose ``running_mean`` is among ``loaded_keys`` (state
    dict keys that a weights file assigned); the others keep training.

    Returns ``(frozen, still trainable)`` counts. Raises ``ValueError`` when no BatchNorm
    statistics were loaded at all: freezing would turn every BatchNorm into an identity.
    """
    loaded = set(loaded_keys)
    frozen = _freeze_where(model, lambda name: f"{name}.running_mean" in loaded)
    trainable, _ = count_batch_norm(model)
    if frozen == 0 and trainable:
        raise ValueError(
            "MODEL.FREEZE_BN True, but no BatchNorm statistics were loaded (MODEL.BACKBONE."
            "PRETRAINED, MODEL.EFFDET_HEAD.EFFDET_CHECKPOINT and MODEL.WEIGHTS give none): frozen "
            f"BatchNorms would compute the identity ({trainable} of them). Give pretrained weights "
            "(e.g. configs/effdet_lite0.yaml, MODEL.BACKBONE.PRETRAINED package or a file) or set "
            "MODEL.FREEZE_BN False to train every BatchNorm."
        )
    logger.info("froze %d BatchNorms with loaded statistics; %d BatchNorms train", frozen,
                trainable)
    return frozen, trainable
