"""Ground truth -> letterbox mapper -> the model's eval post-process -> original image pixels.

Non-square images (wider and taller than square, one shrunk and one enlarged by the letterbox) go
through the real ``DatasetMapper``; a model whose detector returns the mapper's own ground truth
(boxes in input pixels) and whose mask head returns the ground-truth masks cut at each RoI then
reports, through the real selection, paste and un-letterbox code, the annotations in original
pixels: every box within one input pixel of the annotation's and every mask at IoU >= 0.93 with
the polygon rasterised at the original size.
"""

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torchvision.ops import box_iou, roi_align

from effdetmask.config import RANDOM_INIT_OPTS, setup_cfg
from effdetmask.data.mapper import DatasetMapper
from effdetmask.data.taxonomy import attribute_id_to_index
from effdetmask.modeling import build_model
from effdetmask.structures.masks import mask_to_box_xyxy, polygons_to_mask

REPO = Path(__file__).resolve().parents[2]
D0 = str(REPO / "configs" / "effdet_d0.yaml")
SMALL = ("MODEL.BIFPN.REPEATS", "1", "MODEL.ROI_MASK_HEAD.CONV_DIM", "16")
SIZE = 128


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Small model: one thread (tests/conftest.py)."""


def _rect(x0, y0, x1, y1):
    return [[x0, y0, x1, y0, x1, y1, x0, y1]]


# (height, width, polygons with classes): 400x150 is shrunk (scale 0.32), 60x100 enlarged (1.28);
# boxes touch the right and bottom edges, where clipping to the wrong side would show
IMAGES = [
    (150, 400, [(_rect(20, 10, 120, 90), 0), (_rect(250, 40, 400, 150), 45),
                ([[160, 20, 230, 20, 195, 140]], 7)]),
    (330, 120, [(_rect(10, 200, 110, 330), 3), (_rect(30, 15, 120, 120), 31)]),
    (60, 100, [(_rect(5, 8, 40, 50), 12), (_rect(55, 20, 100, 60), 0)]),
]


def _dataset_dicts(tmp_path):
    dicts = []
    rng = np.random.default_rng(0)
    for i, (h, w, instances) in enumerate(IMAGES):
        path = tmp_path / f"img{i}.png"
        cv2.imwrite(str(path), rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        anns = [{"segmentation": poly, "category_id": cls, "iscrowd": 0, "attribute_ids": []}
                for poly, cls in instances]
        dicts.append({"file_name": str(path), "image_id": i, "height": h, "width": w,
                      "annotations": anns})
    return dicts


def _ground_truth_model(inputs):
    """An untrained d0 whose detector returns the inputs' ground truth (padded, by decreasing
    score) and whose mask head returns the ground-truth mask under each RoI it is given."""
    torch.manual_seed(0)
    cfg = setup_cfg(D0, ["INPUT.SIZE", str(SIZE), *SMALL, *RANDOM_INIT_OPTS])
    model = build_model(cfg).eval()
    n = max(len(x["instances"]["boxes"]) for x in inputs)
    boxes = torch.zeros(len(inputs), n, 4)
    scores = torch.full((len(inputs), n), -1.0)
    classes = torch.zeros(len(inputs), n, dtype=torch.long)
    for i, x in enumerate(inputs):
        k = len(x["instances"]["boxes"])
        boxes[i, :k] = x["instances"]["boxes"]
        scores[i, :k] = torch.linspace(0.9, 0.5, k)
        classes[i, :k] = x["instances"]["classes"]

    def detect(cls_outputs, box_outputs):
        return {"boxes": boxes, "scores": scores, "classes": classes, "valid": scores >= 0}

    def forward_rois(features, rois, roi_classes):
        logits = []
        for (image, *box), cls in zip(rois.tolist(), roi_classes.tolist()):
            inst = inputs[int(image)]["instances"]
            k = int((inst["boxes"] - torch.tensor(box)).abs().amax(1).argmin())
            assert int(inst["classes"][k]) == cls
            mask = inst["masks"][k][None, None].float()
            crop = roi_align(mask, torch.tensor([[0.0, *box]]), 28, 1.0, 0, aligned=True)[0, 0]
            logits.append(20.0 * (crop - 0.5))
        return torch.stack(logits)

    model.proposal_generator.detect = detect
    model.mask_head.forward_rois = forward_rois
    return model


def test_ground_truth_comes_back_in_original_pixels(tmp_path):
    mapper = DatasetMapper(image_size=SIZE, is_train=False,
                           attribute_id_to_index=attribute_id_to_index())
    dicts = _dataset_dicts(tmp_path)
    inputs = [mapper(d) for d in dicts]
    model = _ground_truth_model(inputs)
    with torch.no_grad():
        outputs = model(inputs)
    for d, x, out in zip(dicts, inputs, outputs):
        inst = out["instances"]
        h, w, scale = d["height"], d["width"], x["scale"]
        polys = [a["segmentation"] for a in d["annotations"]]
        want_masks = [polygons_to_mask(p, h, w) for p in polys]
        want_boxes = torch.tensor(np.stack([mask_to_box_xyxy(m) for m in want_masks]),
                                  dtype=torch.float32)
        assert inst["masks"].shape == (len(polys), h, w)
        # reported by decreasing score, i.e. in annotation order here
        assert inst["classes"].tolist() == [a["category_id"] for a in d["annotations"]]
        # one input pixel is 1 / scale original pixels; rasterisation at either size adds < 1
        err = (inst["boxes"] - want_boxes).abs().max()
        assert err <= 1.0 / scale + 1.0, (d["file_name"], inst["boxes"], want_boxes)
        assert box_iou(inst["boxes"], want_boxes).diagonal().min() >= 0.95
        for got, want in zip(inst["masks"].numpy(), want_masks):
            iou = (got & (want > 0)).sum() / (got | (want > 0)).sum()
            assert iou >= 0.93, (d["file_name"], iou)
