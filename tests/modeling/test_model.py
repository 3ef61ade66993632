"""The whole models through ``build_model``: losses, gradients, inference contract, configs."""

import math
from pathlib import Path

import pytest
import torch

from effdetmask.modeling import build_model, instances_from_detections, select_detections
from effdetmask.modeling.frozen_bn import identity_batch_norms
from effdetmask.modeling.meta_arch import normalize_images

from .conftest import tiny_cfg

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"
D0 = str(CONFIG_DIR / "effdet_d0.yaml")
BASELINE = str(CONFIG_DIR / "mask_rcnn_R_50_FPN.yaml")
# a small but complete d0: keeps the suite fast on a shared CPU
SMALL = ("MODEL.BIFPN.REPEATS", "1", "MODEL.ROI_MASK_HEAD.CONV_DIM", "32",
         "MODEL.ROI_HEADS.TRAIN_SCORE_THRESH", "0.05")


@pytest.fixture(scope="module")
def small_d0():
    torch.manual_seed(0)
    return build_model(tiny_cfg(D0, *SMALL))


def _assert_masks_inside_boxes(inst):
    """Each pasted mask lies inside its reported box (one pixel of slack for the rounding)."""
    for mask, (x0, y0, x1, y1) in zip(inst["masks"], inst["boxes"].tolist()):
        ys, xs = torch.nonzero(mask, as_tuple=True)
        if len(ys):
            assert xs.min() >= x0 - 1 and xs.max() + 1 <= x1 + 1, (x0, x1, xs.min(), xs.max())
            assert ys.min() >= y0 - 1 and ys.max() + 1 <= y1 + 1, (y0, y1, ys.min(), ys.max())


def test_training_losses_and_gradients_reach_every_parameter(small_d0, inputs_factory):
    model = small_d0.train()
    losses = model(inputs_factory([3, 1]))
    # the shipped configs carry the attribute head (Base-EffDetMask.yaml)
    assert set(losses) == {"loss_cls", "loss_box", "loss_mask", "loss_attribute"}
    assert all(v.ndim == 0 and torch.isfinite(v) for v in losses.values())
    model.zero_grad()
    sum(losses.values()).backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, missing[:10]
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_empty_targets_give_finite_losses(small_d0, inputs_factory):
    losses = small_d0.train()(inputs_factory([0, 0]))
    assert all(torch.isfinite(v) for v in losses.values())
    assert losses["loss_mask"] == 0 and losses["loss_box"] == 0
    sum(losses.values()).backward()  # no crash without RoIs
    half = small_d0(inputs_factory([2, 0]))
    assert all(torch.isfinite(v) for v in half.values())


def test_losses_at_known_logits_match_the_formulas(cfg_factory, inputs_factory):
    """With the class, box and mask predictors zeroed (the class bias keeps the focal prior),
    every class logit is the prior bias, every box code 0 and every mask logit 0, so all three
    losses follow from their formulas: focal loss at p = PRIOR_PROB summed over anchors x classes
    / (positives + 1) (effdet's normalisation); BOX_LOSS_WEIGHT x Huber (delta HUBER_DELTA) of the
    non-zero box targets of the positive anchors / (4 (positives + 1)); BCE at logit 0 = log 2.
    The positive-anchor count and the box targets come from effdet's labeler."""
    from effdetmask.structures.boxes import classes_to_effdet, xyxy_to_yxyx

    torch.manual_seed(0)
    model = build_model(cfg_factory(D0, *SMALL)).train()
    gen = model.proposal_generator
    with torch.no_grad():
        gen.class_net.predict.conv_pw.weight.zero_()
        gen.box_net.predict.conv_pw.weight.zero_()
        gen.box_net.predict.conv_pw.bias.zero_()
        model.mask_head.predictor.weight.zero_()
    inputs = inputs_factory([2, 1], seed=5)
    losses = model(inputs)
    _, box_targets, positives = gen._labeler.batch_label_anchors(
        [xyxy_to_yxyx(x["instances"]["boxes"]) for x in inputs],
        [classes_to_effdet(x["instances"]["classes"]) for x in inputs])
    n_pos = float(sum(positives))
    total = len(inputs) * gen.anchors_yxyx.shape[0] * 46
    p, alpha, gamma = 0.01, 0.25, 1.5
    pos = alpha * (1 - p) ** gamma * -math.log(p)
    neg = (1 - alpha) * p ** gamma * -math.log(1 - p)
    assert n_pos > 3  # every GT box has anchors
    assert losses["loss_cls"].item() == pytest.approx(
        (n_pos * pos + (total - n_pos) * neg) / (n_pos + 1), rel=1e-5)
    assert losses["loss_mask"].item() == pytest.approx(math.log(2), rel=1e-6)
    codes = torch.cat([t.flatten() for t in box_targets]).abs().double()
    codes = codes[codes != 0]
    delta = 0.1
    huber = torch.where(codes <= delta, 0.5 * codes**2, 0.5 * delta**2 + delta * (codes - delta))
    assert losses["loss_box"].item() == pytest.approx(
        50.0 * float(huber.sum()) / (4 * (n_pos + 1)), rel=1e-5)


def test_inference_zero_and_one_detection(small_d0, inputs_factory):
    model = small_d0.eval()
    inputs = inputs_factory([1, 0])
    with torch.no_grad():
        none = model(inputs)  # untrained scores sit at the 0.01 prior, below TEST.SCORE_THRESH
        model.score_thresh, model.detections_per_image = 0.0, 1
        try:
            one = model(inputs)
            rle = model(inputs, return_rle=True)
        finally:
            model.score_thresh, model.detections_per_image = 0.05, 100
    for out, n in ((none, 0), (one, 1)):
        inst = out[0]["instances"]
        assert inst["boxes"].shape == (n, 4) and inst["boxes"].dtype == torch.float32
        assert inst["scores"].shape == (n,) and inst["classes"].shape == (n,)
        assert inst["classes"].dtype == torch.int64
        assert inst["masks"].shape == (n, 200, 300) and inst["masks"].dtype == torch.bool
    # the one reported detection is the best-scoring raw detection that is not on the letterbox
    # padding, mapped to original pixels (x / scale, clipped to 300 x 200)
    with torch.no_grad():
        images = normalize_images(inputs, model.pixel_mean, model.pixel_std)
        raw = model.proposal_generator.detect(*model.dense_forward(images)[1:])
    boxes = raw["boxes"][0] / inputs[0]["scale"]
    boxes = torch.minimum(boxes.clamp(min=0), torch.tensor([300.0, 200.0, 300.0, 200.0]))
    inside = raw["valid"][0] & (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    best = int(torch.nonzero(inside)[0])
    inst = one[0]["instances"]
    torch.testing.assert_close(inst["boxes"][0], boxes[best])
    assert inst["scores"].tolist() == [raw["scores"][0, best].item()]
    assert inst["classes"].tolist() == [raw["classes"][0, best].item()]
    _assert_masks_inside_boxes(inst)
    rles = rle[0]["instances"]["masks_rle"]
    assert "masks" not in rle[0]["instances"] and len(rles) == 1 and rles[0]["size"] == [200, 300]


def test_postprocess_maps_to_original_coordinates():
    # a 300x200 (w x h) image letterboxed into 128: scale 128 / 300
    scale = 128 / 300
    inputs = [{"scale": scale, "height": 200, "width": 300}] * 2
    boxes_orig = torch.tensor([[30.0, 45.0, 150.0, 195.0], [0.0, 0.0, 300.0, 200.0]])
    boxes_in = boxes_orig * scale
    kept = {"boxes": boxes_in, "scores": torch.tensor([0.9, 0.6]),
            "classes": torch.tensor([0, 45]), "image_index": torch.tensor([0, 0])}
    probs = torch.ones(2, 28, 28)
    out = instances_from_detections(kept, probs, inputs[:1])[0]["instances"]
    torch.testing.assert_close(out["boxes"], boxes_orig)
    assert out["masks"].shape == (2, 200, 300)
    assert out["masks"][0].sum() == 120 * 150 and out["masks"][0, 45:195, 30:150].all()
    assert out["classes"].tolist() == [0, 45]
    # a box on the letterbox padding (below the image), a low score and a padding row are not
    # reported; at most max_detections per image, the best (rows are sorted by score)
    pad_box = torch.tensor([10.0, 100.0, 50.0, 120.0])  # y > 200 * scale = 85.3
    det = {"boxes": torch.stack([boxes_in[0], pad_box, boxes_in[1], boxes_in[1]]).repeat(2, 1, 1),
           "scores": torch.tensor([[0.9, 0.8, 0.01, -1.0], [0.9, 0.8, 0.7, -1.0]]),
           "classes": torch.tensor([[0, 1, 2, 3]]).repeat(2, 1),
           "valid": torch.tensor([[True, True, True, False]]).repeat(2, 1)}
    kept = select_detections(det, inputs, score_thresh=0.05, max_detections=10)
    assert kept["image_index"].tolist() == [0, 1, 1] and kept["classes"].tolist() == [0, 0, 2]
    capped = select_detections(det, inputs, score_thresh=0.05, max_detections=1)
    assert capped["image_index"].tolist() == [0, 1] and capped["classes"].tolist() == [0, 0]
    both = instances_from_detections(kept, probs[[0, 0, 1]], inputs, return_rle=True)
    assert [len(o["instances"]["masks_rle"]) for o in both] == [1, 2]
    assert both[0]["instances"]["boxes"].shape == (1, 4)


def test_baseline_train_and_inference(cfg_factory, inputs_factory):
    torch.manual_seed(0)
    model = build_model(cfg_factory(BASELINE, "TEST.DETECTIONS_PER_IMAGE", "5"))
    losses = model.train()(inputs_factory([2, 0]))
    assert {"loss_cls", "loss_box", "loss_mask", "loss_rpn_cls", "loss_rpn_box",
            "loss_attribute"} == set(losses)
    assert all(torch.isfinite(v) for v in losses.values())
    model.eval()
    model.net.roi_heads.score_thresh = model.score_thresh = 0.0
    with torch.no_grad():
        out = model(inputs_factory([1]))
    inst = out[0]["instances"]
    n = inst["boxes"].shape[0]
    assert 0 < n <= 5 and inst["masks"].shape == (n, 200, 300)
    assert inst["classes"].min() >= 0 and inst["classes"].max() <= 45


@pytest.mark.parametrize(
    "path", sorted(CONFIG_DIR.rglob("*.yaml")), ids=lambda p: str(p.relative_to(CONFIG_DIR))
)
def test_every_config_builds_and_runs(path, cfg_factory, inputs_factory):
    if path.name.startswith("Base-"):
        pytest.skip("base config: covered by its leaves")
    torch.manual_seed(0)
    model = build_model(cfg_factory(str(path), "TEST.SCORE_THRESH", "0.0",
                                    "TEST.DETECTIONS_PER_IMAGE", "2")).eval()
    # frozen BatchNorms without loaded statistics would be identities (the shipped full configs
    # once froze every BatchNorm of a randomly initialised model)
    assert identity_batch_norms(model) == []
    with torch.no_grad():  # square (no letterbox padding a detection could land on), scale 0.8
        out = model(inputs_factory([1], height=160, width=160))
    inst = out[0]["instances"]
    # TEST.SCORE_THRESH 0: untrained scores pass, so the mask head and the paste run too
    n = len(inst["scores"])
    assert n == 2 and inst["boxes"].shape == (n, 4)
    assert inst["masks"].shape == (n, 160, 160) and inst["masks"].dtype == torch.bool
    _assert_masks_inside_boxes(inst)
