"""Folding BatchNorm into convolutions for inference: same outputs, fewer layers, no training."""

import copy
from pathlib import Path

import pytest
import torch
from torchvision.ops import box_iou

from effdetmask.modeling import build_model
from effdetmask.modeling.fold_bn import fold_batch_norm
from effdetmask.modeling.frozen_bn import FROZEN_BN_TYPES

from .conftest import make_inputs
from .conftest import tiny_cfg as _tiny_cfg

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "quick_schedules"


def tiny_cfg(name: str, *opts: str):
    return _tiny_cfg(str(CONFIGS / name), *opts)


def _batch_norms(model):
    return [m for m in model.modules()
            if isinstance(m, (torch.nn.modules.batchnorm._BatchNorm,) + FROZEN_BN_TYPES)]


def _randomize_statistics(model):
    """Non-trivial BN statistics and affine values, so a wrong fold would show."""
    g = torch.Generator().manual_seed(0)
    for bn in _batch_norms(model):
        n = bn.running_var.numel()
        bn.running_var.copy_(torch.rand(n, generator=g) + 0.5)
        bn.running_mean.copy_(torch.rand(n, generator=g) - 0.5)
        bn.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
        bn.bias.data.copy_(torch.rand(n, generator=g) - 0.5)


@pytest.mark.parametrize("config,freeze", [
    ("effdet_d0_tiny_test.yaml", "True"),
    ("effdet_d0_tiny_test.yaml", "False"),
    ("mask_rcnn_tiny_test.yaml", "True"),
])
def test_folded_model_predicts_the_same(config, freeze, tmp_path):
    """Same detections and masks. The random-weight baseline's mask logits sit near 0, where any
    rounding flips pixels, so for it the backbone features are compared instead of the masks.
    Frozen BatchNorms need loaded statistics: the frozen case loads the randomised model."""
    cfg = tiny_cfg(config, "TEST.SCORE_THRESH", "0.0")
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    _randomize_statistics(model)
    if freeze == "True":
        weights = tmp_path / "randomized.pth"
        torch.save(model.state_dict(), weights)
        model = build_model(tiny_cfg(config, "TEST.SCORE_THRESH", "0.0", "MODEL.FREEZE_BN", "True",
                                     "MODEL.WEIGHTS", str(weights))).eval()
        assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
                       for m in model.modules())
    folded = copy.deepcopy(model)
    before = len(_batch_norms(folded))
    count = fold_batch_norm(folded)
    assert count > 0 and len(_batch_norms(folded)) == before - count
    inputs = make_inputs([3])
    with torch.inference_mode():
        want = model(inputs)[0]["instances"]
        got = folded(inputs)[0]["instances"]
    assert len(got["scores"]) == len(want["scores"]) > 0
    torch.testing.assert_close(got["scores"], want["scores"], rtol=1e-4, atol=1e-5)
    # float rounding only: through a deep random ResNet a box edge may move by a fraction of a pixel
    assert box_iou(got["boxes"], want["boxes"]).diagonal().min() > 0.99
    if hasattr(model, "net"):  # the torchvision baseline
        image = torch.rand(1, 3, 128, 128)
        with torch.inference_mode():
            want_features, got_features = model.net.backbone(image), folded.net.backbone(image)
        for name, value in want_features.items():
            error = (got_features[name] - value).abs().max()
            assert error <= 1e-4 * value.abs().max(), (name, float(error))
        return
    iou = (got["masks"] & want["masks"]).sum() / (got["masks"] | want["masks"]).sum().clamp(min=1)
    assert iou > 0.99


def test_inference_only_build_is_folded_and_refuses_training():
    cfg = tiny_cfg("effdet_d0_tiny_test.yaml")
    plain, folded = build_model(cfg), build_model(cfg, inference_only=True)
    assert not folded.training
    assert len(_batch_norms(folded)) < len(_batch_norms(plain))
    # no monkeypatched methods: train() is nn.Module's, the folded layers refuse to train
    assert "train" not in vars(folded) and type(folded).train is type(plain).train
    folded.train()
    with pytest.raises(RuntimeError, match="inference_only"):
        folded(make_inputs([1]))
    folded.eval()
    assert len(folded(make_inputs([1]))) == 1
    cfg.defrost()
    cfg.TEST.FOLD_BN = False
    assert len(_batch_norms(build_model(cfg, inference_only=True))) == len(_batch_norms(plain))


def test_training_mode_model_is_not_folded():
    model = build_model(tiny_cfg("effdet_d0_tiny_test.yaml"))
    with pytest.raises(ValueError, match="eval mode"):
        fold_batch_norm(model)
