"""ONNX export of the whole EffDetMask (detections and 28x28 masks) and an onnxruntime predictor.

The graph takes an image batch and returns fixed-size padded outputs; pasting the masks at the
original resolution stays outside the graph, in the same :func:`finalize_instances` the PyTorch
model ends with, so both paths give the same final instances.
"""

from __future__ import annotations

import logging
from typing import Any, Dict, List, Sequence

import numpy as np
import torch
import torch.nn as nn

from ..modeling.postprocess import finalize_instances, image_meta, select_padded

__all__ = ["EffDetMaskOnnxWrapper", "export_onnx", "OnnxPredictor", "OUTPUT_NAMES",
           "match_by_score"]

logger = logging.getLogger(__name__)

OUTPUT_NAMES = ["boxes", "scores", "classes", "masks"]


class EffDetMaskOnnxWrapper(nn.Module):
    """``forward(images: uint8/float [B, 3, S, S] RGB 0..255) -> (boxes, scores, classes, masks)``.

    * ``boxes``: ``float32 [B, N, 4]`` xyxy in input pixels; ``scores``: ``float32 [B, N]``, ``-1``
      on padding rows; ``classes``: ``int64 [B, N]`` 0..45; ``masks``: ``float32 [B, N, 2R, 2R]``
      probabilities of each row's class. ``N`` = ``MODEL.EFFDET_HEAD.MAX_DETECTIONS``.
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
        logits = m.mask_head.forward_rois(features, rois, det["classes"].reshape(-1))
        masks = logits.sigmoid().reshape(batch, n, *logits.shape[-2:])
        return det["boxes"], det["scores"], det["classes"], masks


def export_onnx(model: nn.Module, path: str, image_size: int, *, opset: int = 17,
                batch_size: int = 2) -> str:
    """Export ``model`` (an eval-mode ``EffDetMask``) to ``path`` with a dynamic batch axis.

    Uses the TorchScript-based exporter (``dynamo=False``), for which torchvision registers the
    ONNX symbolics of ``nms`` (``NonMaxSuppression``) and ``roi_align`` (``RoiAlign``).
    """
    wrapper = EffDetMaskOnnxWrapper(model.eval()).eval()
    dummy = torch.randint(0, 256, (batch_size, 3, image_size, image_size), dtype=torch.uint8)
    dynamic = {"images": {0: "batch"}, **{k: {0: "batch"} for k in OUTPUT_NAMES}}
    with torch.inference_mode(False), torch.no_grad():
        torch.onnx.export(wrapper, (dummy,), path, input_names=["images"],
                          output_names=OUTPUT_NAMES, dynamic_axes=dynamic, opset_version=opset,
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


class OnnxPredictor:
    """onnxruntime (CPU) session of an exported model behind the PyTorch model's eval contract.

    ``predictor(batched_inputs)`` takes mapper outputs and returns per image ``{"instances":
    ...}`` exactly as ``EffDetMask`` does (same selection, same pasting code).
    """

    def __init__(self, path: str, *, score_thresh: float = 0.05, detections_per_image: int = 100,
                 mask_threshold: float = 0.5, threads: int = 0) -> None:
        import onnxruntime as ort  # optional at import time of the package

        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        self.score_thresh = score_thresh
        self.detections_per_image = detections_per_image
        self.mask_threshold = mask_threshold

    def run(self, images: np.ndarray) -> Dict[str, np.ndarray]:
        """Raw padded outputs for ``uint8 [B, 3, S, S]`` images."""
        return dict(zip(OUTPUT_NAMES, self.session.run(OUTPUT_NAMES, {"images": images})))

    def __call__(self, batched_inputs: Sequence[Dict[str, Any]], return_rle: bool = False
                 ) -> List[Dict[str, Any]]:
        images = torch.stack([x["image"] for x in batched_inputs]).numpy()
        det = {k: torch.from_numpy(v) for k, v in self.run(images).items()}
        det["valid"] = det["scores"] >= 0
        scales, heights, widths = image_meta(batched_inputs, torch.device("cpu"))
        keep = select_padded(det, scales, heights, widths, score_thresh=self.score_thresh,
                             max_detections=self.detections_per_image)
        instances = finalize_instances(
            det["boxes"][keep], det["scores"][keep], det["classes"][keep], det["masks"][keep],
            counts=keep.sum(1).tolist(), scales=[float(x["scale"]) for x in batched_inputs],
            heights=[int(x["height"]) for x in batched_inputs],
            widths=[int(x["width"]) for x in batched_inputs], mask_threshold=self.mask_threshold,
            return_rle=return_rle,
        )
        return [{"instances": inst} for inst in instances]
