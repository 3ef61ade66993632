"""MODEL.WEIGHTS (plain and Lightning checkpoints), effdet COCO checkpoints, model summary."""

import math
from pathlib import Path

import pytest
import torch

from effdetmask.modeling import build_model, load_checkpoint, load_effdet_checkpoint
from effdetmask.modeling.frozen_bn import count_batch_norm
from effdetmask.modeling.weights import save_state_dict
from effdetmask.utils.model_summary import format_summary, summarize_model

D0 = str(Path(__file__).resolve().parents[2] / "configs" / "effdet_d0.yaml")
SMALL = ("MODEL.ROI_MASK_HEAD.CONV_DIM", "16")


def _same(a: torch.nn.Module, b: torch.nn.Module, prefix: str = "") -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    # frozen BatchNorms have no num_batches_tracked: compare the tensors both sides hold
    return all(torch.equal(sa[k], sb[k]) for k in sa
               if k.startswith(prefix) and not k.endswith("num_batches_tracked"))


def test_plain_and_lightning_checkpoints_round_trip(tmp_path, cfg_factory):
    torch.manual_seed(0)
    src = build_model(cfg_factory(D0, *SMALL))
    torch.manual_seed(1)
    dst = build_model(cfg_factory(D0, *SMALL))
    assert not _same(src, dst)
    plain = tmp_path / "plain.pth"
    torch.save(src.state_dict(), plain)
    load_checkpoint(dst, str(plain))
    assert _same(src, dst)
    lightning = tmp_path / "last.ckpt"
    torch.save({"epoch": 3, "state_dict": {f"model.{k}": v for k, v in src.state_dict().items()}},
               lightning)
    torch.manual_seed(2)
    via_cfg = build_model(cfg_factory(D0, *SMALL, "MODEL.WEIGHTS", str(lightning)))
    assert _same(src, via_cfg)
    # a frozen-BN checkpoint loads into an unfrozen model (num_batches_tracked is not an error)
    unfrozen = build_model(cfg_factory(D0, *SMALL, "MODEL.FREEZE_BN", "False"))
    assert not _same(src, unfrozen)
    load_checkpoint(unfrozen, str(plain))
    assert _same(src, unfrozen)  # every tensor of the frozen model, BatchNorm affine included
    assert count_batch_norm(unfrozen)[1] == 0  # and its BatchNorms still train


def test_mismatched_checkpoint_names_the_file(tmp_path, cfg_factory):
    wide = build_model(cfg_factory(D0, "MODEL.ROI_MASK_HEAD.CONV_DIM", "24"))
    path = tmp_path / "wide.pth"
    torch.save(wide.state_dict(), path)
    small = build_model(cfg_factory(D0, *SMALL))
    with pytest.raises(RuntimeError, match=r"wide\.pth.*shape mismatch"):
        load_checkpoint(small, str(path))
    partial = tmp_path / "partial.pth"
    torch.save({k: v for k, v in small.state_dict().items() if "mask_head" not in k}, partial)
    with pytest.raises(RuntimeError, match=r"partial\.pth.*missing keys"):
        load_checkpoint(small, str(partial))
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        load_checkpoint(small, str(tmp_path / "nope.pth"))


def test_effdet_coco_checkpoint(tmp_path, cfg_factory):
    from effdet import EfficientDet, get_efficientdet_config

    torch.manual_seed(0)
    coco = EfficientDet(get_efficientdet_config("efficientdet_d0"), pretrained_backbone=False)
    with torch.no_grad():  # a head that is clearly not our init, to see the reset
        coco.class_net.predict.conv_pw.bias.fill_(3.0)
    path = tmp_path / "efficientdet_d0_coco.pth"
    torch.save(coco.state_dict(), path)
    model = build_model(cfg_factory(D0, *SMALL, "MODEL.EFFDET_HEAD.EFFDET_CHECKPOINT", str(path)))
    ours, theirs = model.state_dict(), coco.state_dict()
    for key in ("conv_stem.weight", "blocks.3.0.conv_pw.weight", "bn1.running_var"):
        assert torch.equal(ours[f"backbone.body.{key}"], theirs[f"backbone.{key}"])
    assert torch.equal(ours["backbone.fpn.cell.0.fnode.0.combine.edge_weights"],
                       theirs["fpn.cell.0.fnode.0.combine.edge_weights"])
    assert torch.equal(ours["proposal_generator.box_net.predict.conv_pw.weight"],
                       theirs["box_net.predict.conv_pw.weight"])
    bias = model.proposal_generator.class_net.predict.conv_pw.bias
    assert bias.shape == (9 * 46,)
    torch.testing.assert_close(bias, torch.full_like(bias, -math.log(0.99 / 0.01)))
    # a d1 model cannot take a d0 checkpoint: the error names the file
    d1 = build_model(cfg_factory(D0, *SMALL, "MODEL.BIFPN.CHANNELS", "88"))
    with pytest.raises(RuntimeError, match="efficientdet_d0_coco.pth"):
        load_effdet_checkpoint(d1, str(path))


def test_model_summary(cfg_factory):
    """Sizes against effdet's and timm's own d0 parts; mask-head FLOPs from its layer shapes."""
    import timm
    from effdet import EfficientDet, get_efficientdet_config
    from effdet.config.config_utils import set_config_writeable

    model = build_model(cfg_factory(D0, *SMALL))
    summary = summarize_model(model, input_size=128)
    params = summary["params"]

    def numel(module):
        return sum(p.numel() for p in module.parameters())

    config = get_efficientdet_config("efficientdet_d0")
    set_config_writeable(config)
    config.num_classes = 46
    ref = EfficientDet(config, pretrained_backbone=False)
    body = timm.create_model("efficientnet_b0", features_only=True, out_indices=(2, 3, 4))
    head = model.mask_head
    convs = [m for m in head.modules()
             if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))]
    assert params == {"backbone": numel(body), "BiFPN": numel(ref.fpn),
                      "class head": numel(ref.class_net), "box head": numel(ref.box_net),
                      "mask head": sum(c.weight.numel() + c.bias.numel() for c in convs),
                      "attribute head": numel(model.roi_heads.attribute_head)}
    assert summary["total_params"] == sum(params.values())
    # the backbone's BatchNorms are frozen (loaded statistics): their affine weights don't train
    frozen = sum(m.weight.numel() + m.bias.numel() for m in body.modules()
                 if isinstance(m, torch.nn.BatchNorm2d))
    assert summary["trainable_params"] == summary["total_params"] - frozen
    # mask head at TEST score threshold 0 on 100 detections: 3x3 convs on 14x14 RoI features,
    # the 2x2 deconv on its 14x14 input (fvcore counts a multiply-add as one FLOP; the per-class
    # 1x1 predictor is an einsum of 28 * 28 * CONV_DIM per RoI, counted or not)
    r = head.pooler.output_size[0]
    per_roi = sum(c.weight.numel() * r * r for c in convs[:-1])
    got = summary["flops_by_part"]["mask head"]
    assert 100 * per_roi <= got <= 100 * (per_roi + 4 * r * r * convs[-1].in_channels)
    assert summary["flops"] > sum(summary["flops_by_part"].values()) - 1
    # the state dict's float32 tensors plus the container's overhead (well under 1 MB)
    state = sum(t.numel() for t in model.state_dict().values() if t.is_floating_point())
    assert 4 * state <= summary["checkpoint_bytes"] <= 4 * state + 2**20
    assert "mask head" in format_summary("d0", summary)


@pytest.mark.parametrize("family", ["efficientdet_d0", "tf_efficientdet_d0"])
def test_both_effdet_checkpoint_families_load_exactly(tmp_path, cfg_factory, family):
    """A checkpoint as ``effdet.create_model(family)`` writes it loads; the TF family's redundant
    conv biases are folded into the BatchNorms, so box outputs equal effdet's own model's (with
    PyTorch padding on both sides: TF "same" padding is a property of the backbone, not the
    weights)."""
    from effdet import EfficientDet, get_efficientdet_config
    from effdet.config.config_utils import set_config_writeable

    config = get_efficientdet_config(family)
    set_config_writeable(config)
    config.image_size, config.pad_type = (128, 128), ""
    torch.manual_seed(0)
    ref = EfficientDet(config, pretrained_backbone=False).eval()
    with torch.no_grad():  # non-trivial statistics and biases, so a dropped bias would show
        for name, t in ref.state_dict().items():
            if name.endswith(("running_mean", ".bias")):
                t.uniform_(-0.5, 0.5)
            elif name.endswith("running_var"):
                t.uniform_(0.5, 2.0)
    path = tmp_path / f"{family}.pth"
    torch.save(ref.state_dict(), path)
    timm_name = config.backbone_name
    model = build_model(cfg_factory(D0, *SMALL, "MODEL.BACKBONE.TIMM_NAME", timm_name,
                                    "MODEL.BACKBONE.PRETRAINED", "",
                                    "MODEL.EFFDET_HEAD.EFFDET_CHECKPOINT", str(path))).eval()
    # loaded parts freeze (backbone, BiFPN, box head); the reset class head's BatchNorms train
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.backbone.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d)
               for m in model.proposal_generator.class_net.modules())
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        _, want_boxes = ref(x)
        features = model.backbone(x)
        _, got_boxes = model.proposal_generator.head_outputs(features)
    for got, want in zip(got_boxes, want_boxes):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_model_weights_skip_the_backbone_download(tmp_path, monkeypatch):
    """A config that starts from the hub's ImageNet weights evaluates / predicts / exports
    offline from MODEL.WEIGHTS: those replace every tensor, so nothing is fetched first."""
    from effdetmask.config import setup_cfg

    from .conftest import SIZE

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # any hub access would fail at once
    opts = ["INPUT.SIZE", str(SIZE), *SMALL]
    trained = build_model(setup_cfg(D0, [*opts, "MODEL.BACKBONE.PRETRAINED", "",
                                         "MODEL.FREEZE_BN", "False"]))
    path = tmp_path / "model_final.safetensors"  # what training writes
    save_state_dict(trained.state_dict(), str(path))
    assert setup_cfg(D0).MODEL.BACKBONE.PRETRAINED == "timm"
    loaded = build_model(setup_cfg(D0, [*opts, "MODEL.WEIGHTS", str(path)]))
    assert _same(trained, loaded)
    with pytest.raises(Exception, match="package"):  # the hub is named as unreachable
        build_model(setup_cfg(D0, opts))


class _EffDetLike(torch.nn.Module):
    """Any meta-architecture with effdet parts: says so by having ``load_effdet_checkpoint``."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = []

    def load_effdet_checkpoint(self, path, prior_prob=0.01):
        self.calls.append((path, prior_prob))
        return ["backbone.body.x"]


def test_effdet_checkpoint_dispatches_through_the_model_not_the_arch_name(caplog):
    """MODEL.EFFDET_HEAD.EFFDET_CHECKPOINT reaches any model that can load it, whatever
    META_ARCHITECTURE says; a model without effdet parts warns and loads nothing."""
    from effdetmask.config import get_cfg
    from effdetmask.modeling.weights import load_weights

    cfg = get_cfg()
    cfg.MODEL.META_ARCHITECTURE = "SomeOtherDetector"
    cfg.MODEL.EFFDET_HEAD.EFFDET_CHECKPOINT = "coco_d0.pth"
    cfg.MODEL.EFFDET_HEAD.PRIOR_PROB = 0.02
    model = _EffDetLike()
    assert load_weights(model, cfg) == {"backbone.body.x"}
    assert model.calls == [("coco_d0.pth", 0.02)]
    with caplog.at_level("WARNING"):
        assert load_weights(torch.nn.Linear(2, 2), cfg) == set()
    assert "EFFDET_CHECKPOINT coco_d0.pth is ignored" in caplog.text
