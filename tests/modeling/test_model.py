"""The whole models through ``build_model``: losses, gradients, inference contract, configs."""

import math
from pathlib import Path

import pytest
import torch

from effdetmask.modeling import build_model, detector_postprocess, select_detections
from effdetmask.modeling.frozen_bn import identity_batch_norms

from .conftest import tiny_cfg

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"
D0 = str(CONFIG_DIR / "effdet_d0.yaml")
BASELINE = str(CONFIG_DIR / "mask_rcnn_R_50_FPN.yaml")
# a small but complete d0: keeps the suite fast on a shared CPU
SMALL = ("MODEL.BIFPN.REPEATS", "1", "MODEL.ROI_MASK_HEAD.CONV_DIM", "32",
         "MODEL.ROI_MASK_HEAD.TRAIN_SCORE_THRESH", "0.05")


@pytest.fixture(scope="module")
def small_d0():
    torch.manual_seed(0)
    return build_model(tiny_cfg(D0, *SMALL))


def test_training_losses_and_gradients_reach_every_parameter(small_d0, inputs_factory):
    model = small_d0.train()
    losses = model(inputs_factory([3, 1]))
    assert set(losses) == {"loss_cls", "loss_box", "loss_mask"}
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
    """With the class and mask predictors' weights zeroed, every class logit is the focal prior
    bias and every mask logit 0, so both losses follow from their formulas: focal loss at
    p = PRIOR_PROB summed over anchors x classes / (positives + 1) (effdet's normalisation), and
    BCE at logit 0 = log 2. Only the positive-anchor count comes from effdet's labeler."""
    from effdetmask.structures.boxes import classes_to_effdet, xyxy_to_yxyx

    torch.manual_seed(0)
    model = build_model(cfg_factory(D0, *SMALL)).train()
    gen = model.proposal_generator
    with torch.no_grad():
        gen.class_net.predict.conv_pw.weight.zero_()
        model.mask_head.predictor.weight.zero_()
    inputs = inputs_factory([2, 1], seed=5)
    losses = model(inputs)
    _, _, positives = gen._labeler.batch_label_anchors(
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
    assert losses["loss_box"].item() > 0


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
    b = one[0]["instances"]["boxes"]
    assert (b[:, 0::2] <= 300).all() and (b[:, 1::2] <= 200).all() and (b >= 0).all()
    rles = rle[0]["instances"]["masks_rle"]
    assert "masks" not in rle[0]["instances"] and len(rles) == 1 and rles[0]["size"] == [200, 300]


def test_postprocess_maps_to_original_coordinates():
    # a 300x200 (w x h) image letterboxed into 128: scale 128 / 300
    scale = 128 / 300
    boxes_orig = torch.tensor([[30.0, 45.0, 150.0, 195.0], [0.0, 0.0, 300.0, 200.0]])
    boxes_in = boxes_orig * scale
    scores, classes = torch.tensor([0.9, 0.6]), torch.tensor([0, 45])
    probs = torch.ones(2, 28, 28)
    out = detector_postprocess(boxes_in, scores, classes, probs, scale=scale, height=200, width=300)
    torch.testing.assert_close(out["boxes"], boxes_orig)
    assert out["masks"].shape == (2, 200, 300)
    assert out["masks"][0].sum() == 120 * 150 and out["masks"][0, 45:195, 30:150].all()
    assert out["classes"].tolist() == [0, 45]
    # a box on the letterbox padding (below the image) and a low score are not reported
    pad_box = torch.tensor([[10.0, 100.0, 50.0, 120.0]])  # y > 200 * scale = 85.3
    all_boxes = torch.cat([boxes_in, pad_box])
    keep = select_detections(all_boxes, torch.tensor([0.9, 0.01, 0.8]), torch.tensor([0, 1, 2]),
                             scale=scale, height=200, width=300, score_thresh=0.05,
                             max_detections=10)
    assert keep.tolist() == [0]
    one = detector_postprocess(boxes_in[:1], scores[:1], classes[:1], probs[:1], scale=scale,
                               height=200, width=300, return_rle=True)
    assert one["boxes"].shape == (1, 4) and len(one["masks_rle"]) == 1


def test_baseline_train_and_inference(cfg_factory, inputs_factory):
    torch.manual_seed(0)
    model = build_model(cfg_factory(BASELINE, "TEST.DETECTIONS_PER_IMAGE", "5"))
    losses = model.train()(inputs_factory([2, 0]))
    assert {"loss_cls", "loss_box", "loss_mask", "loss_rpn_cls", "loss_rpn_box"} == set(losses)
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
    model = build_model(cfg_factory(str(path))).eval()
    # frozen BatchNorms without loaded statistics would be identities (the shipped full configs
    # once froze every BatchNorm of a randomly initialised model)
    assert identity_batch_norms(model) == []
    with torch.no_grad():
        out = model(inputs_factory([1]))
    assert set(out[0]["instances"]) >= {"boxes", "scores", "classes"}
