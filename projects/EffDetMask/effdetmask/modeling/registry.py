"""Registries at the model's swap points. A config names the registered class to build.

Every registered class exposes ``from_config(cfg, **extra) -> dict`` of constructor keyword
arguments (or is a function taking ``cfg``); it is the only code that reads the config.
"""

from fvcore.common.registry import Registry

BACKBONE_REGISTRY = Registry("BACKBONE")
BACKBONE_REGISTRY.__doc__ = """
Backbone + feature pyramid. Built as ``cls(**cls.from_config(cfg))``.
``forward(images: Tensor[B, 3, S, S] normalised) -> Dict[str, Tensor]`` maps level names
``"p3".."p7"`` to ``[B, C, S / 2**l, S / 2**l]``;
``output_shape() -> Dict[str, (channels, stride)]``.
"""

PROPOSAL_GENERATOR_REGISTRY = Registry("PROPOSAL_GENERATOR")
PROPOSAL_GENERATOR_REGISTRY.__doc__ = """
Detector that also proposes the mask head's RoIs. Built as
``cls(**cls.from_config(cfg, input_shape=backbone.output_shape()))``.
``forward(features, targets=None) -> (detections, losses)``: detections per image are dicts with
``boxes`` (xyxy input pixels, float [N, 4]), ``scores`` [N], ``classes`` (0..45, int64 [N]);
losses is empty at inference.
"""

ROI_MASK_HEAD_REGISTRY = Registry("ROI_MASK_HEAD")
ROI_MASK_HEAD_REGISTRY.__doc__ = """
Mask head on RoIAlign features. Built as
``cls(**cls.from_config(cfg, input_shape=backbone.output_shape()))``.
``forward(features, boxes_xyxy: List[Tensor[N_i, 4]], classes: List[Tensor[N_i]])
-> Tensor[sum N_i, 28, 28]``: mask logits of the given class for each box.
"""

META_ARCH_REGISTRY = Registry("META_ARCH")
META_ARCH_REGISTRY.__doc__ = """
The whole model. Built with ``build_model(cfg)``. ``forward(batched_inputs: List[dict])``:
in training returns ``Dict[str, Tensor]`` of losses; in eval returns per image
``{"instances": {...}}`` (see ``effdetmask/modeling/meta_arch.py``).
"""
