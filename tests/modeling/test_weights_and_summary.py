"""MODEL.WEIGHTS (plain and Lightning checkpoints), effdet COCO checkpoints, model summary."""

import math
from pathlib import Path

import pytest
import torch

from effdetmask.modeling import build_model, load_checkpoint, load_effdet_checkpoint
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
    load_checkpoint(unfrozen, str(plain))


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
    model = build_model(cfg_factory(D0, *SMALL))
    summary = summarize_model(model, input_size=128)
    params = summary["params"]
    assert set(params) == {"backbone", "BiFPN", "class head", "box head", "mask head"}
    assert sum(params.values()) == summary["total_params"] > summary["trainable_params"]
    assert summary["flops"] > 0 and summary["flops_by_part"]["mask head"] > 0
    assert summary["checkpoint_bytes"] > 4 * summary["trainable_params"]
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
