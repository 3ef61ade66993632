"""benchmarks/bench_peers.py: without Ultralytics it exits 2 with the install hint; its EffDetMask
side returns exactly N detections with masks at image resolution; with Ultralytics (never in CI)
a small end-to-end run (slow)."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "bench_peers.py"

pytestmark = pytest.mark.usefixtures("one_thread")


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_peers", SCRIPT)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


def test_exits_2_with_install_hint_without_ultralytics():
    # ultralytics made unimportable, so the test holds in an environment that has it
    hide = ("import runpy, sys; sys.modules['ultralytics'] = None; "
            f"sys.argv = [{str(SCRIPT)!r}] + sys.argv[1:]; "
            f"runpy.run_path({str(SCRIPT)!r}, run_name='__main__')")
    proc = subprocess.run([sys.executable, "-c", hide, "--size", "128", "--repeats", "1"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert "pip install ultralytics" in proc.stderr
    assert "AGPL-3.0" in proc.stderr and "never" in proc.stderr
    assert proc.stdout == ""  # nothing timed, no table


def test_effdetmask_side_returns_exactly_n_detections():
    bench = load_bench()
    rgb = bench.load_image()[:200, :300]  # not square: masks follow the image, not the input
    # random weights: seeded, so the forced count does not depend on which tests ran before
    # (a degenerate box of an unlucky init is dropped by the selection)
    torch.manual_seed(0)
    predictor = bench.build_effdetmask("d0_fast", size=128, detections=7)
    out = predictor([rgb])
    assert bench.effdetmask_count(out) == (7, [200, 300])
    assert out[0]["masks"].dtype == torch.bool


@pytest.mark.slow
def test_end_to_end_with_ultralytics(tmp_path):
    pytest.importorskip("ultralytics")
    out = tmp_path / "peers.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--size", "128", "--detections", "20",
                           "--threads", "1", "--warmup", "1", "--repeats", "1",
                           "--output", str(out)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    rows = {r["model"]: r for r in result["rows"]}
    yolo = rows["yolo11n-seg"]
    assert "random init" in yolo["weights"]  # no yolo11n-seg.pt in tmp_path
    assert rows["d0_fast"]["detections_per_img"] == 20
    if yolo["detections_per_img"] < 20:  # the row at equal counts
        assert rows[f"d0_fast@{yolo['detections_per_img']}"]["vs"] == "yolo11n-seg"
    for row in rows.values():
        assert row["threads_in_forward"] == [1]
        assert row["mask_hw"] in ([512, 512], [])
    assert result["ultralytics"] and result["machine"]["torch_threads"] == 1
