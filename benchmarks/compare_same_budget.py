#!/usr/bin/env python3
"""d0 against the Mask R-CNN baseline, each trained for the same wall-clock time, then evaluated.

Both runs use the same generated dataset, input size, batch size, mapper and evaluator; only the
meta-architecture (and each model's own optimiser recipe) differs. Prints a table and writes JSON.

    python benchmarks/compare_same_budget.py --seconds 600 \
            --output benchmarks/results/same_budget_cpu.json
    python benchmarks/compare_same_budget.py --seconds 300 --num-gpus 1 SOLVER.PRECISION bf16-mixed
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Dict, List

REPO = Path(__file__).resolve().parents[1]

# The shared setting of both runs: the README main job's data and input, its batch size.
COMMON = ["INPUT.SIZE", "256", "DATASETS.SYNTH.NUM_TRAIN", "200", "DATASETS.SYNTH.NUM_VAL", "40",
          "DATASETS.SYNTH.IMAGE_SIZE", "256", "SOLVER.IMS_PER_BATCH", "8",
          "SOLVER.ACCUMULATE_GRAD_BATCHES", "1", "SOLVER.MAX_ITER", "1000000",
          "SOLVER.CHECKPOINT_PERIOD", "1000000", "MODEL.FREEZE_BN", "False",
          "MODEL.BACKBONE.PRETRAINED", "",
          "TEST.IMS_PER_BATCH", "8", "TEST.VIS_IMAGES", "0", "DATALOADER.NUM_WORKERS", "1"]
MODELS = {
    "effdet_d0": (REPO / "configs" / "quick_schedules" / "effdet_d0_synth_cpu.yaml", []),
    "mask_rcnn_R_50_FPN": (REPO / "configs" / "mask_rcnn_R_50_FPN.yaml",
                           ["SOLVER.BASE_LR", "0.01", "SOLVER.LR_SCHEDULER", "cosine",
                            "SOLVER.WARMUP_ITERS", "20"]),
}


def _run_one(name: str, args: argparse.Namespace) -> Dict[str, object]:
    from effdetmask.config import setup_cfg
    from effdetmask.engine.benchmark import benchmark_row
    from effdetmask.engine.defaults import LaunchSpec
    from effdetmask.engine.trainer import FINAL_WEIGHTS, train

    config, own = MODELS[name]
    out_dir = os.path.join(args.output_dir, name)
    cfg = setup_cfg(str(config), COMMON + own + ["SOLVER.MAX_TIME_S", str(args.seconds),
                                                 "OUTPUT_DIR", out_dir] + args.opts)
    launch = LaunchSpec(accelerator="gpu" if args.num_gpus else "cpu",
                        devices=max(1, args.num_gpus), num_nodes=1, node_rank=0,
                        master_addr="127.0.0.1", master_port=29519)
    start = time.monotonic()
    results = train(cfg, launch)
    wall = time.monotonic() - start
    steps = _last_step(out_dir)
    eval_cfg = cfg.clone()
    eval_cfg.defrost()
    eval_cfg.MODEL.WEIGHTS = os.path.join(out_dir, FINAL_WEIGHTS)
    eval_cfg.MODEL.DEVICE = "cuda" if args.num_gpus else "cpu"
    row = benchmark_row(eval_cfg, results)
    row.update({"model": name, "train_budget_s": args.seconds, "train_wall_s": wall,
                "train_steps": steps, "train_images": steps * cfg.SOLVER.IMS_PER_BATCH})
    return row


def _last_step(out_dir: str) -> int:
    step = 0
    with open(os.path.join(out_dir, "metrics.jsonl")) as f:
        for line in f:
            step = max(step, json.loads(line)["step"])
    return step


def _print_table(rows: List[Dict[str, object]]) -> None:
    cols = ["model", "train_steps", "train_images", "box_AP", "mask_AP", "params_M",
            "s_per_img", "img_per_s", "device"]
    from effdetmask.utils.table import format_table

    print(format_table(rows, cols))
    if len(rows) == 2 and rows[0]["s_per_img"] and rows[1]["s_per_img"]:
        print(f"inference speed-up of {rows[0]['model']} over {rows[1]['model']}: "
              f"{rows[1]['s_per_img'] / rows[0]['s_per_img']:.2f}x")


def main() -> List[Dict[str, object]]:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=600, help="training budget per model (s)")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--num-gpus", type=int, default=0)
    parser.add_argument("--output-dir", default="./output/same_budget")
    parser.add_argument("--output", default="", help="JSON file for the rows")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE overrides for both")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    rows = [_run_one(name, args) for name in args.models]
    _print_table(rows)
    if args.output:
        os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
        with open(args.output, "w") as f:
            json.dump({"argv": sys.argv[1:], "rows": rows}, f, indent=2)
    return rows


if __name__ == "__main__":
    main()
