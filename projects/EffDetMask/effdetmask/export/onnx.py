"""ONNX export of the whole EffDetMask (detections, 28x28 masks and, with an attribute head, the
294 attribute scores) and an onnxruntime predictor.

The graph takes an image batch and returns fixed-size padded outputs; pasting the masks at the
original resolution stays outside the graph, in the same :func:`select_detections` and
:func:`instances_from_detections` the PyTorch model ends with, so both paths give the same final
instances.
"""

from __future__ import annotations

import logging
from typing import Any, Dict, List, Sequence

import numpy as np
import torch
import torch.nn as nn

from ..modeling.postprocess import instances_from_detections, select_detections

__all__ = ["EffDetMaskOnnxWrapper", "export_onnx", "OnnxPredictor", "OUTPUT_NAMES",
           "ATTRIBUTE_OUTPUT", "output_names", "match_by_score", "session_options"]

logger = logging.getLogger(__name__)

OUTPUT_NAMES = ["boxes", "scores", "classes", "masks"]
ATTRIBUTE_OUTPUT = "attribute_scores"  # the extra output of a model with an attribute head


def output_names(model: nn.Module) -> List[str]:
    """The graph outputs of ``model``: :data:`OUTPUT_NAMES`, plus :data:`ATTRIBUTE_OUTPUT` when
    its RoI heads have an attribute head."""
    has_attributes = getattr(model.roi_heads, "attribute_head", None) is not None
    return OUTPUT_NAMES + [ATTRIBUTE_OUTPUT] * has_attributes


class EffDetMaskOnnxWrapper(nn.Module):
    """``forward(images: uint8/float [B, 3, S, S] RGB 0..255) -> (boxes, scores, classes, masks)``
    and, with an attribute head, ``attribute_scores`` last (:func:`output_names`).

    * ``boxes``: ``float32 [B, N, 4]`` xyxy in input pixels; ``scores``: ``float32 [B, N]``, ``-1``
      on padding rows; ``classes``: ``int64 [B, N]`` 0..45; ``masks``: ``float32 [B, N, 2R, 2R]``
      probabilities of each row's class; ``attribute_scores``: ``float32 [B, N, 294]`` sigmoid
      scores (dense attribute order). ``N`` = ``MODEL.EFFDET_HEAD.MAX_DETECTIONS``.
    * No score threshold inside: :meth:`OnnxPredictor.__call__` applies ``TEST.SCORE_THRESH``.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor):
        m = self.model
        x = (images.float() - m.pixel_mean) / m.pixel_std
        features, cls_outputs, box_outputs = m.dense_forward(x)
        det = m.proposal_generator.detect(cls_outputs, box_outputs)
        batch, n = det["scores"].shape
        image_idx = torch.arange(batch, device=x.device)[:, None].expand(batch, n).reshape(-1, 1)
        rois = torch.cat([image_idx.to(x.dtype), det["boxes"].reshape(-1, 4)], dim=1)
        out = m.roi_heads.inference(features, rois, det["classes"].reshape(-1))
        masks = out["mask_probs"].reshape(batch, n, *out["mask_probs"].shape[-2:])
        if ATTRIBUTE_OUTPUT not in out:
            return det["boxes"], det["scores"], det["classes"], masks
        attributes = out[ATTRIBUTE_OUTPUT].reshape(batch, n, -1)
        return det["boxes"], det["scores"], det["classes"], masks, attributes


def export_onnx(model: nn.Module, path: str, image_size: int, *, opset: int = 17,
                batch_size: int = 2) -> str:
    """Export ``model`` (an eval-mode ``EffDetMask``) to ``path`` with a dynamic batch axis.

    Uses the TorchScript-based exporter (``dynamo=False``), for which torchvision registers the
    ONNX symbolics of ``nms`` (``NonMaxSuppression``) and ``roi_align`` (``RoiAlign``).
    """
    wrapper = EffDetMaskOnnxWrapper(model.eval()).eval()
    dummy = torch.randint(0, 256, (batch_size, 3, image_size, image_size), dtype=torch.uint8)
    names = output_names(model)
    dynamic = {"images": {0: "batch"}, **{k: {0: "batch"} for k in names}}
    with torch.inference_mode(False), torch.no_grad():
        torch.onnx.export(wrapper, (dummy,), path, input_names=["images"],
                          output_names=names, dynamic_axes=dynamic, opset_version=opset,
                          dynamo=False)
    logger.info("exported %s (opset %d, dynamic batch)", path, opset)
    return path


def match_by_score(scores_a: torch.Tensor, classes_a: torch.Tensor, boxes_a: torch.Tensor,
                   scores_b: torch.Tensor, classes_b: torch.Tensor, boxes_b: torch.Tensor,
                   score_tol: float = 1e-5) -> torch.Tensor:
    """For each detection of A (``[N]``, ``[N]``, ``[N, 4]``), the index of its counterpart in B.

    Detections are matched by score rank; inside a group of tied scores (same class, scores within
    ``score_tol``: e.g. identical logits of anchors on uniform padding, whose order two runtimes
    may break differently) the closest box is taken. Rows without a tie candidate get ``-1``.
    """
    tied = (scores_a[:, None] - scores_b[None]).abs() <= score_tol
    tied &= classes_a[:, None] == classes_b[None]
    dist = (boxes_a[:, None] - boxes_b[None]).abs().amax(-1)
    dist = torch.where(tied, dist, torch.full_like(dist, float("inf")))
    match = dist.argmin(1) if len(scores_b) else torch.zeros_like(classes_a)
    return torch.where(tied.any(1), match, torch.full_like(match, -1))


def session_options(threads: int = 0, *, graph_optimization: str = "all",
                    cpu_mem_arena: bool = True, parallel: bool = False) -> Any:
    """``onnxruntime.SessionOptions`` for the exported graph.

    The defaults are the fastest measured for fp32 and int8 d0/d0_fast (``all``, arena on,
    sequential; benchmarks/bench_onnx_runtime.py): ``basic`` is 1.2-2.4x slower (int8: no
    ``QLinearConv`` fusion), the arena off and parallel mode slower or within noise.

    Args:
        threads: intra-op threads; 0 = onnxruntime decides (one per physical core).
        graph_optimization: ``"basic"``, ``"extended"`` or ``"all"`` (``ORT_ENABLE_*``).
        cpu_mem_arena: onnxruntime's CPU memory arena (reuses buffers across runs).
        parallel: ``ORT_PARALLEL`` execution mode (independent branches run concurrently, on
            ``threads`` inter-op threads when ``threads`` is set) instead of ``ORT_SEQUENTIAL``.
    """
    import onnxruntime as ort

    levels = {"basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
              "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
              "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}
    if graph_optimization not in levels:
        raise ValueError(f"graph_optimization must be one of {sorted(levels)}, "
                         f"got {graph_optimization!r}")
    opts = ort.SessionOptions()
    opts.graph_optimization_level = levels[graph_optimization]
    opts.enable_cpu_mem_arena = cpu_mem_arena
    opts.execution_mode = (ort.ExecutionMode.ORT_PARALLEL if parallel
                           else ort.ExecutionMode.ORT_SEQUENTIAL)
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = threads if parallel else 1
    return opts


class OnnxPredictor:
    """onnxruntime (CPU) session of an exported model behind the PyTorch model's eval contract.

    ``predictor(batched_inputs)`` takes mapper outputs and returns per image ``{"instances":
    ...}`` exactly as ``EffDetMask`` does (same selection, same pasting code; ``attribute_scores``
    and ``attribute_ids``, thresholded at ``attribute_score_thresh``, when the graph has them).
    ``threads``, ``graph_optimization``, ``cpu_mem_arena`` and ``parallel``:
    :func:`session_options`.
    """

    def __init__(self, path: str, *, score_thresh: float = 0.05, detections_per_image: int = 100,
                 mask_threshold: float = 0.5, threads: int = 0,
                 attribute_score_thresh: float = 0.5, graph_optimization: str = "all",
                 cpu_mem_arena: bool = True, parallel: bool = False) -> None:
        import onnxruntime as ort  # optional at import time of the package

        opts = session_options(threads, graph_optimization=graph_optimization,
                               cpu_mem_arena=cpu_mem_arena, parallel=parallel)
        self.session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        self.score_thresh = score_thresh
        self.detections_per_image = detections_per_image
        self.mask_threshold = mask_threshold
        self.attribute_score_thresh = attribute_score_thresh
        self.output_names = [o.name for o in self.session.get_outputs()]

    def run(self, images: np.ndarray) -> Dict[str, np.ndarray]:
        """Raw padded outputs for ``uint8 [B, 3, S, S]`` images, by output name."""
        return dict(zip(self.output_names,
                        self.session.run(self.output_names, {"images": images})))

    def __call__(self, batched_inputs: Sequence[Dict[str, Any]], return_rle: bool = False
                 ) -> List[Dict[str, Any]]:
        images = torch.stack([x["image"] for x in batched_inputs]).numpy()
        det = {k: torch.from_numpy(v) for k, v in self.run(images).items()}
        det["valid"] = det["scores"] >= 0
        kept = select_detections(det, batched_inputs, score_thresh=self.score_thresh,
                                 max_detections=self.detections_per_image)
        return instances_from_detections(kept, kept["masks"], batched_inputs,
                                         mask_threshold=self.mask_threshold, return_rle=return_rle,
                                         attribute_score_thresh=self.attribute_score_thresh)
