"""Backbone levels, pretrained loading from a local file, and frozen BatchNorm."""

import pytest
import timm
import torch
import torch.nn as nn
from timm.layers import BatchNormAct2d, FrozenBatchNormAct2d
from torchvision.ops.misc import FrozenBatchNorm2d

from effdetmask.modeling import TimmBiFPNBackbone, freeze_batch_norm


@pytest.mark.parametrize(
    "levels,out_indices", [((3, 7), (2, 3, 4)), ((2, 6), (1, 2, 3, 4))], ids=["P3-P7", "P2-P6"]
)
def test_backbone_levels(levels, out_indices):
    lo, hi = levels
    backbone = TimmBiFPNBackbone(
        image_size=128, min_level=lo, max_level=hi, out_indices=out_indices, fpn_channels=16,
        fpn_repeats=1,
    ).eval()
    with torch.no_grad():
        feats = backbone(torch.randn(1, 3, 128, 128))
    assert list(feats) == [f"p{lvl}" for lvl in range(lo, hi + 1)]
    for name, spec in backbone.output_shape().items():
        assert feats[name].shape == (1, 16, 128 // spec.stride, 128 // spec.stride)
        assert spec.stride == 2 ** int(name[1:])


def test_backbone_level_mismatch_is_a_clear_error():
    with pytest.raises(ValueError, match="OUT_INDICES"):
        TimmBiFPNBackbone(image_size=128, min_level=2, max_level=6, out_indices=(2, 3, 4))
    with pytest.raises(ValueError, match="divisible"):
        TimmBiFPNBackbone(image_size=100)


def test_backbone_pretrained_from_local_file(tmp_path):
    torch.manual_seed(1)
    classifier = timm.create_model("efficientnet_b0")
    path = tmp_path / "b0.pth"
    torch.save(classifier.state_dict(), path)
    backbone = TimmBiFPNBackbone(image_size=128, pretrained=str(path), fpn_repeats=1)
    own = backbone.body.state_dict()
    assert torch.equal(own["conv_stem.weight"], classifier.state_dict()["conv_stem.weight"])
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        TimmBiFPNBackbone(image_size=128, pretrained=str(tmp_path / "missing.pth"))


def test_frozen_bn_really_freezes():
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3),
        nn.BatchNorm2d(8),
        nn.Conv2d(8, 8, 3),
        BatchNormAct2d(8, act_layer=nn.SiLU),
    )
    with torch.no_grad():  # non-trivial statistics, so a silent reset would show
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
                m.weight.uniform_(0.5, 2)
    x = torch.randn(2, 3, 12, 12)
    net.eval()
    expected = net(x)
    frozen = freeze_batch_norm(net)
    assert isinstance(frozen[1], FrozenBatchNorm2d)
    assert isinstance(frozen[3], FrozenBatchNormAct2d)
    assert isinstance(frozen[3].act, nn.SiLU)  # activation kept
    before = {k: v.clone() for k, v in frozen.state_dict().items()}
    frozen.train()
    torch.testing.assert_close(frozen(x), expected)  # eval behaviour in train mode
    opt = torch.optim.SGD([p for p in frozen.parameters() if p.requires_grad], lr=0.1)
    frozen(x).square().mean().backward()
    opt.step()
    after = frozen.state_dict()
    for key in before:
        if "running" in key or key.startswith(("1.", "3.")):
            assert torch.equal(before[key], after[key]), key
    assert not any("1." in n or "3." in n for n, _ in frozen.named_parameters())


def test_freezing_with_nothing_loaded_is_an_error(cfg_factory):
    from effdetmask.modeling import build_model

    cfg = cfg_factory("", "MODEL.BIFPN.REPEATS", "1", "MODEL.FREEZE_BN", "True")
    with pytest.raises(ValueError, match="identity"):
        build_model(cfg)


def test_only_batch_norms_with_loaded_statistics_are_frozen(cfg_factory):
    """A pretrained backbone's BatchNorms freeze; the new BiFPN's and heads' train, so the pyramid
    carries signal (with every BatchNorm frozen at fresh statistics its std was ~1e-4)."""
    from effdetmask.modeling import build_model
    from effdetmask.modeling.frozen_bn import count_batch_norm, identity_batch_norms

    from .conftest import fake_imagenet_weights

    weights = fake_imagenet_weights("efficientnet_b0")
    model = build_model(cfg_factory("", "MODEL.FREEZE_BN", "True",
                                    "MODEL.BACKBONE.PRETRAINED", weights))
    body_trainable, body_frozen = count_batch_norm(model.backbone.body)
    assert body_trainable == 0 and body_frozen == 48  # every BatchNorm of B0's feature stages
    assert count_batch_norm(model.backbone.fpn)[1] == 0
    assert count_batch_norm(model.proposal_generator)[1] == 0
    assert identity_batch_norms(model) == []
    model.train()
    torch.manual_seed(0)
    with torch.no_grad():
        pyramid = model.backbone(torch.randn(2, 3, 128, 128))
    stds = {name: float(f.std()) for name, f in pyramid.items()}
    assert min(stds.values()) > 0.1, stds
