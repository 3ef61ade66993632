"""Multi-level RoIAlign at 512 px with RoIs on every level, against torchvision's
``MultiScaleRoIAlign`` (the reference implementation of the FPN level rule), in PyTorch and
through ONNX (onnxruntime), where the per-level results are merged by one ScatterND per level.

torchvision's pooler calls ``roi_align`` with ``aligned=False``; ours uses ``aligned=True`` (the
pixel convention of the mask targets and the paste), so the reference is run with torchvision's own
``roi_align`` switched to ``aligned=True``. Its level rule, ``floor(canonical_level +
log2(sqrt(area) / canonical_scale) + 1e-6)`` clamped to the levels it is given, is the one our
pooler states; canonical size and level are set equal on both sides.
"""

import functools

import onnxruntime as ort
import pytest
import torch
import torchvision.ops.poolers as tv_poolers
from torchvision.ops import MultiScaleRoIAlign, roi_align

from effdetmask.config import get_cfg
from effdetmask.modeling.roi_pool import MultiLevelRoIAlign, assign_fpn_levels

SIZE = 512
CHANNELS = 3
R, SAMPLING = 14, 2
_defaults = get_cfg().MODEL.ROI_MASK_HEAD
# (levels, canonical box size, canonical level): the shipped default, and four levels
SETUPS = {
    "default_p3_p5": (tuple(_defaults.IN_LEVELS), _defaults.CANONICAL_BOX_SIZE,
                      _defaults.CANONICAL_LEVEL),
    "p3_p6_canonical112": ((3, 4, 5, 6), 112.0, 4),
}


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Small tensors: one thread (tests/conftest.py)."""


def _features(levels, batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, CHANNELS, SIZE >> lvl, SIZE >> lvl, generator=g) for lvl in levels]


def _boxes(sides, seed):
    """One box per side length (input pixels), at random positions inside the image, with
    aspect ratios between 1/2 and 2 (the level depends on sqrt(area) only)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for s in sides:
        aspect = 2 ** (torch.rand((), generator=g).item() * 2 - 1)
        w = min(s * aspect ** 0.5, SIZE - 1.0)
        h = min(s / aspect ** 0.5, SIZE - 1.0)
        x0 = torch.rand((), generator=g).item() * (SIZE - w)
        y0 = torch.rand((), generator=g).item() * (SIZE - h)
        out.append([x0, y0, x0 + w, y0 + h])
    return torch.tensor(out)


# sides from 12 px to the whole image: every level of both setups gets several boxes
SIDES = [[12, 40, 90, 150, 230, 300, 420, 480, 505], [20, 64, 110, 180, 260, 380, 460, 510]]


def _rois(box_lists):
    return torch.cat([torch.cat([torch.full((len(b), 1), float(i)), b], dim=1)
                      for i, b in enumerate(box_lists)])


def _reference(features, box_lists, levels, canonical_size, canonical_level, monkeypatch):
    names = [f"p{lvl}" for lvl in levels]
    pooler = MultiScaleRoIAlign(names, R, SAMPLING, canonical_scale=int(canonical_size),
                                canonical_level=canonical_level)
    monkeypatch.setattr(tv_poolers, "roi_align", functools.partial(roi_align, aligned=True))
    out = pooler(dict(zip(names, features)), box_lists, [(SIZE, SIZE)] * len(box_lists))
    monkeypatch.undo()
    return out, pooler


def _ours(levels, canonical_size, canonical_level):
    return MultiLevelRoIAlign(strides=[2 ** lvl for lvl in levels], output_size=R,
                              sampling_ratio=SAMPLING, canonical_box_size=canonical_size,
                              canonical_level=canonical_level)


@pytest.mark.parametrize("setup", sorted(SETUPS))
def test_every_level_matches_torchvision_multiscale_roi_align(setup, monkeypatch):
    levels, canonical_size, canonical_level = SETUPS[setup]
    features = _features(levels)
    box_lists = [_boxes(s, seed=i) for i, s in enumerate(SIDES)]
    rois = _rois(box_lists)
    ref, tv_pooler = _reference(features, box_lists, levels, canonical_size, canonical_level,
                                monkeypatch)
    # both level rules agree box by box, and every level holds boxes of both images
    ours_levels = assign_fpn_levels(rois[:, 1:], min_level=levels[0], max_level=levels[-1],
                                    canonical_box_size=canonical_size,
                                    canonical_level=canonical_level)
    tv_levels = tv_pooler.map_levels(box_lists)
    assert torch.equal(ours_levels, tv_levels.to(torch.int64))
    for lvl in range(len(levels)):
        on_level = rois[ours_levels == lvl, 0]
        assert set(on_level.tolist()) == {0.0, 1.0}, (setup, lvl)
    got = _ours(levels, canonical_size, canonical_level)(features, rois)
    assert got.shape == (len(rois), CHANNELS, R, R)
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-5)
    # a box pooled from a wrong level would not match: the levels really differ
    wrong = roi_align(features[0], rois, R, 1 / 2 ** levels[0], SAMPLING, aligned=True)
    top = ours_levels == len(levels) - 1
    assert (wrong[top] - ref[top]).abs().max() > 0.1


def test_onnx_graph_merges_every_level(tmp_path, monkeypatch):
    """Exported with RoIs that all sit on the lowest level, the graph still pools each RoI from its
    own level for any number of RoIs (the level loop is not unrolled for the export's RoIs), and
    onnxruntime matches torchvision's pooler."""
    levels, canonical_size, canonical_level = SETUPS["p3_p6_canonical112"]
    pooler = _ours(levels, canonical_size, canonical_level)

    class Wrapper(torch.nn.Module):
        def forward(self, p3, p4, p5, p6, rois):
            return pooler([p3, p4, p5, p6], rois)

    features = _features(levels)
    small = _rois([_boxes([10, 20, 30], seed=7)])  # all on P3
    path = str(tmp_path / "pooler.onnx")
    names = [f"p{lvl}" for lvl in levels]
    torch.onnx.export(Wrapper(), (*features, small), path, input_names=[*names, "rois"],
                      output_names=["pooled"], opset_version=17, dynamo=False,
                      dynamic_axes={"rois": {0: "k"}, "pooled": {0: "k"}})
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])

    box_lists = [_boxes(s, seed=i) for i, s in enumerate(SIDES)]
    rois = _rois(box_lists)
    feeds = {n: f.numpy() for n, f in zip(names, features)}
    (got,) = session.run(["pooled"], {**feeds, "rois": rois.numpy()})
    ref, _ = _reference(features, box_lists, levels, canonical_size, canonical_level, monkeypatch)
    torch.testing.assert_close(torch.from_numpy(got), ref, rtol=0, atol=1e-4)
    # the export's own RoIs, and a single RoI on the top level
    (got_small,) = session.run(["pooled"], {**feeds, "rois": small.numpy()})
    torch.testing.assert_close(torch.from_numpy(got_small), pooler(features, small), rtol=0,
                               atol=1e-4)
    one = _rois([torch.tensor([[0.0, 0.0, 500.0, 480.0]])])
    (got_one,) = session.run(["pooled"], {**feeds, "rois": one.numpy()})
    torch.testing.assert_close(torch.from_numpy(got_one), pooler(features, one), rtol=0,
                               atol=1e-4)
