"""The project's one inference-timing implementation (benchmarks and ``--eval-only`` share it).

Callables are timed *interleaved*: every repeat runs each of them once, in turn, so a slow period on
a shared machine hits all of them alike and their ratios stay meaningful. Warm-up calls are not
timed; the figure reported is the median over repeats. CUDA work is asynchronous, so the clock is
read only after ``torch.cuda.synchronize`` on CUDA devices (never called for CPU runs).
"""

from __future__ import annotations

import statistics
import time
from typing import Any, Callable, Dict, List, Sequence

import torch

__all__ = ["synchronize", "time_callables", "time_inference"]


def synchronize(device: torch.device) -> None:
    """Wait for queued CUDA work on ``device``; a no-op elsewhere."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def time_callables(
    fns: Dict[str, Callable[[], Any]],
    *,
    images_per_call: Dict[str, int],
    devices: Dict[str, torch.device],
    warmup: int = 2,
    repeats: int = 5,
) -> Dict[str, Dict[str, float]]:
    """Median seconds per image of each zero-argument callable, timed round-robin.

    Returns:
        per name ``{"s_per_img", "img_per_s", "min_s_per_img", "repeats"}``.
    """
    for _ in range(warmup):
        for name, fn in fns.items():
            fn()
            synchronize(devices[name])
    samples: Dict[str, List[float]] = {name: [] for name in fns}
    for _ in range(max(1, repeats)):
        for name, fn in fns.items():
            synchronize(devices[name])
            start = time.perf_counter()
            fn()
            synchronize(devices[name])
            samples[name].append((time.perf_counter() - start) / images_per_call[name])
    return {
        name: {"s_per_img": statistics.median(s), "img_per_s": 1.0 / statistics.median(s),
               "min_s_per_img": min(s), "repeats": len(s)}
        for name, s in samples.items()
    }


def time_inference(model: torch.nn.Module, batches: Sequence[List[dict]], warmup: int = 2,
                   device: torch.device = torch.device("cpu")) -> Dict[str, float]:
    """Median seconds per image of ``model`` in eval mode, cycling through ``batches``.

    Args:
        batches: mapper-output batches (lists of dicts) of equal size.
    Returns:
        ``{"s_per_img", "img_per_s", "batch_size", "timed_batches"}``.
    """
    model.eval()
    cursor = iter(range(1 << 62))

    def step() -> None:
        model(batches[next(cursor) % len(batches)])

    repeats = max(1, len(batches) - warmup)
    out = time_callables({"model": step}, images_per_call={"model": len(batches[0])},
                         devices={"model": device}, warmup=warmup, repeats=repeats)["model"]
    return {"s_per_img": out["s_per_img"], "img_per_s": out["img_per_s"],
            "batch_size": len(batches[0]), "timed_batches": out["repeats"]}
