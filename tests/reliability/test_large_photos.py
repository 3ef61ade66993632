"""Large photos: the RLE output path pastes and encodes mask by mask inside each box, so its peak
memory grows with the box areas, not ``N x H x W``, and its masks equal the dense path's."""

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from effdetmask.modeling.paste import (
    _iter_canvas_crops,
    _paste_batched,
    iter_pasted_crops,
    paste_masks_in_image,
)
from effdetmask.modeling.postprocess import finalize_instances
from effdetmask.structures.masks import (
    coco_rle_decode,
    coco_rle_encode,
    coco_rle_encode_batch,
    coco_rle_encode_crop,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def _full(crop: np.ndarray, top: int, left: int, height: int, width: int) -> np.ndarray:
    full = np.zeros((height, width), dtype=np.uint8)
    full[top:top + crop.shape[0], left:left + crop.shape[1]] = crop
    return full


def test_crop_rle_equals_full_image_rle():
    rng = np.random.default_rng(0)
    cases = []
    for height, width in [(1, 1), (1, 7), (7, 1), (13, 9), (40, 60)]:
        for _ in range(40):
            top, left = rng.integers(0, height), rng.integers(0, width)
            h, w = rng.integers(0, height - top + 1), rng.integers(0, width - left + 1)
            cases.append((height, width, top, left, h, w))
        cases += [(height, width, 0, 0, height, width), (height, width, 0, 0, 0, 0),
                  (height, width, height - 1, width - 1, 1, 1)]
    for height, width, top, left, h, w in cases:
        for fill in ("random", "ones", "zeros", "blob"):
            if fill == "random":
                crop = rng.random((h, w)) < 0.5
            elif fill == "blob":
                yy, xx = np.mgrid[:h, :w]
                crop = (yy - h / 2) ** 2 + (xx - w / 2) ** 2 < (min(h, w) / 2) ** 2
            else:
                crop = np.full((h, w), fill == "ones")
            want = coco_rle_encode(_full(crop, top, left, height, width))
            got = coco_rle_encode_crop(crop, top, left, height, width)
            assert got == want, (height, width, top, left, h, w, fill)


def _case(height: int = 150, width: int = 210, scale: float = 0.8, seed: int = 0):
    """Boxes in model-input pixels: random, overlapping, touching / crossing every border, one
    covering the whole image, one tiny, one entirely outside."""
    g = torch.Generator().manual_seed(seed)
    w, h = float(width), float(height)
    boxes = [
        [0, 0, 50, 40], [w - 60, h - 30, w, h], [-20, 30, 70, 90], [w - 40, -15, w + 25, 60],
        [0, 0, w, h], [-5, -5, w + 5, h + 5], [60, 40, 140, 120], [80, 50, 160, 130],
        [100.3, 70.6, 101.1, 71.4], [w + 10, 10, w + 50, 40], [0.5, h - 0.7, 30, h + 20],
    ]
    xy = torch.rand(12, 2, generator=g) * torch.tensor([w, h])
    wh = torch.rand(12, 2, generator=g) * 120 + 1
    boxes = torch.cat([torch.tensor(boxes), torch.cat([xy, xy + wh], 1)]) * scale
    n = len(boxes)
    probs = torch.rand(n, 28, 28, generator=g)
    probs[4] = 1.0  # a mask that fills its (whole-image) box
    return boxes, torch.rand(n, generator=g), torch.randint(0, 46, (n,), generator=g), probs


def test_rle_path_equals_dense_path():
    boxes, scores, classes, probs = _case()
    counts, heights, widths, scales = [9, 0, 14], [150, 80, 150], [210, 50, 210], [0.8] * 3
    kwargs = dict(counts=counts, scales=scales, heights=heights, widths=widths)
    dense = finalize_instances(boxes, scores, classes, probs, **kwargs)
    rle = finalize_instances(boxes, scores, classes, probs, return_rle=True, **kwargs)
    for d, r, n, h, w in zip(dense, rle, counts, heights, widths):
        assert set(r) == {"boxes", "scores", "classes", "masks_rle"}
        for key in ("boxes", "scores", "classes"):
            assert torch.equal(d[key], r[key])
        assert d["masks"].dtype == torch.bool and d["masks"].shape == (n, h, w)
        assert len(r["masks_rle"]) == n
        # exactly what encoding the dense masks gives, and it decodes back to them
        assert r["masks_rle"] == coco_rle_encode_batch(d["masks"].numpy())
        for m, enc in zip(d["masks"], r["masks_rle"]):
            assert isinstance(enc["counts"], str) and enc["size"] == [h, w]
            assert np.array_equal(coco_rle_decode(enc, h, w), m.numpy())
    assert dense[0]["masks"].any() and dense[2]["masks"].any()


def test_pasted_crops_equal_dense_paste():
    boxes, _, _, probs = _case()
    boxes = boxes / 0.8
    dense = paste_masks_in_image(probs, boxes, 150, 210)
    crops = list(iter_pasted_crops(probs, boxes, 150, 210))
    assert len(crops) == len(probs)
    for m, (top, left, crop) in zip(dense, crops):
        assert crop.dtype == torch.bool
        assert torch.equal(m, torch.from_numpy(_full(crop.numpy(), top, left, 150, 210)).bool())
    assert list(iter_pasted_crops(probs[:0], boxes[:0], 150, 210)) == []
    # the GPU path's crops (cut from the dense canvas chunks), run on CPU
    canvas = _paste_batched(probs, boxes, 150, 210, 0.5)
    cut = list(_iter_canvas_crops(probs, boxes, 150, 210, 0.5))
    assert len(cut) == len(probs)
    for m, (top, left, crop) in zip(canvas, cut):
        assert torch.equal(m, torch.from_numpy(_full(crop.numpy(), top, left, 150, 210)).bool())


# Runs in a fresh interpreter: ru_maxrss is the process's peak, so the RLE path is measured first
# (its peak added), then the dense path on top.
_MEASURE = textwrap.dedent("""
    import json, resource, sys
    import torch
    from effdetmask.modeling.postprocess import finalize_instances
    torch.set_num_threads(1)
    n, height, width = (int(a) for a in sys.argv[1:4])
    g = torch.Generator().manual_seed(0)
    scale = 1024 / max(height, width)
    size = torch.tensor([width, height], dtype=torch.float32)
    wh = (0.03 + 0.67 * torch.rand(n, 2, generator=g) ** 2) * size
    xy = torch.rand(n, 2, generator=g) * (size - wh)
    xy[0::4] = 0
    xy[1::4] = size - wh[1::4]
    boxes = torch.cat([xy, xy + wh], 1) * scale
    boxes[2] = torch.tensor([0.0, 0.0, width, height]) * scale  # one box covers the photo
    args = (boxes, torch.rand(n), torch.randint(0, 46, (n,)), torch.rand(n, 28, 28))
    kw = dict(counts=[n], scales=[scale], heights=[height], widths=[width])
    peak = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    out = {"start": peak()}
    rle = finalize_instances(*args, return_rle=True, **kw)[0]["masks_rle"]
    out["rle"] = peak()
    out["rle_count"] = len(rle)
    del rle
    if sys.argv[4] == "1":
        dense = finalize_instances(*args, **kw)[0]["masks"]
        out["dense"] = peak()
        out["dense_shape"] = list(dense.shape)
    print(json.dumps(out))
""")


def _measure(n: int, height: int, width: int, dense: bool) -> dict:
    res = subprocess.run([sys.executable, "-c", _MEASURE, str(n), str(height), str(width),
                          str(int(dense))], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


def test_rle_path_peak_memory_is_far_below_dense_masks():
    n, height, width = 50, 1600, 2400
    dense_bytes = n * height * width  # 192 MB of bool masks
    got = _measure(n, height, width, dense=True)
    assert got["rle_count"] == n and got["dense_shape"] == [n, height, width]
    rle_added = got["rle"] - got["start"]
    # the whole-photo box alone needs a float crop of H*W*4 = 15 MB; before: ~3 x 192 MB
    assert rle_added < dense_bytes / 4, f"RLE path added {rle_added / 2**20:.0f} MiB"
    # the dense path holds the masks once, as bool, with no full-size copy
    dense_added = got["dense"] - got["start"]
    assert dense_added < 1.25 * dense_bytes, f"dense path added {dense_added / 2**20:.0f} MiB"


@pytest.mark.slow
def test_rle_path_peak_memory_6000x4000_100_detections():
    n, height, width = 100, 4000, 6000
    got = _measure(n, height, width, dense=False)
    assert got["rle_count"] == n
    # the goal: under 1.5 GB for the whole process (torch included); before: 6.9 GB
    assert got["rle"] < 1.5e9, f"process peak {got['rle'] / 2**20:.0f} MiB"
    assert got["rle"] - got["start"] < 0.3e9, f"added {(got['rle'] - got['start']) / 2**20:.0f}"
