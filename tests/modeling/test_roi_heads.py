"""RoI heads and the attribute head: the registry contract, which RoIs the attribute loss counts,
head on/off equality of the rest of the model, every config built with the head, gradients,
outputs through the post-process path, old config keys and old checkpoints."""

from pathlib import Path

import pytest
import torch

from effdetmask.config import setup_cfg
from effdetmask.data.taxonomy import (
    CATEGORIES_WITH_ATTRIBUTES,
    NUM_ATTRIBUTES,
    attribute_index_to_id,
)
from effdetmask.modeling import ROI_HEADS_REGISTRY, build_model, finalize_instances
from effdetmask.modeling.attribute_head import (
    attribute_ids_from_scores,
    attribute_loss,
    attribute_targets,
)
from effdetmask.modeling.weights import load_checkpoint

from .conftest import make_inputs, tiny_cfg

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"
D0 = str(CONFIG_DIR / "effdet_d0.yaml")
BASELINE = str(CONFIG_DIR / "mask_rcnn_R_50_FPN.yaml")
SMALL = ("MODEL.BIFPN.REPEATS", "1", "MODEL.ROI_MASK_HEAD.CONV_DIM", "16",
         "MODEL.ROI_HEADS.TRAIN_SCORE_THRESH", "0.05")
ATTR = ("MODEL.ROI_ATTRIBUTE_HEAD.ENABLED", "True", "MODEL.ROI_ATTRIBUTE_HEAD.CONV_DIM", "16",
        "MODEL.ROI_ATTRIBUTE_HEAD.FC_DIM", "32")
WITH = sorted(CATEGORIES_WITH_ATTRIBUTES)
WITHOUT = sorted(set(range(46)) - CATEGORIES_WITH_ATTRIBUTES)


def attribute_inputs(classes, known=None, seed=0):
    """``make_inputs`` with the given classes per image and random multi-hot attributes."""
    inputs = make_inputs([len(c) for c in classes], seed=seed)
    g = torch.Generator().manual_seed(seed)
    for k, (x, c) in enumerate(zip(inputs, classes)):
        inst = x["instances"]
        inst["classes"] = torch.tensor(c, dtype=torch.long)
        inst["attributes"] = (torch.rand(len(c), NUM_ATTRIBUTES, generator=g) < 0.05).float()
        if known is not None:
            inst["attributes_known"] = torch.tensor(known[k], dtype=torch.bool)
    return inputs


def build(config, *opts, seed=0):
    torch.manual_seed(seed)
    return build_model(tiny_cfg(config, *SMALL, *opts) if config == D0
                       else tiny_cfg(config, *opts))


def test_registry_contract_losses_and_inference():
    assert ROI_HEADS_REGISTRY.get("EffDetROIHeads").__doc__
    model = build(D0, *ATTR)
    assert type(model.roi_heads).__name__ == "EffDetROIHeads"
    assert model.mask_head is model.roi_heads.mask_head
    losses = model.train()(attribute_inputs([[0, 7, 30], [28]]))
    assert set(losses) == {"loss_cls", "loss_box", "loss_mask", "loss_attribute"}
    assert all(v.ndim == 0 and torch.isfinite(v) for v in losses.values())
    model.eval()
    feats = model.backbone(torch.zeros(2, 3, 128, 128))
    rois = torch.tensor([[0, 4.0, 4, 60, 70], [1, 10, 20, 100, 90], [1, 0, 0, 128, 128]])
    out = model.roi_heads.inference(feats, rois, torch.tensor([0, 7, 45]))
    assert set(out) == {"mask_probs", "attribute_scores"}
    assert out["mask_probs"].shape == (3, 28, 28)
    assert out["attribute_scores"].shape == (3, NUM_ATTRIBUTES)
    assert out["attribute_scores"].dtype == torch.float32
    assert ((out["attribute_scores"] > 0) & (out["attribute_scores"] < 1)).all()


def test_attribute_loss_counts_only_known_attributes_of_categories_that_have_them():
    # image 0: a known shirt (counts), an unknown-attribute dress (ignored), a bag (no attributes)
    targets = [
        {"classes": torch.tensor([0, 10, 24]), "attributes": torch.zeros(3, NUM_ATTRIBUTES),
         "attributes_known": torch.tensor([True, False, True])},
        {"classes": torch.tensor([31]), "attributes": torch.ones(1, NUM_ATTRIBUTES)},  # all known
    ]
    assert 24 in WITHOUT and 10 in WITH and 31 in WITH
    matched = [torch.tensor([0, 1, 2, 2, 0]), torch.tensor([0, 0])]
    tgt = attribute_targets(targets, matched, num_classes=46)
    assert tgt["valid"].tolist() == [True, False, False, False, True, True, True]
    assert tgt["attributes"].shape == (7, NUM_ATTRIBUTES)
    # ignored rows get a huge error: the loss equals the loss of the counted rows alone, so it
    # changes if the mask is dropped
    logits = torch.full((7, NUM_ATTRIBUTES), -3.0)
    logits[~tgt["valid"]] = 50.0
    for kind in ("bce", "focal"):
        full = attribute_loss(logits, tgt["attributes"], tgt["valid"], loss=kind)
        alone = attribute_loss(logits[tgt["valid"]], tgt["attributes"][tgt["valid"]],
                               torch.ones(4, dtype=torch.bool), loss=kind)
        unmasked = attribute_loss(logits, tgt["attributes"], torch.ones(7, dtype=torch.bool),
                                  loss=kind)
        assert torch.allclose(full, alone) and unmasked > 2 * full
    # nothing counted: exactly zero, still in the graph
    logits.requires_grad_(True)
    none = attribute_loss(logits, tgt["attributes"], torch.zeros(7, dtype=torch.bool))
    assert none.item() == 0.0 and none.requires_grad
    none.backward()
    assert (logits.grad == 0).all()
    # an image without attributes at all: its RoIs do not count
    no_attrs = attribute_targets([{"classes": torch.tensor([0])}], [torch.tensor([0, 0])], 46)
    assert not no_attrs["valid"].any()
    with pytest.raises(ValueError, match="attribute loss"):
        attribute_loss(logits, tgt["attributes"], tgt["valid"], loss="l2")


def test_model_attribute_loss_is_zero_without_countable_instances():
    model = build(D0, *ATTR).train()
    unknown = model(attribute_inputs([[0, 7], [12]], known=[[False, False], [False]]))
    accessories = model(attribute_inputs([[WITHOUT[0], WITHOUT[5]], [45]]))
    for losses in (unknown, accessories):
        assert losses["loss_attribute"] == 0
    counted = model(attribute_inputs([[0, 7], [12]], known=[[True, False], [False]]))
    assert counted["loss_attribute"] > 0


@pytest.mark.parametrize("config", [D0, BASELINE], ids=["d0", "baseline"])
def test_head_off_is_todays_model_and_on_adds_only_the_head(config):
    off, on = build(config, "MODEL.ROI_ATTRIBUTE_HEAD.ENABLED", "False"), build(config, *ATTR)
    assert not [k for k in off.state_dict() if "attribute" in k]
    assert getattr(off, "attribute_head", None) is None
    on_state = on.state_dict()
    extra = [k for k in on_state if "attribute_head" in k]
    assert extra and set(on_state) - set(extra) == set(off.state_dict())
    assert all(torch.equal(v, on_state[k]) for k, v in off.state_dict().items())
    inputs = attribute_inputs([[0, 7, 30], [28]])
    torch.manual_seed(1)
    loss_off = off.train()(inputs)
    torch.manual_seed(1)
    loss_on = on.train()(inputs)
    assert set(loss_on) == set(loss_off) | {"loss_attribute"}
    for k, v in loss_off.items():
        assert torch.equal(v, loss_on[k]), k
    off.eval(), on.eval()
    with torch.no_grad():
        out_off, out_on = off(make_inputs([2])), on(make_inputs([2]))
    a, b = out_off[0]["instances"], out_on[0]["instances"]
    assert "attribute_scores" not in a and "attribute_ids" not in a
    assert torch.equal(a["boxes"], b["boxes"]) and torch.equal(a["masks"], b["masks"])


@pytest.mark.parametrize("name", ["effdet_d1.yaml", "effdet_d2.yaml", "effdet_lite0.yaml",
                                  "quick_schedules/mask_rcnn_tiny_test.yaml"])
def test_every_model_trains_the_head_and_gradient_reaches_it(name):
    opts = ("MODEL.BIFPN.REPEATS", "1") if "effdet" in name else ()
    torch.manual_seed(0)
    cfg = tiny_cfg(str(CONFIG_DIR / name), *opts, *ATTR, "MODEL.ROI_HEADS.TRAIN_SCORE_THRESH",
                   "0.05") if "effdet" in name else tiny_cfg(str(CONFIG_DIR / name), *ATTR)
    model = build_model(cfg).train()
    losses = model(attribute_inputs([[0, 7, 33], [29]]))
    assert torch.isfinite(losses["loss_attribute"]) and losses["loss_attribute"] > 0
    model.zero_grad()
    losses["loss_attribute"].backward()
    head = model.roi_heads.attribute_head if hasattr(model, "roi_heads") else model.attribute_head
    for n, p in head.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, n


def test_d0_gradient_reaches_the_head_and_outputs_carry_attributes():
    model = build(D0, *ATTR, "TEST.SCORE_THRESH", "0.0",
                  "MODEL.ROI_ATTRIBUTE_HEAD.SCORE_THRESH", "0.0").train()
    losses = model(attribute_inputs([[0, 7, 33], [29]]))
    sum(losses.values()).backward()
    for n, p in model.roi_heads.attribute_head.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, n
    with torch.no_grad():
        out = model.eval()(make_inputs([2, 0]))
    inst = out[0]["instances"]
    n = len(inst["scores"])
    assert n > 0 and inst["attribute_scores"].shape == (n, NUM_ATTRIBUTES)
    assert len(inst["attribute_ids"]) == n
    # threshold 0: every attribute id, sorted (the thresholding itself: the test below)
    all_ids = sorted(attribute_index_to_id().values())
    assert inst["attribute_ids"] == [all_ids] * n
    empty = finalize_instances(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0), torch.zeros(
        0, 28, 28), counts=[0], scales=[1.0], heights=[10], widths=[10],
        attribute_scores=torch.zeros(0, NUM_ATTRIBUTES))[0]
    assert empty["attribute_scores"].shape == (0, NUM_ATTRIBUTES) and empty["attribute_ids"] == []


def test_attribute_ids_are_sparse_sorted_ids():
    index_to_id = attribute_index_to_id()
    scores = torch.zeros(3, NUM_ATTRIBUTES)
    scores[0, [293, 0, 200]] = torch.tensor([0.9, 0.5, 0.49])
    scores[2, 150] = 1.0
    ids = attribute_ids_from_scores(scores, 0.5)
    assert ids == [sorted([index_to_id[0], index_to_id[293]]), [], [index_to_id[150]]]
    assert index_to_id[293] == 340  # ids are sparse: index != id


def test_old_training_roi_keys_still_work_with_a_warning(tmp_path):
    old = tmp_path / "old.yaml"
    old.write_text('_BASE_: "{}"\nMODEL:\n  ROI_MASK_HEAD:\n    BATCH_SIZE_PER_IMAGE: 7\n'
                   '    CONV_DIM: 8\n'.format(D0))
    with pytest.warns(FutureWarning, match="ROI_MASK_HEAD.BATCH_SIZE_PER_IMAGE is deprecated"):
        cfg = setup_cfg(str(old))
    assert cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE == 7 and cfg.MODEL.ROI_MASK_HEAD.CONV_DIM == 8
    with pytest.warns(FutureWarning, match="ROI_MASK_HEAD.GT_JITTER_STD is deprecated"):
        cfg = setup_cfg("", ["MODEL.ROI_MASK_HEAD.GT_JITTER_STD", "0.3"])
    assert cfg.MODEL.ROI_HEADS.GT_JITTER_STD == 0.3
    assert "TRAIN_SCORE_THRESH" not in cfg.MODEL.ROI_MASK_HEAD


def test_checkpoint_from_before_the_roi_heads_loads(tmp_path):
    model = build(D0)
    old = {k.replace("roi_heads.mask_head.", "mask_head."): v.clone() for k, v in
           model.state_dict().items()}
    assert any(k.startswith("mask_head.") for k in old)
    path = tmp_path / "old.pth"
    torch.save({k: v + 1 if k.startswith("mask_head.") and v.is_floating_point() else v
                for k, v in old.items()}, path)
    keys = load_checkpoint(model, str(path))
    assert "roi_heads.mask_head.predictor.weight" in keys
    assert torch.equal(model.mask_head.predictor.weight, old["mask_head.predictor.weight"] + 1)
