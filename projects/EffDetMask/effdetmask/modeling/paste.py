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

__all__ = ["paste_masks_in_image", "paste_masks_in_images", "iter_pasted_crops", "axis_weights"]

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


def _canvas_chunk(height: int, width: int, n: int) -> int:
    """Masks per batched matmul on a ``height x width`` canvas (``_PASTE_MEMORY_PIXELS`` floats)."""
    return max(1, min(n, _PASTE_MEMORY_PIXELS // max(1, height * width)))


def _iter_batched(mask_probs: torch.Tensor, boxes: torch.Tensor, height: int, width: int,
                  threshold: float) -> Iterator[Tuple[int, torch.Tensor]]:
    """``(start, bool [c, height, width])`` chunks of all masks on the full canvas."""
    rows = torch.arange(height, device=boxes.device)
    cols = torch.arange(width, device=boxes.device)
    chunk = _canvas_chunk(height, width, mask_probs.shape[0])
    for s in range(0, mask_probs.shape[0], chunk):
        # a pixel outside the box has all-zero weights, so it stays off for any threshold > 0
        yield s, _resample(mask_probs[s:s + chunk], boxes[s:s + chunk], rows, cols) >= threshold


def _paste_batched(mask_probs: torch.Tensor, boxes: torch.Tensor, height: int, width: int,
                   threshold: float) -> torch.Tensor:
    """All masks on the full ``height x width`` canvas (GPU path: no host sync at all)."""
    out = torch.empty(mask_probs.shape[0], height, width, dtype=torch.bool,
                      device=mask_probs.device)
    for s, masks in _iter_batched(mask_probs, boxes, height, width, threshold):
        out[s:s + len(masks)] = masks
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


def _crop_windows(boxes: torch.Tensor, height: int, width: int) -> List[List[int]]:
    """Per box ``[x0, y0, x1, y1]`` (ints): the pixels whose centre can lie inside it, clipped to
    the image; empty (``x1 <= x0`` or ``y1 <= y0``) when the box misses the image."""
    lo = boxes[:, :2].floor().clamp(min=0).long()
    hi = torch.minimum(boxes[:, 2:].ceil(), boxes.new_tensor([width, height])).long()
    return torch.cat([lo, hi], 1).tolist()


# Masks whose full-axis weights are built at once on the crop path (bounds their memory).
_CROP_WEIGHT_CHUNK = 32


def _iter_crops(mask_probs: torch.Tensor, boxes: torch.Tensor, height: int, width: int,
                threshold: float) -> Iterator[Tuple[int, int, torch.Tensor]]:
    """Each mask computed on its own box crop only (CPU path: the least arithmetic)."""
    probs = mask_probs.float()
    windows = _crop_windows(boxes, height, width)
    rows, cols = torch.arange(height), torch.arange(width)
    for s in range(0, probs.shape[0], _CROP_WEIGHT_CHUNK):
        e = s + _CROP_WEIGHT_CHUNK
        with _single_thread():
            # weights of the whole image axis for a few masks at once, sliced per box below
            wy = axis_weights(boxes[s:e, 1], boxes[s:e, 3], rows, probs.shape[1])
            wx = axis_weights(boxes[s:e, 0], boxes[s:e, 2], cols, probs.shape[2])
        for k, (x0, y0, x1, y1) in enumerate(windows[s:e]):
            if x1 <= x0 or y1 <= y0:
                yield 0, 0, torch.zeros(0, 0, dtype=torch.bool)
                continue
            # not around the yield: the consumer runs with the caller's threads
            with _single_thread():
                crop = wy[k, y0:y1] @ probs[s + k] @ wx[k, x0:x1].T >= threshold
            yield y0, x0, crop


def _paste_crops(mask_probs: torch.Tensor, boxes: torch.Tensor, height: int, width: int,
                 threshold: float) -> torch.Tensor:
    """All masks as ``bool [N, height, width]``, each computed on its own box crop."""
    out = torch.zeros(mask_probs.shape[0], height, width, dtype=torch.bool)
    crops = _iter_crops(mask_probs, boxes, height, width, threshold)
    with _single_thread():
        for k, (y0, x0, crop) in enumerate(crops):
            out[k, y0:y0 + crop.shape[0], x0:x0 + crop.shape[1]] = crop
    return out


def iter_pasted_crops(
    mask_probs: torch.Tensor, boxes_xyxy: torch.Tensor, height: int, width: int,
    threshold: float = 0.5,
) -> Iterator[Tuple[int, int, torch.Tensor]]:
    """:func:`paste_masks_in_image` one mask at a time, each only inside its box.

    Yields per mask, in order, ``(top, left, crop)``: ``crop`` is ``bool [h, w]`` (on the masks'
    device) and the pasted ``[height, width]`` mask equals ``crop`` at
    ``[top:top + h, left:left + w]`` and is off everywhere else (``h = w = 0`` when the box misses
    the image). Peak memory grows with one box's area, not ``N x height x width``: on CPU each
    crop is computed on its own (bit-identical to the dense paste); on GPU the masks go through
    the dense path's canvas chunks (bounded by ``_PASTE_MEMORY_PIXELS``) and are cut from them.
    """
    n = mask_probs.shape[0]
    boxes = boxes_xyxy.float().reshape(-1, 4)
    if n == 0:
        return
    if height == 0 or width == 0:
        for _ in range(n):
            yield 0, 0, torch.zeros(0, 0, dtype=torch.bool, device=mask_probs.device)
        return
    if mask_probs.device.type == "cpu":
        yield from _iter_crops(mask_probs, boxes, height, width, threshold)
    else:
        yield from _iter_canvas_crops(mask_probs, boxes, height, width, threshold)


def _iter_canvas_crops(mask_probs: torch.Tensor, boxes: torch.Tensor, height: int, width: int,
                       threshold: float) -> Iterator[Tuple[int, int, torch.Tensor]]:
    """:func:`iter_pasted_crops` cut from :func:`_paste_batched`'s canvas chunks (GPU path)."""
    windows = _crop_windows(boxes, height, width)
    for s, masks in _iter_batched(mask_probs, boxes, height, width, threshold):
        for k, m in enumerate(masks):
            x0, y0, x1, y1 = windows[s + k]
            if x1 > x0 and y1 > y0:
                yield y0, x0, m[y0:y1, x0:x1]
            else:
                yield 0, 0, m[:0, :0]


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
