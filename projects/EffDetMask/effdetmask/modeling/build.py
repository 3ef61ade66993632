"""``build_model(cfg)``: the one entry point that turns a config into a ready model."""

from __future__ import annotations

import logging
from typing import Optional, Union

import torch
import torch.nn as nn

from .fold_bn import fold_batch_norm
from .frozen_bn import freeze_batch_norm
from .inference import apply_inference_options
from .registry import META_ARCH_REGISTRY
from .weights import load_weights

__all__ = ["build_model"]

logger = logging.getLogger(__name__)


def build_model(cfg, device: Optional[Union[str, torch.device]] = None, *,
                inference_only: bool = False) -> nn.Module:
    """Build ``MODEL.META_ARCHITECTURE``, freeze BN (MODEL.FREEZE_BN), load weights, move it to
    ``device`` (default MODEL.DEVICE) and apply the inference switches (MODEL.CHANNELS_LAST,
    MODEL.COMPILE, MODEL.CUDA_GRAPHS; see :mod:`.inference`).

    BN is frozen before loading so frozen checkpoints (no ``num_batches_tracked``) load cleanly.
    The model is returned in train mode, like a freshly built ``nn.Module``; with
    ``inference_only`` (predictor, benchmarks, export) it is returned in eval mode with its
    BatchNorms folded into the convolutions (TEST.FOLD_BN, :mod:`.fold_bn`), and refuses
    ``train()``.
    """
    arch = META_ARCH_REGISTRY.get(cfg.MODEL.META_ARCHITECTURE)
    model = arch(**arch.from_config(cfg))
    if cfg.MODEL.FREEZE_BN:
        model = freeze_batch_norm(model)
    load_weights(model, cfg)
    model = model.to(device if device is not None else cfg.MODEL.DEVICE)
    if inference_only:
        model.eval()
        if cfg.TEST.FOLD_BN:
            logger.info("folded %d BatchNorms into convolutions", fold_batch_norm(model))
            _refuse_training(model)
    model = apply_inference_options(model, channels_last=cfg.MODEL.CHANNELS_LAST,
                                    compile=cfg.MODEL.COMPILE, cuda_graphs=cfg.MODEL.CUDA_GRAPHS)
    logger.info("built %s: %.2fM parameters", cfg.MODEL.META_ARCHITECTURE,
                sum(p.numel() for p in model.parameters()) / 1e6)
    return model


def _refuse_training(model: nn.Module) -> None:
    """``model.train()`` raises: its BatchNorms were folded away (``eval()`` still works)."""
    set_mode = model.train

    def train(mode: bool = True) -> nn.Module:
        if mode:
            raise RuntimeError(
                "this model was built with inference_only=True (BatchNorm folded into the "
                "convolutions, TEST.FOLD_BN): build a new one with build_model(cfg) to train"
            )
        return set_mode(False)

    model.train = train
