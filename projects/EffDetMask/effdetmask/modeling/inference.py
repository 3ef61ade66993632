"""Inference switches: autocast dtype, channels_last, ``torch.compile`` and CUDA graphs.

Each is a config key honoured by :func:`~effdetmask.modeling.build.build_model` through
:func:`apply_inference_options`; none changes the weights or the state dict. Only the static-shape
dense part (``model.dense_forward``: backbone + BiFPN + class/box heads) is compiled or captured:
the detection post-process and the mask head see data-dependent RoI counts.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from typing import Callable, Dict, Tuple

import torch
import torch.nn as nn

__all__ = ["AMP_DTYPES", "AMP_CHOICES", "cpu_has_native_bf16", "resolve_amp_dtype",
           "inference_context", "CudaGraphRunner", "apply_inference_options"]

logger = logging.getLogger(__name__)

AMP_DTYPES: Dict[str, torch.dtype] = {"bf16": torch.bfloat16, "fp16": torch.float16}
# TEST.AMP_DTYPE's values: "" = fp32; "auto" = bf16 on a CPU with native bf16, else fp32
AMP_CHOICES = ("", "auto", *AMP_DTYPES)
# CPU feature flags (Linux /proc/cpuinfo) of native bf16 arithmetic: AVX-512 BF16 and AMX
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


@functools.lru_cache(maxsize=None)
def cpu_has_native_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether this CPU computes bf16 natively (AVX-512 BF16 or AMX), from ``cpuinfo``'s flags.

    Without such units oneDNN emulates bf16 and autocast is slower than fp32, so "auto" keeps
    fp32 there; where the file does not exist (macOS, Windows) the answer is ``False``."""
    try:
        with open(cpuinfo, "r", encoding="utf-8", errors="replace") as f:
            flags = {w for line in f if line.startswith("flags") for w in line.split()}
    except OSError:
        return False
    return any(flag in flags for flag in NATIVE_BF16_FLAGS)


def resolve_amp_dtype(amp_dtype: str, device: torch.device) -> str:
    """TEST.AMP_DTYPE for ``device``: "auto" becomes "bf16" on a CPU with native bf16 and ""
    (fp32) anywhere else; the other values are returned as given, after validation."""
    if amp_dtype not in AMP_CHOICES:
        raise ValueError(f"TEST.AMP_DTYPE must be one of {AMP_CHOICES}, got {amp_dtype!r}")
    if amp_dtype == "auto":
        return "bf16" if device.type == "cpu" and cpu_has_native_bf16() else ""
    return amp_dtype


def inference_context(device: torch.device, amp_dtype: str = ""
                      ) -> contextlib.AbstractContextManager:
    """``torch.autocast`` to ``amp_dtype`` ("" = full precision, "auto", "bf16", "fp16") on
    ``device`` (:func:`resolve_amp_dtype`)."""
    amp_dtype = resolve_amp_dtype(amp_dtype, torch.device(device))
    if not amp_dtype:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=AMP_DTYPES[amp_dtype])


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
