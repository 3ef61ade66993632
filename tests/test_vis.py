"""Visualizer: masks change pixels inside and not outside; panel grid shape; zero instances."""

import cv2
import numpy as np
import pytest
import torch

from effdetmask.structures.masks import coco_rle_encode
from effdetmask.vis import Visualizer, save_png

NAMES = ["shirt, blouse", "sleeve", "shoe"]
COLORS = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]


def _image(h=90, w=120):
    rng = np.random.default_rng(0)
    return rng.integers(0, 200, size=(h, w, 3), dtype=np.uint8)


def _instances(h=90, w=120):
    masks = np.zeros((2, h, w), dtype=bool)
    masks[0, 40:80, 10:50] = True
    masks[1, 45:60, 70:110] = True
    return {
        "boxes": torch.tensor([[10.0, 40.0, 50.0, 80.0], [70.0, 45.0, 110.0, 60.0]]),
        "scores": torch.tensor([0.9, 0.6]),
        "classes": torch.tensor([0, 1]),
        "masks": torch.from_numpy(masks),
    }


def _allowed_region(instances, h, w, label_height=20, line=3):
    """Pixels a drawing may change: masks, box outlines, and a label strip above each box.

    The strip spans the full width: a label wider than the room right of its box is shifted left.
    """
    allowed = instances["masks"].numpy().any(0)
    for x0, y0, x1, y1 in instances["boxes"].round().int().tolist():
        allowed[max(0, y0 - label_height):y0 + line, :] = True
        allowed[max(0, y0 - line):y1 + line, max(0, x0 - line):min(w, x1 + line)] = True
    return allowed


@pytest.mark.parametrize("as_rle", [False, True])
def test_overlay_changes_masks_not_background(as_rle):
    image, inst = _image(), _instances()
    if as_rle:
        inst = {**inst, "masks_rle": [coco_rle_encode(m) for m in inst["masks"].numpy()]}
        del inst["masks"]
    vis = Visualizer(NAMES, COLORS, alpha=0.5)
    out = vis.draw_instances(image, inst)
    assert out.dtype == np.uint8 and out.shape == image.shape
    changed = (out != image).any(-1)
    # well inside each mask (away from box lines and labels) every pixel is tinted
    assert changed[55:75, 15:45].all() and changed[52:58, 75:105].all()
    assert not changed[~_allowed_region(_instances(), *image.shape[:2])].any()
    # the tint moves pixels towards the class colour (red for class 0)
    inner = (slice(55, 75), slice(15, 45))
    assert (out[inner][..., 0].astype(int) >= image[inner][..., 0]).all()
    assert not np.shares_memory(out, image)


def test_labels_are_drawn_outside_masks():
    image, inst = _image(), _instances()
    out = Visualizer(NAMES, COLORS).draw_instances(image, inst)
    # the label strip above the first box (outside its mask) is drawn on
    assert (out[25:39, 10:60] != image[25:39, 10:60]).any()


def test_zero_instances():
    image = _image()
    empty = {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0),
             "classes": torch.zeros(0, dtype=torch.int64), "masks": torch.zeros(0, 90, 120).bool()}
    vis = Visualizer(NAMES)
    assert np.array_equal(vis.draw_instances(image, empty), image)
    panel = vis.draw_panel(image, empty, cell_size=64)
    assert panel.shape == (64, 64, 3) and panel.dtype == np.uint8


@pytest.mark.parametrize("n, columns, grid", [(1, 4, (1, 1)), (2, 4, (1, 2)), (5, 2, (3, 2))])
def test_panel_shape(n, columns, grid):
    base = _instances()
    idx = torch.arange(n) % 2
    inst = {k: v[idx] for k, v in base.items()}
    panel = Visualizer(NAMES, COLORS).draw_panel(_image(), inst, cell_size=80, columns=columns)
    assert panel.shape == (grid[0] * 80, grid[1] * 80, 3) and panel.dtype == np.uint8


def test_one_instance_without_scores_and_box_on_border(tmp_path):
    image = _image()
    inst = {"boxes": np.array([[0.0, 0.0, 120.0, 90.0]]), "classes": np.array([2]),
            "masks": np.ones((1, 90, 120), dtype=bool)}
    vis = Visualizer(NAMES, COLORS)
    out = vis.draw_instances(image, inst)
    assert (out != image).any(-1).all()
    path = tmp_path / "sub" / "vis.png"
    save_png(str(path), out)
    assert np.array_equal(cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB), out)
    assert vis.draw_panel(image, inst).shape == (160, 160, 3)


def test_default_colours_and_colour_count_check():
    assert len(Visualizer(NAMES).colors) == 3
    with pytest.raises(ValueError):
        Visualizer(NAMES, COLORS[:2])


def test_pages_draw_only_predictions_above_min_score(tmp_path):
    from effdetmask.vis_pages import write_instance_pngs

    image = _image()
    inst = _instances()
    inst["masks_rle"] = [coco_rle_encode(m) for m in inst.pop("masks").numpy()]
    vis = Visualizer(NAMES, COLORS)
    for name, min_score in [("all", 0.0), ("high", 0.7)]:
        write_instance_pngs(vis, str(tmp_path / name), image, inst, None, max_size=0,
                            panel=False, noise=False, min_score=min_score)
    everything = cv2.imread(str(tmp_path / "all_overlay.png"))
    high_only = cv2.imread(str(tmp_path / "high_overlay.png"))
    # only the 0.6 instance's drawing differs: its mask is not painted, everything else is equal
    low = {"boxes": inst["boxes"][1:], "masks": _instances()["masks"][1:]}
    differs = (everything != high_only).any(-1)
    assert differs[low["masks"][0].numpy()].mean() > 0.9
    assert not differs[~_allowed_region(low, *image.shape[:2])].any()
