"""Command-line and solver mistakes get errors that name the flag or config key."""

import importlib.util
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import effdetmask.modeling  # noqa: F401  (effdet imported under effdetmask's warning filter)
from effdetmask.config import setup_cfg
from effdetmask.engine.defaults import check_device, default_argument_parser
from effdetmask.engine.solver import SolverSpec
from effdetmask.engine.trainer import build_module

REPO = Path(__file__).resolve().parents[2]
TINY = str(REPO / "configs" / "quick_schedules" / "effdet_d0_tiny_test.yaml")


def _load_script(name: str):
    spec = importlib.util.spec_from_file_location(f"effdetmask_{name}", REPO / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture
def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)


# ----------------------------------------------------------------- flags among the KEY VALUE pairs
@pytest.mark.parametrize("argv", [
    ["--config-file", "c.yaml", "OUTPUT_DIR", "out", "--resume"],
    ["--config-file", "c.yaml", "OUTPUT_DIR", "out", "--resume", "SOLVER.MAX_ITER", "8"],
    ["--resume", "--config-file", "c.yaml", "OUTPUT_DIR", "out", "SOLVER.MAX_ITER", "8"],
])
def test_resume_after_the_config_pairs_is_a_flag(argv):
    args = default_argument_parser().parse_args(argv)
    assert args.resume is True
    assert args.opts[:2] == ["OUTPUT_DIR", "out"] and "--resume" not in args.opts
    assert args.config_file == "c.yaml"


def test_flags_with_values_among_the_pairs():
    args = default_argument_parser().parse_args(
        ["OUTPUT_DIR", "out", "--num-gpus", "0", "--config-file=c.yaml", "SOLVER.BASE_LR", "-1",
         "--eval-only"])
    assert (args.num_gpus, args.config_file, args.eval_only) == (0, "c.yaml", True)
    assert args.opts == ["OUTPUT_DIR", "out", "SOLVER.BASE_LR", "-1"]  # "-1" stays a value


@pytest.mark.parametrize("argv,expected", [
    (["OUTPUT_DIR", "--resume"], "OUTPUT_DIR has no value"),
    (["OUTPUT_DIR", "out", "--resum"], "unrecognized argument --resum"),
    (["OUTPUT_DIR", "out", "--num-gpus"], "--num-gpus: expected one argument"),
])
def test_misplaced_flags_are_clear_errors(argv, expected, capsys):
    with pytest.raises(SystemExit):
        default_argument_parser().parse_args(["--config-file", "c.yaml", *argv])
    assert expected in capsys.readouterr().err


# ------------------------------------------------------------------------------- MODEL.DEVICE
def test_check_device():
    assert check_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="MODEL.DEVICE 'gpu' is not a torch device"):
        check_device("gpu")


def test_check_device_without_cuda(no_cuda):
    with pytest.raises(ValueError, match=r"MODEL.DEVICE 'cuda:1' but no CUDA device is available"):
        check_device("cuda:1")


def test_train_net_refuses_a_cuda_device_it_does_not_have(tmp_path, no_cuda):
    train_net = _load_script("train_net")
    args = default_argument_parser().parse_args(
        ["--config-file", TINY, "--num-gpus", "0", "OUTPUT_DIR", str(tmp_path / "run"),
         "DATASETS.ROOT", str(tmp_path / "data"), "TEST.VIS_IMAGES", "0", "MODEL.DEVICE", "cuda"])
    with pytest.raises(ValueError, match="MODEL.DEVICE 'cuda' but no CUDA device is available"):
        train_net.main(args)
    assert not (tmp_path / "run" / "checkpoints").exists()  # refused before training


def test_demo_refuses_a_cuda_device_it_does_not_have(tmp_path, no_cuda, capsys):
    demo = _load_script("demo")
    image = tmp_path / "img.png"
    cv2.imwrite(str(image), np.zeros((32, 32, 3), np.uint8))
    with pytest.raises(SystemExit):
        demo.main(["--config-file", TINY, "--input", str(image), "--output", str(tmp_path / "o"),
                   "MODEL.DEVICE", "cuda"])
    assert "MODEL.DEVICE 'cuda' but no CUDA device is available" in capsys.readouterr().err


# --------------------------------------------------------------------------------- solver keys
@pytest.mark.parametrize("key,value", [
    ("SOLVER.IMS_PER_BATCH", "0"),
    ("SOLVER.IMS_PER_BATCH", "-2"),
    ("SOLVER.BASE_LR", "-0.01"),
    ("SOLVER.BASE_LR", "1e999"),  # inf
    ("SOLVER.WEIGHT_DECAY", "-1.0"),
    ("SOLVER.ACCUMULATE_GRAD_BATCHES", "0"),
])
def test_bad_solver_values_name_the_key(key, value):
    cfg = setup_cfg(TINY, [key, value])
    with pytest.raises(ValueError, match=rf"{key} must be .*got"):
        SolverSpec.from_config(cfg)


def test_zero_test_batch_size_names_the_key(tmp_path):
    cfg = setup_cfg(TINY, ["TEST.IMS_PER_BATCH", "0", "OUTPUT_DIR", str(tmp_path)])
    with pytest.raises(ValueError, match=r"TEST.IMS_PER_BATCH must be .*got 0"):
        build_module(cfg)


@pytest.mark.parametrize("key,value", [("SOLVER.IMS_PER_BATCH", "0"), ("SOLVER.BASE_LR", "-1.0")])
def test_train_net_names_a_bad_solver_key(tmp_path, key, value):
    train_net = _load_script("train_net")
    args = default_argument_parser().parse_args(
        ["--config-file", TINY, "--num-gpus", "0", "OUTPUT_DIR", str(tmp_path / "run"),
         "DATASETS.ROOT", str(tmp_path / "data"), "TEST.VIS_IMAGES", "0", key, value])
    with pytest.raises(ValueError, match=rf"{key} must be .*got {value}"):
        train_net.main(args)
