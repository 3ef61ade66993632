"""The fast paste (separable bilinear; CPU crops / GPU-style canvas) equals the straightforward
per-mask ``grid_sample`` paste, and the batched multi-image paste equals per-image pastes."""

import torch
import torch.nn.functional as F

from effdetmask.modeling.paste import (
    _paste_batched,
    _paste_crops,
    _resample,
    paste_masks_in_image,
    paste_masks_in_images,
)


def reference_paste(probs: torch.Tensor, boxes: torch.Tensor, height: int, width: int,
                    threshold: float = 0.5) -> torch.Tensor:
    """The straightforward implementation: a full-image sampling grid per mask, grid_sample with
    border padding, pixels whose centre is outside the box cut."""
    out = []
    ys = torch.arange(height, dtype=torch.float32) + 0.5
    xs = torch.arange(width, dtype=torch.float32) + 0.5
    for m, (x0, y0, x1, y1) in zip(probs, boxes.tolist()):
        gx = (xs - x0) / max(x1 - x0, 1e-6) * 2 - 1
        gy = (ys - y0) / max(y1 - y0, 1e-6) * 2 - 1
        grid = torch.stack(torch.meshgrid(gx, gy, indexing="xy"), dim=2)[None]
        vals = F.grid_sample(m[None, None], grid, padding_mode="border", align_corners=False)[0, 0]
        inside = (gx.abs() <= 1)[None, :] & (gy.abs() <= 1)[:, None]
        out.append((vals * inside) >= threshold)
    return torch.stack(out) if out else torch.zeros(0, height, width, dtype=torch.bool)


def random_case(n: int = 12, height: int = 90, width: int = 130, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    probs = torch.rand(n, 28, 28, generator=g)
    xy = torch.rand(n, 2, generator=g) * torch.tensor([width, height]) - 10  # some off-image
    wh = torch.rand(n, 2, generator=g) * 80 + 0.5
    return probs, torch.cat([xy, xy + wh], 1)


def test_resample_equals_grid_sample_values():
    probs, boxes = random_case()
    rows, cols = torch.arange(90), torch.arange(130)
    ours = _resample(probs, boxes, rows, cols)
    for k in range(len(probs)):
        x0, y0, x1, y1 = boxes[k].tolist()
        gx = (cols + 0.5 - x0) / (x1 - x0) * 2 - 1
        gy = (rows + 0.5 - y0) / (y1 - y0) * 2 - 1
        grid = torch.stack(torch.meshgrid(gx, gy, indexing="xy"), dim=2)[None]
        ref = F.grid_sample(probs[k][None, None], grid, padding_mode="border",
                            align_corners=False)[0, 0]
        ref = ref * ((gx.abs() <= 1)[None, :] & (gy.abs() <= 1)[:, None])
        assert torch.allclose(ours[k], ref, atol=1e-5)


def test_crop_and_canvas_paths_equal_reference():
    probs, boxes = random_case()
    ref = reference_paste(probs, boxes, 90, 130)
    for fn in (_paste_crops, _paste_batched):
        got = fn(probs, boxes, 90, 130, 0.5)
        # only pixels whose probability sits within float error of the threshold may differ
        assert (got != ref).float().mean() < 1e-4, fn.__name__
    assert paste_masks_in_image(probs[:0], boxes[:0], 5, 7).shape == (0, 5, 7)


def test_multi_image_paste_equals_per_image():
    probs, boxes = random_case(n=10)
    counts, sizes = [3, 0, 7], [(90, 130), (40, 40), (60, 100)]
    batched = paste_masks_in_images(probs, boxes, counts, sizes)
    start = 0
    for got, n, (h, w) in zip(batched, counts, sizes):
        assert got.shape == (n, h, w)
        assert torch.equal(got, paste_masks_in_image(probs[start:start + n],
                                                     boxes[start:start + n], h, w))
        start += n
