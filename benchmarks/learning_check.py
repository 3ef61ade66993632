#!/usr/bin/env python3
"""Learning per step and per start, several seeds: the fused model against torchvision's Mask R-CNN
(a known-good implementation), and pretrained against random starts.

Every model trains the same number of optimiser steps on the same data, input size and batch
size, evaluated the same way (COCO box and mask AP, percent); only the model (and its own start)
differs. Each (model, seed) is one ``train_net`` run; the table gives mean and spread over seeds.

    # per-step learning check, both from random init (the baseline has no offline ImageNet start)
    python benchmarks/learning_check.py --data synth_fit --models d0 baseline --seeds 0 1 2 \
        --steps 100 --size 128 --batch 4 --output benchmarks/results/learning_check_cpu.json
    # pretrained against random, same budget, on the generated data and on the real sample
    python benchmarks/learning_check.py --models lite0 lite0_random --seeds 0 1 2 --steps 150 \
        --output benchmarks/results/pretrained_vs_random_synth_cpu.json
    python benchmarks/learning_check.py --data real --models lite0 lite0_random --seeds 0 1 2 \
        --steps 60 --size 256 --output benchmarks/results/pretrained_vs_random_real_cpu.json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Dict, List

from effdetmask.config import RANDOM_INIT_OPTS
from effdetmask.utils.table import format_table

REPO = Path(__file__).resolve().parents[1]
QUICK = REPO / "configs" / "quick_schedules"

# name -> (config, overrides): each model's own recipe; the shared conditions come from DATA
MODELS = {
    "d0": (QUICK / "effdet_d0_synth_cpu.yaml", []),
    "baseline": (REPO / "configs" / "mask_rcnn_R_50_FPN.yaml",
                 ["SOLVER.BASE_LR", "0.01", "SOLVER.LR_SCHEDULER", "cosine",
                  "SOLVER.WARMUP_ITERS", "20", "SOLVER.WEIGHT_DECAY", "0.0001"]),
    "lite0": (QUICK / "effdet_lite0_synth_cpu.yaml", []),
    "lite0_random": (QUICK / "effdet_lite0_synth_cpu.yaml", list(RANDOM_INIT_OPTS)),
}
# the conditions every model shares: data, evaluation, and what keeps runs comparable
DATA = {
    "synth": ["DATASETS.SYNTH.NUM_TRAIN", "200", "DATASETS.SYNTH.NUM_VAL", "40",
              "DATASETS.TRAIN", "('fashion_synth_train',)", "DATASETS.TEST",
              "('fashion_synth_val',)"],
    # 8 generated images, trained and evaluated on: how fast each model fits (AP moves early)
    "synth_fit": ["DATASETS.SYNTH.NUM_TRAIN", "8", "DATASETS.SYNTH.NUM_VAL", "8",
                  "DATASETS.TRAIN", "('fashion_synth_train',)", "DATASETS.TEST",
                  "('fashion_synth_train',)", "INPUT.HFLIP_PROB", "0.0",
                  "INPUT.GRAYSCALE_PROB", "0.0"],
    # the 3 real sample photos (../shared/data), trained and evaluated on: fitting speed
    "real": ["DATASETS.ROOT", str(REPO.parent / "shared" / "data"), "DATASETS.TRAIN",
             "('fashionpedia_api_sample', 'imat2020_sample')", "DATASETS.TEST",
             "('fashionpedia_api_sample', 'imat2020_sample')", "INPUT.HFLIP_PROB", "0.0",
             "INPUT.GRAYSCALE_PROB", "0.0"],
}


def _run_one(name: str, seed: int, args: argparse.Namespace) -> Dict[str, object]:
    from effdetmask.config import setup_cfg
    from effdetmask.engine.defaults import LaunchSpec
    from effdetmask.engine.trainer import train

    config, own = MODELS[name]
    out_dir = os.path.join(args.output_dir, f"{args.data}_{name}_seed{seed}")
    shared = DATA[args.data] + [
        "INPUT.SIZE", str(args.size), "DATASETS.SYNTH.IMAGE_SIZE", str(args.size),
        "SOLVER.IMS_PER_BATCH", str(args.batch), "SOLVER.ACCUMULATE_GRAD_BATCHES", "1",
        "SOLVER.MAX_ITER", str(args.steps), "SOLVER.CHECKPOINT_PERIOD", "1000000",
        "TEST.IMS_PER_BATCH", str(args.batch), "TEST.VIS_IMAGES", "0", "TEST.EVAL_PERIOD", "0",
        "DATALOADER.NUM_WORKERS", "1", "SEED", str(seed), "OUTPUT_DIR", out_dir]
    cfg = setup_cfg(str(config), own + shared + args.opts)
    launch = LaunchSpec(accelerator="cpu", devices=1, num_nodes=1, node_rank=0,
                        master_addr="127.0.0.1", master_port=29521)
    start = time.monotonic()
    results = train(cfg, launch)
    wall = time.monotonic() - start
    row: Dict[str, object] = {"model": name, "seed": seed, "steps": args.steps,
                              "train_and_eval_s": round(wall, 1)}
    for task, key in (("bbox", "box"), ("segm", "mask")):
        for metric in ("AP", "AP50"):
            values = [r.get(task, {}).get(metric) for r in results.values()]
            values = [v for v in values if v is not None]
            row[f"{key}_{metric}"] = sum(values) / len(values) if values else None
    return row


def summarize(rows: List[Dict[str, object]]) -> List[Dict[str, object]]:
    """Mean and (sample) standard deviation over seeds, per model."""
    out = []
    for name in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == name]
        summary: Dict[str, object] = {"model": name, "seeds": len(mine)}
        for key in ("box_AP", "box_AP50", "mask_AP", "mask_AP50", "train_and_eval_s"):
            values = [float(r[key]) for r in mine if r.get(key) is not None]
            summary[key] = statistics.mean(values) if values else None
            summary[f"{key}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
        out.append(summary)
    return out


def _print_table(summaries: List[Dict[str, object]]) -> None:
    cols = ["model", "seeds", "box_AP", "box_AP50", "mask_AP", "mask_AP50", "train_and_eval_s"]
    # a cell shows mean ± std, so it is formatted with its row before the table lays it out
    cells = [{c: _cell(s, c) for c in cols} for s in summaries]
    print(format_table(cells, cols, str))


def _cell(summary: Dict[str, object], col: str) -> str:
    value = summary.get(col)
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.1f} ± {summary.get(f'{col}_std', 0.0):.1f}"
    return str(value)


def main() -> List[Dict[str, object]]:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["d0", "baseline"], choices=list(MODELS))
    parser.add_argument("--data", default="synth", choices=list(DATA))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=40, help="optimiser steps per run")
    parser.add_argument("--size", type=int, default=256, help="INPUT.SIZE (multiple of 128)")
    parser.add_argument("--batch", type=int, default=8, help="images per step")
    parser.add_argument("--output-dir", default="./output/learning_check")
    parser.add_argument("--output", default="", help="JSON file for runs and summary")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE overrides for all")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    rows = []
    for seed in args.seeds:  # seeds outermost: a cut-short run still compares the models
        for name in args.models:
            rows.append(_run_one(name, seed, args))
            print(json.dumps(rows[-1]), flush=True)
            if args.output:  # after every run: a run cut short keeps what it measured
                _write_json(args.output, rows)
    summaries = summarize(rows)
    _print_table(summaries)
    return summaries


def _write_json(path: str, rows: List[Dict[str, object]]) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump({"argv": sys.argv[1:], "runs": rows, "summary": summarize(rows)}, f, indent=2)


if __name__ == "__main__":
    main()
