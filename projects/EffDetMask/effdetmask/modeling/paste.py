"""Pasting ``R x R`` mask probabilities into full images as separable bilinear interpolation.

Bilinear resampling of a mask onto an axis-aligned box factorises into a row and a column
interpolation: ``pasted = Wy @ mask @ Wx^T`` with ``Wy [H, R]`` and ``Wx [W, R]`` holding at most
two non-zero weights per row. This equals ``grid_sample(bilinear, padding_mode="border",
align_corners=False)`` over the box (the straightforward implementation, kept as the test
reference) while never materialising a sampling grid. On GPU the masks of a batch are two batched
matmuls over the full canvas (no per-mask loop, no host sync); on CPU each mask costs only its own
box crop (23.7 -> 7.8 ms for 100 masks at 512x512, identical output).
"""

from __future__ import annotations

import contextlib
from typing import Iterator, List, Sequence, Tuple

import torch

__all__ = ["paste_masks_in_image", "paste_masks_in_images", "axis_weights"]

# Materialise at most this many float pixels per batched matmul (1 GiB in float32).
_PASTE_MEMORY_PIXELS = 1 << 28


def axis_weights(lo: torch.Tensor, hi: torch.Tensor, pixels: torch.Tensor, res: int
                 ) -> torch.Tensor:
    """Bilinear weights of the pixels ``pixels`` (integer indices, centres at ``+ 0.5``) along
    one axis.

    Args:
        lo, hi: ``float [K]`` box edges along the axis (output pixels).
        pixels: ``[P]`` or ``[K, P]`` pixel indices along the axis.
        res: mask resolution ``R`` along the axis.
    Returns:
        ``float32 [K, P, R]``; row ``p`` holds the weights of mask cells for pixel ``p``:
        border-clamped bilinear weights when the pixel centre lies in ``[lo, hi]``, else zeros (the
        mask says nothing outside its box).
    """
    centres = pixels.float() + 0.5
    size = (hi - lo).clamp(min=1e-6)[:, None]
    rel = (centres - lo[:, None]) / size  # [K, P]: 0..1 inside the box
    # grid_sample's align_corners=False source coordinate, clamped = padding_mode "border"
    src = (rel * res - 0.5).clamp(0, res - 1)
    i0 = src.floor()
    frac = src - i0
    i0 = i0.long()
    i1 = (i0 + 1).clamp(max=res - 1)
    inside = ((rel >= 0) & (rel <= 1)).float()
    w = torch.zeros(*src.shape, res, device=lo.device, dtype=torch.float32)
    w.scatter_add_(2, i0[..., None], ((1 - frac) * inside)[..., None])
    w.scatter_add_(2, i1[..., None], (frac * inside)[..., None])
    return w


def _resample(probs: torch.Tensor, boxes: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor
              ) -> torch.Tensor:
    """``probs [K, R, R]`` at pixels ``rows x cols`` (``[P]`` or ``[K, P]``): ``[K, Py, Px]``."""
    wy = axis_weights(boxes[:, 1], boxes[:, 3], rows, probs.shape[1])
    wx = axis_weights(boxes[:, 0], boxes[:, 2], cols, probs.shape[2])
    return torch.bmm(torch.bmm(wy, probs.float()), wx.transpose(1, 2))


def _paste_batched(mask_probs: torch.Tensor, boxes: torch.Tensor, height: int, width: int,
                   threshold: float) -> torch.Tensor:
    """All masks on the full ``height x width`` canvas (GPU path: no host sync at all)."""
    n = mask_probs.shape[0]
    out = torch.empty(n, height, width, dtype=torch.bool, device=mask_probs.device)
    rows = torch.arange(height, device=boxes.device)
    cols = torch.arange(width, device=boxes.device)
    chunk = max(1, min(n, _PASTE_MEMORY_PIXELS // max(1, height * width)))
    for s in range(0, n, chunk):
        # a pixel outside the box has all-zero weights, so it stays off for any threshold > 0
        out[s:s + chunk] = _resample(mask_probs[s:s + chunk], boxes[s:s + chunk], rows,
                                     cols) >= threshold
    return out


@contextlib.contextmanager
def _single_thread() -> Iterator[None]:
    """Run a stretch of tiny ops on one intra-op thread.

    A crop matmul is far below the size where a second thread helps, and on a loaded machine
    every parallel region can wait a whole scheduler slice for its second thread: measured 7.6 ms
    for 100 masks on one thread against 3.8 s on two threads while another process was busy.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _paste_crops(mask_probs: torch.Tensor, boxes: torch.Tensor, height: int, width: int,
                 threshold: float) -> torch.Tensor:
    """Each mask computed on its own box crop only (CPU path: the least arithmetic)."""
    n = mask_probs.shape[0]
    out = torch.zeros(n, height, width, dtype=torch.bool)
    with _single_thread():
        # weights of the whole image axis for all masks at once, sliced per box below
        wy = axis_weights(boxes[:, 1], boxes[:, 3], torch.arange(height), mask_probs.shape[1])
        wx = axis_weights(boxes[:, 0], boxes[:, 2], torch.arange(width), mask_probs.shape[2])
        lo = boxes[:, :2].floor().clamp(min=0).long()
        hi = torch.minimum(boxes[:, 2:].ceil(), boxes.new_tensor([width, height])).long()
        probs = mask_probs.float()
        for k, (x0, y0, x1, y1) in enumerate(torch.cat([lo, hi], 1).tolist()):
            if x1 > x0 and y1 > y0:
                out[k, y0:y1, x0:x1] = wy[k, y0:y1] @ probs[k] @ wx[k, x0:x1].T >= threshold
    return out


def paste_masks_in_image(
    mask_probs: torch.Tensor, boxes_xyxy: torch.Tensor, height: int, width: int,
    threshold: float = 0.5,
) -> torch.Tensor:
    """Paste ``float [N, R, R]`` mask probabilities into ``bool [N, height, width]`` images.

    Each mask is resampled bilinearly (border-clamped, pixel centres) onto the pixels of its box
    ``boxes_xyxy`` (``float [N, 4]`` in the *output* image's pixels, unclipped) and thresholded
    (``>= threshold``, which must be > 0). Only pixels whose centre lies inside the box can be on.
    """
    n = mask_probs.shape[0]
    if n == 0 or height == 0 or width == 0:
        return torch.zeros(n, height, width, dtype=torch.bool, device=mask_probs.device)
    boxes = boxes_xyxy.float().reshape(-1, 4)
    if mask_probs.device.type == "cpu":
        return _paste_crops(mask_probs, boxes, height, width, threshold)
    return _paste_batched(mask_probs, boxes, height, width, threshold)


def paste_masks_in_images(
    mask_probs: torch.Tensor, boxes_xyxy: torch.Tensor, counts: Sequence[int],
    sizes: Sequence[Tuple[int, int]], threshold: float = 0.5,
) -> List[torch.Tensor]:
    """Masks of a whole batch: image ``i`` owns ``counts[i]`` consecutive rows, size ``sizes[i]``.

    On GPU all masks go through one canvas of the largest ``(height, width)`` (batched matmuls, no
    per-image kernels) and each image gets a view of its own ``[:h, :w]`` corner; on CPU each image
    is pasted on its own crops.

    Returns:
        per image ``bool [counts[i], h_i, w_i]``.
    """
    if mask_probs.device.type == "cpu" or not len(counts):
        probs, boxes = mask_probs.split(list(counts)), boxes_xyxy.split(list(counts))
        return [paste_masks_in_image(p, b, h, w, threshold)
                for p, b, (h, w) in zip(probs, boxes, sizes)]
    height = max(h for h, _ in sizes)
    width = max(w for _, w in sizes)
    canvas = paste_masks_in_image(mask_probs, boxes_xyxy, height, width, threshold)
    return [c[:, :h, :w] for c, (h, w) in zip(canvas.split(list(counts)), sizes)]
