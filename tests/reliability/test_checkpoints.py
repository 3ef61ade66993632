"""Weights and checkpoint files: nothing pickled in them is ever run; bad files are named.

The crafted files below unpickle to ``os.mkdir(marker)``: a harmless stand-in for a shell command
that shows whether the loader ran code from the file.
"""

import contextlib
import json
import os
import pickle
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import effdetmask.modeling  # noqa: F401  (effdet imported under effdetmask's warning filter)
from effdetmask.config import setup_cfg
from effdetmask.engine.callbacks import JSONLinesMetricsWriter
from effdetmask.engine.defaults import LaunchSpec
from effdetmask.engine.trainer import train
from effdetmask.modeling import build_model, load_checkpoint
from effdetmask.modeling.weights import read_state_dict

REPO = Path(__file__).resolve().parents[2]
TINY = str(REPO / "configs" / "quick_schedules" / "effdet_d0_tiny_test.yaml")
CPU = LaunchSpec(accelerator="cpu", devices=1, num_nodes=1, node_rank=0,
                 master_addr="127.0.0.1", master_port=29531)


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


class _Payload:
    """Unpickles to ``os.mkdir(marker)``."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def _craft(path: Path, marker: Path, kind: str) -> Path:
    """A file that runs the payload when unpickled: ``torch.save`` zip format (a plain state dict
    or a Lightning-style checkpoint) or a bare pickle (torch's legacy format reads it too)."""
    if kind == "zip_state_dict":
        torch.save({"weight": torch.zeros(1), "payload": _Payload(marker)}, path)
    elif kind == "zip_lightning":
        torch.save({"global_step": 2, "state_dict": {"model.x": torch.zeros(1)},
                    "hyper_parameters": _Payload(marker)}, path)
    else:
        path.write_bytes(pickle.dumps({"model": _Payload(marker)}))
    return path


def _tiny_cfg(tmp_path: Path, *opts: str):
    return setup_cfg(TINY, ["OUTPUT_DIR", str(tmp_path / "run"), "DATASETS.ROOT",
                            str(tmp_path / "data"), "TEST.VIS_IMAGES", "0", *opts])


@pytest.mark.parametrize("kind", ["zip_state_dict", "zip_lightning", "bare_pickle"])
def test_crafted_payload_is_real(tmp_path, kind):
    """Control: loading these files the unsafe way does run the payload."""
    marker = tmp_path / "marker"
    path = _craft(tmp_path / "evil.pth", marker, kind)
    with contextlib.suppress(RuntimeError):  # a bare pickle is no torch file, but it is unpickled
        torch.load(path, map_location="cpu", weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize("kind,name", [("zip_state_dict", "evil.pth"),
                                       ("bare_pickle", "evil.pth"),
                                       ("zip_lightning", "evil.ckpt")])
def test_crafted_model_weights_are_refused_without_running_them(tmp_path, kind, name):
    marker = tmp_path / "marker"
    path = _craft(tmp_path / name, marker, kind)
    with pytest.raises(RuntimeError) as info:
        build_model(_tiny_cfg(tmp_path, "MODEL.WEIGHTS", str(path)))
    assert not marker.exists(), "the file's pickled code ran"
    message = str(info.value)
    assert str(path) in message and "refusing" in message
    assert "weights_only=False" not in message  # torch's advice would run the payload


@pytest.mark.parametrize("force_unsafe", ["", "1"])
def test_crafted_last_ckpt_is_refused_on_resume_without_running_it(
    tmp_path, monkeypatch, force_unsafe
):
    # TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 turns torch.load's default (what Lightning uses unless
    # told) into full unpickling; resume must stay safe regardless
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", force_unsafe)
    cfg = _tiny_cfg(tmp_path)
    last = Path(cfg.OUTPUT_DIR) / "checkpoints" / "last.ckpt"
    last.parent.mkdir(parents=True)
    marker = tmp_path / "marker"
    _craft(last, marker, "zip_lightning")
    with pytest.raises(RuntimeError) as info:
        train(cfg, CPU, resume=True)
    assert not marker.exists(), "the checkpoint's pickled code ran"
    message = str(info.value)
    assert str(last) in message and "--resume" in message and "refusing" in message


@pytest.mark.parametrize("content", ["empty", "truncated"])
def test_bad_last_ckpt_on_resume_names_the_file_and_says_to_delete_it(tmp_path, content):
    cfg = _tiny_cfg(tmp_path)
    last = Path(cfg.OUTPUT_DIR) / "checkpoints" / "last.ckpt"
    last.parent.mkdir(parents=True)
    if content == "empty":
        last.write_bytes(b"")
    else:
        torch.save({"global_step": 2, "state_dict": {"w": torch.zeros(1000)}}, last)
        last.write_bytes(last.read_bytes()[:600])
    with pytest.raises(RuntimeError) as info:
        train(cfg, CPU, resume=True)
    message = str(info.value)
    assert str(last) in message and "--resume" in message and "Delete" in message
    assert ("empty" if content == "empty" else "truncated") in message


@pytest.mark.parametrize("name,content", [
    ("model.pth", "empty"),
    ("model.pth", "truncated"),
    ("model.pth", "garbage"),
    ("model.safetensors", "empty"),
    ("model.safetensors", "truncated"),
])
def test_bad_weights_files_name_the_file_and_the_problem(tmp_path, name, content):
    path = tmp_path / name
    if content == "empty":
        path.write_bytes(b"")
    else:
        if name.endswith(".safetensors"):
            from safetensors.torch import save_file

            save_file({"w": torch.zeros(1000)}, str(path))
        else:
            torch.save({"w": torch.zeros(1000)}, path)
        data = path.read_bytes()
        path.write_bytes(data[:len(data) // 2] if content == "truncated" else b"xyz" * 50)
    with pytest.raises(RuntimeError) as info:
        read_state_dict(str(path))
    message = str(info.value)
    assert str(path) in message
    assert ("empty" if content == "empty" else "corrupt") in message


def test_safetensors_weights_round_trip(tmp_path):
    from effdetmask.modeling.weights import save_state_dict

    cfg = _tiny_cfg(tmp_path)
    src, dst = build_model(cfg), build_model(cfg)
    state = dict(src.state_dict())
    path = tmp_path / "model.safetensors"
    save_state_dict(state, str(path))
    load_checkpoint(dst, str(path))
    for key, value in src.state_dict().items():
        assert torch.equal(value, dst.state_dict()[key]), key
    # tensors sharing storage (tied weights) are written too, each as its own copy
    tied = {"a": torch.arange(4.0), "b": torch.arange(4.0)}
    tied["b"] = tied["a"]
    save_state_dict(tied, str(tmp_path / "tied.safetensors"))
    back = read_state_dict(str(tmp_path / "tied.safetensors"))
    assert torch.equal(back["a"], back["b"])


def _fake_trainer(step: int, epoch: int = 0):
    return SimpleNamespace(global_step=step, current_epoch=epoch, sanity_checking=False,
                           callback_metrics={"train/loss": torch.tensor(1.0)})


def _rows(path: Path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_metrics_rows_stay_unique_by_phase_and_step(tmp_path):
    """A killed run left rows up to step 6 (and half a line); training resumes at step 4."""
    path = tmp_path / "metrics.jsonl"
    old = [{"step": s, "epoch": 0, "phase": "train"} for s in range(1, 7)]
    old.insert(3, {"step": 3, "epoch": 0, "phase": "eval"})
    old.append({"step": 6, "epoch": 0, "phase": "eval"})
    path.write_text("".join(json.dumps(r) + "\n" for r in old) + '{"step": 7, "ep')
    writer = JSONLinesMetricsWriter(str(tmp_path))
    writer.on_train_start(_fake_trainer(4), None)
    for step in (5, 6):
        writer.on_train_batch_end(_fake_trainer(step), None)
    writer.on_validation_end(_fake_trainer(6), None)
    writer.on_validation_end(_fake_trainer(6), None)  # the final evaluation at the same step
    rows = _rows(path)
    keys = [(r["phase"], r["step"]) for r in rows]
    assert len(keys) == len(set(keys)), keys
    assert sorted(s for p, s in keys if p == "train") == [1, 2, 3, 4, 5, 6]
    assert sorted(s for p, s in keys if p == "eval") == [3, 6]
    assert [r for r in rows if r["step"] <= 4] == [r for r in old if r["step"] <= 4]


def test_metrics_rows_once_per_optimiser_step_from_public_trainer_state(tmp_path):
    """With gradient accumulation a batch may end without an optimiser step: the writer tells from
    ``trainer.global_step`` alone (the fake trainer has nothing else, no loop internals)."""
    writer = JSONLinesMetricsWriter(str(tmp_path))
    writer.on_train_start(_fake_trainer(0), None)
    for step in (0, 1, 1, 2, 2, 3):  # accumulation 2, the first batch of a new run included
        writer.on_train_batch_end(_fake_trainer(step), None)
    assert [r["step"] for r in _rows(tmp_path / "metrics.jsonl")] == [1, 2, 3]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """One real 4-step training run (checkpoints at steps 2 and 4), in this process."""
    root = tmp_path_factory.mktemp("tiny_run")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cfg = _tiny_cfg(root)
        train(cfg, CPU)
    finally:
        torch.set_num_threads(threads)
    return root, cfg


def test_training_writes_safetensors_that_load_as_model_weights(tiny_run):
    root, cfg = tiny_run
    out = Path(cfg.OUTPUT_DIR)
    final = out / "model_final.safetensors"
    assert final.exists() and not (out / "model_final.pth").exists()
    model = build_model(_tiny_cfg(root, "MODEL.WEIGHTS", str(final)))
    # the project's own Lightning checkpoint reads with weights_only=True and holds the same model
    from_ckpt = read_state_dict(str(out / "checkpoints" / "last.ckpt"))
    for key, value in model.state_dict().items():
        if not key.endswith("num_batches_tracked"):
            assert torch.equal(value, from_ckpt[key]), key


def test_resume_keeps_metrics_rows_unique(tiny_run, tmp_path):
    root, cfg = tiny_run
    run = tmp_path / "run"
    shutil.copytree(cfg.OUTPUT_DIR, run)
    before = _rows(run / "metrics.jsonl")
    # as if killed after step 2's checkpoint: steps 3 and 4 run again
    shutil.copy(run / "checkpoints" / "step0000002.ckpt", run / "checkpoints" / "last.ckpt")
    cfg2 = _tiny_cfg(root, "OUTPUT_DIR", str(run))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(cfg2, CPU, resume=True)
    finally:
        torch.set_num_threads(threads)
    rows = _rows(run / "metrics.jsonl")
    keys = [(r["phase"], r["step"]) for r in rows]
    assert len(keys) == len(set(keys)), keys
    assert [s for p, s in keys if p == "train"] == [1, 2, 3, 4]
    assert [s for p, s in keys if p == "eval"] == [4]
    # continued from step 2 rather than starting over: the rows of steps 1-2 are the first run's
    assert [r for r in rows if r["step"] <= 2] == [r for r in before if r["step"] <= 2]
