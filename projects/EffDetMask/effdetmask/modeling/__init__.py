"""Model parts, registered at the swap points of :mod:`effdetmask.modeling.registry`.

Importing this package runs every registration, so ``build_model(cfg)`` can find any part by name.
"""

from .attribute_head import AttributeHead, attribute_loss, attribute_targets
from .backbone import TimmBiFPNBackbone
from .baseline import MaskRCNNBaseline
from .build import build_model
from .effdet_utils import ShapeSpec
from .frozen_bn import freeze_batch_norm
from .mask_head import (
    MaskRCNNConvUpsampleHead,
    mask_rcnn_loss,
    mask_rcnn_targets,
    paste_masks_in_image,
    select_training_rois,
)
from .meta_arch import EffDetMask
from .paste import paste_masks_in_images
from .postprocess import finalize_instances, instances_from_detections, select_detections
from .proposal_generator import EfficientDetProposalGenerator
from .registry import (
    BACKBONE_REGISTRY,
    META_ARCH_REGISTRY,
    PROPOSAL_GENERATOR_REGISTRY,
    ROI_HEADS_REGISTRY,
    ROI_MASK_HEAD_REGISTRY,
)
from .roi_heads import EffDetROIHeads
from .weights import load_checkpoint, load_effdet_checkpoint, load_weights

__all__ = [
    "BACKBONE_REGISTRY",
    "META_ARCH_REGISTRY",
    "PROPOSAL_GENERATOR_REGISTRY",
    "ROI_HEADS_REGISTRY",
    "ROI_MASK_HEAD_REGISTRY",
    "ShapeSpec",
    "TimmBiFPNBackbone",
    "EfficientDetProposalGenerator",
    "MaskRCNNConvUpsampleHead",
    "EffDetROIHeads",
    "AttributeHead",
    "attribute_loss",
    "attribute_targets",
    "EffDetMask",
    "MaskRCNNBaseline",
    "build_model",
    "load_weights",
    "load_checkpoint",
    "load_effdet_checkpoint",
    "freeze_batch_norm",
    "select_training_rois",
    "mask_rcnn_targets",
    "mask_rcnn_loss",
    "paste_masks_in_image",
    "select_detections",
    "instances_from_detections",
    "finalize_instances",
    "paste_masks_in_images",
]
