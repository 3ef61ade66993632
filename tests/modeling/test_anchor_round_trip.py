"""Ground truth -> effdet anchor targets (the training side) -> perfect head outputs -> the
detection post-process (the inference side) gives the ground truth back, classes included.

No training: the class and box targets that ``EfficientDetProposalGenerator.losses`` builds from
the project's targets (xyxy, classes 0..45) are captured on their way into effdet's loss and
written back as the head outputs a perfect detector would produce (logit +12 on the target class
of every positive anchor, -12 elsewhere; box codes = box targets). Decoding them must return every
ground-truth box with its class: a wrong box-format conversion, class offset (effdet counts
classes from 1) or anchor/level layout between the two sides breaks the round trip.
"""

import pytest
import torch

import effdetmask.modeling.proposal_generator as pg
from effdetmask.modeling.effdet_utils import ShapeSpec

SIZE = 256
LEVELS = range(3, 8)  # P3..P7, effdet's levels


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Small tensors: one thread (tests/conftest.py)."""


@pytest.fixture(scope="module")
def generator():
    torch.manual_seed(0)
    shapes = {f"p{lvl}": ShapeSpec(channels=8, stride=2 ** lvl) for lvl in LEVELS}
    return pg.EfficientDetProposalGenerator(input_shape=shapes, image_size=SIZE, repeats=1,
                                            nms_thresh=0.5, max_detections=100).eval()


# per image: xyxy input pixels and classes 0..45; sizes from 12 px (P3) to the whole image (P7),
# both ends of the class range, two instances of one class, boxes on the image border
TARGETS = [
    {"boxes": torch.tensor([[10.0, 20.0, 22.0, 44.0], [40.0, 30.0, 140.0, 90.0],
                            [0.0, 0.0, 256.0, 256.0], [150.0, 160.0, 250.0, 256.0],
                            [100.0, 180.0, 130.0, 200.0]]),
     "classes": torch.tensor([0, 45, 7, 23, 0])},
    {"boxes": torch.tensor([[60.0, 5.0, 200.0, 245.0], [3.0, 100.0, 50.0, 150.0]]),
     "classes": torch.tensor([31, 1])},
    {"boxes": torch.zeros(0, 4), "classes": torch.zeros(0, dtype=torch.long)},  # no instance
]


def _captured_targets(gen, targets, monkeypatch):
    """The anchor targets ``gen.losses`` hands to effdet's loss for ``targets``."""
    seen = {}

    def spy(cls_outputs, box_outputs, cls_targets, box_targets, num_positives, **kwargs):
        seen.update(cls=cls_targets, box=box_targets, positives=num_positives)
        return real(cls_outputs, box_outputs, cls_targets, box_targets, num_positives, **kwargs)

    real = pg.loss_fn
    monkeypatch.setattr(pg, "loss_fn", spy)
    feats = {f"p{lvl}": torch.zeros(len(targets), 8, SIZE >> lvl, SIZE >> lvl) for lvl in LEVELS}
    with torch.no_grad():
        cls_out, box_out = gen.head_outputs(feats)
        gen.losses(cls_out, box_out, targets)
    return seen


def _perfect_outputs(cls_targets, box_targets, num_classes):
    """Per level ``[B, A*C, H, W]`` logits and ``[B, A*4, H, W]`` codes from effdet's targets
    (``cls`` ``[B, H, W, A]`` 0-based, -1 background; ``box`` ``[B, H, W, A*4]``)."""
    cls_out, box_out = [], []
    for cls_t, box_t in zip(cls_targets, box_targets):
        b, h, w, a = cls_t.shape
        logits = torch.full((b, h, w, a, num_classes), -12.0)
        pos = cls_t >= 0
        logits[pos, cls_t[pos]] = 12.0
        cls_out.append(logits.reshape(b, h, w, a * num_classes).permute(0, 3, 1, 2))
        box_out.append(box_t.float().permute(0, 3, 1, 2))
    return cls_out, box_out


def test_ground_truth_survives_anchor_targets_and_decoding(generator, monkeypatch):
    seen = _captured_targets(generator, TARGETS, monkeypatch)
    # every box has at least one positive anchor (effdet force-matches each ground-truth box)
    assert seen["positives"].tolist()[2] == 0
    assert all(n >= len(t["classes"]) for n, t in zip(seen["positives"].tolist(), TARGETS))
    cls_out, box_out = _perfect_outputs(seen["cls"], seen["box"], generator.num_classes)
    det = generator.detect(cls_out, box_out)
    for i, target in enumerate(TARGETS):
        # every other (anchor, class) pair scores sigmoid(-12): a confident detection is one of
        # the ground-truth boxes
        valid = det["valid"][i] & (det["scores"][i] > 0.5)
        boxes, classes = det["boxes"][i][valid], det["classes"][i][valid]
        # the anchors of one box decode to the same box and class: NMS leaves one of them
        assert len(boxes) == len(target["boxes"]), (i, boxes, classes)
        for box, cls in zip(target["boxes"], target["classes"]):
            dist = (boxes - box).abs().amax(dim=1)
            k = int(dist.argmin())
            assert float(dist[k]) < 1e-3, (i, box, boxes)
            assert int(classes[k]) == int(cls), (i, box, int(classes[k]), int(cls))
        assert torch.equal(det["scores"][i][valid], torch.sigmoid(torch.tensor(12.0)).expand(
            len(boxes)))
