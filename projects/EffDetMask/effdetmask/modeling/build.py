"""``build_model(cfg)``: the one entry point that turns a config into a ready model."""

from __future__ import annotations

import logging
from typing import Optional, Set, Union

import torch
import torch.nn as nn

from .fold_bn import fold_batch_norm
from .frozen_bn import freeze_loaded_batch_norms, identity_batch_norms
from .inference import apply_inference_options
from .registry import META_ARCH_REGISTRY
from .weights import load_weights

__all__ = ["build_model", "pretrained_state_keys"]

logger = logging.getLogger(__name__)


def build_model(cfg, device: Optional[Union[str, torch.device]] = None, *,
                inference_only: bool = False) -> nn.Module:
    """Build ``MODEL.META_ARCHITECTURE``, load weights, freeze BN (MODEL.FREEZE_BN), move it to
    ``device`` (default MODEL.DEVICE) and apply the inference switches (MODEL.CHANNELS_LAST,
    MODEL.COMPILE, MODEL.CUDA_GRAPHS; see :mod:`.inference`).

    MODEL.FREEZE_BN freezes the BatchNorms whose statistics were loaded (the backbone's from
    MODEL.BACKBONE.PRETRAINED, the parts MODEL.EFFDET_HEAD.EFFDET_CHECKPOINT and MODEL.WEIGHTS
    assign); the rest train. Asking to freeze with nothing loaded is an error.

    The model is returned in train mode, like a freshly built ``nn.Module``; with
    ``inference_only`` (predictor, benchmarks, export) it is returned in eval mode with its
    BatchNorms folded into the convolutions (TEST.FOLD_BN, :mod:`.fold_bn`): the
    :class:`.fold_bn.FoldedBatchNorm` left in their place raise on a training-mode forward.
    """
    arch = META_ARCH_REGISTRY.get(cfg.MODEL.META_ARCHITECTURE)
    model = arch(**arch.from_config(cfg))
    loaded = pretrained_state_keys(model) | load_weights(model, cfg)
    if cfg.MODEL.FREEZE_BN:
        freeze_loaded_batch_norms(model, loaded)
        identities = identity_batch_norms(model)
        if identities:
            logger.warning("%d frozen BatchNorms compute the identity (their loaded statistics are "
                           "those of a fresh layer), first: %s", len(identities), identities[:3])
    model = model.to(device if device is not None else cfg.MODEL.DEVICE)
    if inference_only:
        model.eval()
        if cfg.TEST.FOLD_BN:
            logger.info("folded %d BatchNorms into convolutions", fold_batch_norm(model))
    model = apply_inference_options(model, channels_last=cfg.MODEL.CHANNELS_LAST,
                                    compile=cfg.MODEL.COMPILE, cuda_graphs=cfg.MODEL.CUDA_GRAPHS)
    logger.info("built %s: %.2fM parameters", cfg.MODEL.META_ARCHITECTURE,
                sum(p.numel() for p in model.parameters()) / 1e6)
    return model


def pretrained_state_keys(model: nn.Module) -> Set[str]:
    """State-dict keys of ``model`` that its constructor loaded from pretrained weights: the
    backbone body's keys that :class:`.backbone.TimmBiFPNBackbone` loaded from
    MODEL.BACKBONE.PRETRAINED (its ``body_loaded_keys``)."""
    backbone = getattr(model, "backbone", None)
    return {f"backbone.body.{k}" for k in getattr(backbone, "body_loaded_keys", ())}
