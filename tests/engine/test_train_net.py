"""train_net.py end to end on the tiny d0 config: run dir, eval-only, resume, NaN stop (two-process
DDP: tests/engine/test_ddp_equivalence.py)."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from effdetmask.config import setup_cfg
from effdetmask.engine.defaults import LaunchSpec
from effdetmask.engine.lightning_module import NonFiniteLossError
from effdetmask.engine.trainer import train

REPO = Path(__file__).resolve().parents[2]
TINY = str(REPO / "configs" / "quick_schedules" / "effdet_d0_tiny_test.yaml")
TINY_BASELINE = str(REPO / "configs" / "quick_schedules" / "mask_rcnn_tiny_test.yaml")
FINAL = "model_final.safetensors"


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return str(tmp_path_factory.mktemp("datasets"))


def _cmd(config, out_dir, data_root, *extra):
    return [
        sys.executable,
        str(REPO / "train_net.py"),
        "--config-file",
        config,
        *extra,
        "OUTPUT_DIR",
        str(out_dir),
        "DATASETS.ROOT",
        data_root,
    ]


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop("CUDA_VISIBLE_DEVICES", None)
    return env


def _run(cmd, timeout=300):
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=timeout, env=_env(), cwd=REPO
    )
    assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc


def _train_in_process(config, out_dir, data_root, *opts):
    """``train()`` in this process, one thread: what train_net.py runs after parsing its flags,
    without an interpreter start (for tests that need no CLI or process boundary)."""
    cfg = setup_cfg(config, ["OUTPUT_DIR", str(out_dir), "DATASETS.ROOT", data_root, *opts])
    launch = LaunchSpec("cpu", devices=1, num_nodes=1, node_rank=0, master_addr="127.0.0.1",
                        master_port=29562)
    return train(cfg, launch)


def _state_dict(path):
    return load_file(str(path), device="cpu")


def _train_rows(out):
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["phase"] == "train"]


def test_train_writes_the_run_directory_and_eval_only_benchmarks(tmp_path, data_root):
    out = tmp_path / "run"
    _run(_cmd(TINY, out, data_root))
    for name in [
        "config.yaml",
        "env.txt",
        "metrics.jsonl",
        FINAL,
        "eval_results.json",
        "checkpoints/last.ckpt",
        "checkpoints/step0000002.ckpt",
        "checkpoints/step0000004.ckpt",
    ]:
        assert (out / name).exists(), name
    assert list((out / "tensorboard").rglob("events.out.tfevents.*"))
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train_steps = [r["step"] for r in records if r["phase"] == "train"]
    assert train_steps == [1, 2, 3, 4]
    assert all(r["train/loss"] > 0 for r in records if r["phase"] == "train")
    results = json.loads((out / "eval_results.json").read_text())["results"]
    assert set(results["fashion_synth_val"]) == {"bbox", "segm"}
    assert (out / "inference" / "fashion_synth_val" / "coco_instances_results.json").exists()
    assert len(list((out / "vis").glob("*_gt.png"))) == 4  # TEST.VIS_IMAGES

    eval_out = tmp_path / "eval"
    proc = _run(
        _cmd(TINY, eval_out, data_root, "--eval-only")
        + ["MODEL.WEIGHTS", str(out / FINAL)]
    )
    row = json.loads((eval_out / "benchmark.json").read_text())
    for key in [
        "box_AP",
        "mask_AP",
        "params_M",
        "checkpoint_MB",
        "GFLOPs",
        "s_per_img",
        "img_per_s",
        "device",
        "batch_size",
        "precision",
    ]:
        assert key in row, key
    assert row["img_per_s"] > 0 and row["params_M"] > 0
    assert "img_per_s" in proc.stdout  # the table is printed


def test_baseline_trains_through_the_same_engine(tmp_path, data_root, one_thread):
    out = tmp_path / "baseline"
    _train_in_process(TINY_BASELINE, out, data_root, "TEST.VIS_IMAGES", "0")  # pictures: above
    assert (out / FINAL).exists()
    assert (
        "segm"
        in json.loads((out / "eval_results.json").read_text())["results"]["fashion_synth_val"]
    )


def test_sigkill_then_resume_matches_an_uninterrupted_run(tmp_path, data_root, one_thread):
    # 8 steps of 4 per epoch (the resumed run crosses an epoch boundary); no evaluation or
    # pictures: the final weights are what is compared
    steps = ["SOLVER.MAX_ITER", "8", "SOLVER.CHECKPOINT_PERIOD", "2", "DATASETS.TEST", "()",
             "TEST.VIS_IMAGES", "0"]
    straight = tmp_path / "straight"  # in-process: the same train(), one thread, no kill
    _train_in_process(TINY, straight, data_root, *steps)

    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        _cmd(TINY, killed, data_root) + steps,
        env=_env(),
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    first_ckpt = killed / "checkpoints" / "step0000004.ckpt"
    deadline = time.monotonic() + 240
    while not first_ckpt.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    was_running = proc.poll() is None
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert was_running, "training ended before it could be killed; raise MAX_ITER"
    assert not (killed / FINAL).exists()
    # the kill lands once step0000004.ckpt exists; last.ckpt is written just after it, so resume
    # is from step 2 or 4
    last = torch.load(killed / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    resumed = last["global_step"]
    assert resumed in (2, 4)
    before = _train_rows(killed)

    _run(_cmd(TINY, killed, data_root, "--resume") + steps)
    a, b = _state_dict(straight / FINAL), _state_dict(killed / FINAL)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)
    rows = _train_rows(killed)
    # rows the killed process wrote after the resumed step were dropped: one row per step
    assert [r["step"] for r in rows] == list(range(1, 9))
    # the second process continued from the checkpoint, it did not start over: the first
    # process's rows up to the resumed step are kept as they were
    assert rows[:resumed] == before[:resumed]


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_last_good_checkpoint(
    tmp_path, data_root, one_thread
):
    """The LR is sane for the first epoch (4 steps: checkpoints at 2 and 4) and multiplied by 1e30
    from the second, so the loss turns non-finite a step or two after the last good checkpoint.
    In-process: the message is the exception's, which train_net.py prints."""
    out = tmp_path / "nan"
    with pytest.raises(NonFiniteLossError) as info:
        _train_in_process(
            TINY, out, data_root,
            "SOLVER.MAX_ITER", "8",
            "SOLVER.LR_SCHEDULER", "step",
            "SOLVER.STEP_SIZE", "1",
            "SOLVER.GAMMA", "1e30",
            "SOLVER.WARMUP_ITERS", "0",
            "SOLVER.CLIP_GRAD_NORM", "0.0",
            "DATASETS.TEST", "()",
            "TEST.VIS_IMAGES", "0",
        )
    match = re.search(r"non-finite loss at optimiser step (\d+) .*loss_cls", str(info.value))
    assert match, str(info.value)
    failed_at = int(match.group(1))
    assert 5 <= failed_at <= 7  # after the first step at the exploded LR (step 5)
    assert not (out / FINAL).exists()
    # the checkpoints written before the failure are kept, and none after it
    saved = sorted(int(p.stem[4:]) for p in (out / "checkpoints").glob("step*.ckpt"))
    assert saved == [2, 4]
    # last.ckpt is the last good state: step 4, every tensor finite
    last = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["global_step"] == 4
    floats = [t for t in last["state_dict"].values() if t.is_floating_point()]
    assert floats and all(bool(torch.isfinite(t).all()) for t in floats)


def test_missing_dataset_says_how_to_prepare_it(tmp_path, data_root, one_thread):
    """In-process: the message is the exception's (what train_net.py prints); a subprocess would
    cost an interpreter start for an error raised before the first step."""
    with pytest.raises(FileNotFoundError) as info:
        _train_in_process(TINY, tmp_path / "x", data_root,
                          "DATASETS.TRAIN", "('fashionpedia_train',)")
    assert "fashionpedia" in str(info.value) and "datasets/README.md" in str(info.value)
