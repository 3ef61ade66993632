"""Fixtures for the model tests: tiny configs and fake mapper outputs built directly as tensors."""

import os
import tempfile
from typing import Dict, List, Sequence

import pytest
import torch

import effdetmask.modeling  # noqa: F401  (effdet imported under effdetmask's warning filter)
from effdetmask.config import setup_cfg

SIZE = 128


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Every model test runs on one thread (tests/conftest.py)."""


def make_inputs(
    num_instances: Sequence[int],
    size: int = SIZE,
    height: int = 200,
    width: int = 300,
    seed: int = 0,
) -> List[Dict]:
    """Mapper outputs: a ``height x width`` image letterboxed into ``size``, rectangle masks."""
    g = torch.Generator().manual_seed(seed)
    scale = size / max(height, width)
    out = []
    for i, n in enumerate(num_instances):
        masks = torch.zeros(n, size, size, dtype=torch.uint8)
        boxes = []
        for k in range(n):
            x0, y0 = 8 + 17 * k, 6 + 11 * k
            x1, y1 = x0 + 40 + 5 * k, y0 + 30 + 3 * k
            masks[k, y0:y1, x0:x1] = 1
            boxes.append([x0, y0, x1, y1])
        out.append({
            "image": torch.randint(0, 256, (3, size, size), dtype=torch.uint8, generator=g),
            "image_id": i,
            "file_name": f"img{i}.jpg",
            "height": height,
            "width": width,
            "scale": scale,
            "instances": {
                "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                "classes": (torch.arange(n) * 7) % 46,
                "masks": masks,
                "attributes": torch.zeros(n, 294),
            },
        })
    return out


_FAKE_WEIGHTS: Dict[str, str] = {}


def fake_imagenet_weights(timm_name: str) -> str:
    """A local stand-in for timm's hub weights (unreachable here): a classification state dict of
    ``timm_name`` with random, non-trivial BatchNorm statistics, written once per session."""
    if timm_name not in _FAKE_WEIGHTS:
        import timm

        torch.manual_seed(0)
        net = timm.create_model(timm_name, pretrained=False)
        with torch.no_grad():
            for m in net.modules():
                if isinstance(m, torch.nn.BatchNorm2d):
                    m.running_mean.uniform_(-0.1, 0.1)
                    m.running_var.uniform_(0.5, 2.0)
                    m.weight.uniform_(0.5, 1.5)
        path = os.path.join(tempfile.mkdtemp(prefix="effdetmask_fake_"), f"{timm_name}.pth")
        torch.save(net.state_dict(), path)
        _FAKE_WEIGHTS[timm_name] = path
    return _FAKE_WEIGHTS[timm_name]


def tiny_cfg(config_file: str = "", *opts: str):
    """The config at ``SIZE``; a backbone asking for timm's hub weights gets a local stand-in."""
    cfg = setup_cfg(config_file, ["INPUT.SIZE", str(SIZE), *opts], freeze=False)
    if cfg.MODEL.BACKBONE.PRETRAINED == "timm":
        cfg.MODEL.BACKBONE.PRETRAINED = fake_imagenet_weights(cfg.MODEL.BACKBONE.TIMM_NAME)
    cfg.freeze()
    return cfg


@pytest.fixture
def inputs_factory():
    return make_inputs


@pytest.fixture
def cfg_factory():
    return tiny_cfg
