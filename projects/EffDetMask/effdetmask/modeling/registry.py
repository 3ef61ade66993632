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
``forward(features, targets=None) -> (detections, losses)``; losses is empty at inference.
``head_outputs(features) -> (cls_outputs, box_outputs)`` and
``detect(cls_outputs, box_outputs) -> detections``: the padded batch ``boxes`` (xyxy input pixels,
float [B, N, 4]), ``scores`` [B, N] (sorted per image, -1 on padding), ``classes`` (0..45, int64
[B, N]), ``valid`` (bool [B, N]); the one detection path of training, evaluation and ONNX export.
"""

ROI_MASK_HEAD_REGISTRY = Registry("ROI_MASK_HEAD")
ROI_MASK_HEAD_REGISTRY.__doc__ = """
Mask head on RoIAlign features. Built as
``cls(**cls.from_config(cfg, input_shape=backbone.output_shape()))``.
``forward(features, boxes_xyxy: List[Tensor[N_i, 4]], classes: List[Tensor[N_i]])
-> Tensor[sum N_i, 2R, 2R]``: mask logits of the given class for each box (training);
``forward_rois(features, rois: Tensor[K, 5], classes: Tensor[K]) -> Tensor[K, 2R, 2R]`` the same
for flat RoIs ``(image index, x0, y0, x1, y1)`` (evaluation and the ONNX graph). Boxes in input
pixels.
"""

ROI_HEADS_REGISTRY = Registry("ROI_HEADS")
ROI_HEADS_REGISTRY.__doc__ = """
Everything done per RoI after the proposal generator: choosing the training RoIs, the mask head
(built from ROI_MASK_HEAD_REGISTRY), the optional attribute head, their targets, losses and
inference (detectron2's ``StandardROIHeads``). Built as
``cls(**cls.from_config(cfg, input_shape=backbone.output_shape()))``; its parameters live in
children (``mask_head``, ``attribute_head``).
``forward(features, detections, targets) -> Dict[str, Tensor]``: training losses (``loss_mask``,
plus ``loss_attribute`` with the attribute head), given the proposal generator's padded
``detections`` (detached inside) and per-image ``targets`` (``boxes`` xyxy input pixels,
``classes``, ``masks`` uint8 [N, S, S], optionally ``attributes`` float [N, 294] and
``attributes_known`` bool [N]).
``inference(features, rois: Tensor[K, 5], classes: Tensor[K]) -> Dict[str, Tensor]``: for flat
RoIs ``(image index, x0, y0, x1, y1)`` in input pixels, ``mask_probs`` float [K, 2R, 2R] (the
given class's channel), plus ``attribute_scores`` float [K, 294] (sigmoid, dense attribute order)
with the attribute head; the one RoI path of evaluation and the ONNX graph.
"""

META_ARCH_REGISTRY = Registry("META_ARCH")
META_ARCH_REGISTRY.__doc__ = """
The whole model. Built with ``build_model(cfg)``. ``forward(batched_inputs: List[dict])``:
in training returns ``Dict[str, Tensor]`` of losses; in eval returns per image
``{"instances": {...}}`` (see ``effdetmask/modeling/meta_arch.py``).
"""
