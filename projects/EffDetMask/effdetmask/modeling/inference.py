"""Inference switches: autocast dtype, channels_last, ``torch.compile`` and CUDA graphs.

Each is a config key honoured by :func:`~effdetmask.modeling.build.build_model` through
:func:`apply_inference_options`; none changes the weights or the state dict. Only the static-shape
dense part (``model.dense_forward``: backbone + BiFPN + class/box heads) is compiled or captured:
the detection post-process and the mask head see data-dependent RoI counts.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Callable, Dict, Tuple

import torch
import torch.nn as nn

__all__ = ["AMP_DTYPES", "inference_context", "CudaGraphRunner", "apply_inference_options"]

logger = logging.getLogger(__name__)

AMP_DTYPES: Dict[str, torch.dtype] = {"bf16": torch.bfloat16, "fp16": torch.float16}


def inference_context(device: torch.device, amp_dtype: str = ""
                      ) -> contextlib.AbstractContextManager:
    """``torch.autocast`` to ``amp_dtype`` ("" = full precision, "bf16", "fp16") on ``device``."""
    if not amp_dtype:
        return contextlib.nullcontext()
    if amp_dtype not in AMP_DTYPES:
        raise ValueError(f"TEST.AMP_DTYPE must be '', 'bf16' or 'fp16', got {amp_dtype!r}")
    return torch.autocast(device.type, dtype=AMP_DTYPES[amp_dtype])


class CudaGraphRunner:
    """Replays ``fn(images)`` from a CUDA graph captured once per input shape/dtype/autocast state.

    The outputs live in the graph's static buffers and are overwritten by the next call: the caller
    must consume them first (``EffDetMask.forward`` does, within the same call).
    """

    def __init__(self, fn: Callable) -> None:
        self.fn = fn
        self.graphs: Dict[Tuple, Tuple[torch.cuda.CUDAGraph, torch.Tensor, object]] = {}

    def __call__(self, images: torch.Tensor):
        if images.device.type != "cuda":
            return self.fn(images)
        key = (tuple(images.shape), images.dtype, torch.is_autocast_enabled("cuda"),
               torch.get_autocast_dtype("cuda"))
        if key not in self.graphs:
            static_in = images.clone()
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):  # warm-up outside the graph (cuDNN autotune, lazy init)
                for _ in range(2):
                    self.fn(static_in)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                static_out = self.fn(static_in)
            self.graphs[key] = (graph, static_in, static_out)
            logger.info("captured a CUDA graph for input %s", tuple(images.shape))
        graph, static_in, static_out = self.graphs[key]
        static_in.copy_(images)
        graph.replay()
        return static_out


def apply_inference_options(
    model: nn.Module, *, channels_last: bool = False, compile: bool = False,
    cuda_graphs: bool = False,
) -> nn.Module:
    """Set the memory format, and compile / CUDA-graph ``model.dense_forward`` when it has one.

    Models without a ``dense_forward`` (the torchvision baseline) only get the memory format.
    """
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if not hasattr(model, "dense_forward"):
        if compile or cuda_graphs:
            logger.warning("%s has no dense_forward: MODEL.COMPILE / CUDA_GRAPHS ignored",
                           type(model).__name__)
        return model
    fn: Callable = model.dense_forward
    if compile:
        fn = torch.compile(fn, dynamic=False)
    if cuda_graphs:
        fn = CudaGraphRunner(fn)
    model.dense_impl = fn if (compile or cuda_graphs) else None
    return model
