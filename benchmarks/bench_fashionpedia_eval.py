#!/usr/bin/env python3
"""Time of Fashionpedia's AP (IoU + attribute F1, ``evaluate_fashionpedia_json``) against the
project's COCO evaluator (``evaluate_coco_json``, both backends) on the same results.

Ground truth: the generated dataset; results: ``perturbed_results`` of it (misses, duplicates,
wrong classes, noisy masks and attributes, false positives). Each figure is the best of
``--repeats`` runs, from dicts in memory, including the evaluators' own loading of them.

    python benchmarks/bench_fashionpedia_eval.py --num-images 200 \\
        --output benchmarks/results/fashionpedia_eval_cpu.json [--official]

``--official`` also times FPEval (PyPI ``fashionpedia`` 1.1; slow, and needs the ``np.float``
alias that numpy >= 1.24 removed, restored here while it runs).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import logging
import os
import platform
import sys
import tempfile
import time
from typing import Any, Callable, Dict, List, Tuple

import numpy as np

from effdetmask.data.synthetic import ensure_fashion_synth
from effdetmask.evaluation import evaluate_coco_json, evaluate_fashionpedia_json
from effdetmask.evaluation.backends import complete_gt_dataset
from effdetmask.evaluation.fake_results import perturbed_results


def _best(fn: Callable[[], Any], repeats: int) -> Tuple[float, float]:
    """Best wall-clock and best CPU (process) seconds of ``repeats`` calls. On a shared machine
    the CPU time is the steadier figure: the wall clock also counts time spent waiting."""
    wall, cpu = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return min(wall), min(cpu)


def _official(gt: Dict[str, Any], results: List[Dict[str, Any]], iou_type: str) -> None:
    from fashionpedia.fp import Fashionpedia
    from fashionpedia.fp_eval import FPEval

    np.float = float  # removed in numpy 1.24; FPEval.accumulate uses it
    res = copy.deepcopy(results)
    if iou_type == "segm":
        for r in res:
            r.pop("bbox", None)
    with contextlib.redirect_stdout(io.StringIO()):
        fp_gt = Fashionpedia()
        fp_gt.dataset = copy.deepcopy(complete_gt_dataset(gt))
        fp_gt.createIndex()
        FPEval(fp_gt, fp_gt.loadRes(res), iou_type).run()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--num-images", type=int, default=200, help="generated images")
    p.add_argument("--image-size", type=int, default=512, help="long side of generated images")
    p.add_argument("--repeats", type=int, default=5, help="runs per figure (best is kept)")
    p.add_argument("--root", default="", help="where the generated split lives (default: temp)")
    p.add_argument("--official", action="store_true", help="also time FPEval (slow)")
    p.add_argument("--output", default="", help="write the rows as JSON here")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        path = ensure_fashion_synth(args.root or tmp, "val", args.num_images, args.image_size, 0)
        with open(path, "r", encoding="utf-8") as f:
            gt = json.load(f)
    results = perturbed_results(gt, seed=0)
    rows = []
    for iou_types in (("bbox",), ("segm",), ("bbox", "segm")):
        row: Dict[str, Any] = {"iou_types": "+".join(iou_types), "images": len(gt["images"]),
                               "gt_instances": len(gt["annotations"]),
                               "detections": len(results)}
        row["fashionpedia_wall_s"], row["fashionpedia_cpu_s"] = _best(
            lambda: evaluate_fashionpedia_json(gt, results, iou_types), args.repeats)
        for backend in ("faster_coco_eval", "pycocotools"):
            row[f"{backend}_wall_s"], row[f"{backend}_cpu_s"] = _best(
                lambda: evaluate_coco_json(gt, results, iou_types, backend), args.repeats)
            for clock in ("wall", "cpu"):
                row[f"ratio_{clock}_vs_{backend}"] = (row[f"fashionpedia_{clock}_s"]
                                                      / row[f"{backend}_{clock}_s"])
        if args.official:
            row["fpeval_wall_s"], row["fpeval_cpu_s"] = _best(
                lambda: [_official(gt, results, t) for t in iou_types], 1)
        rows.append(row)
    print(f"{len(gt['images'])} images, {len(gt['annotations'])} ground truths, "
          f"{len(results)} detections; best of {args.repeats} (seconds; ratio = ours / COCO)")
    cols = [c for c in rows[0] if c not in ("images", "gt_instances", "detections")]
    print(" | ".join([f"{'iou_types':>9}"] + [f"{c.replace('_s', ''):>22}" for c in cols[1:]]))
    for r in rows:
        print(" | ".join([f"{r['iou_types']:>9}"] + [f"{r[c]:>22.3f}" for c in cols[1:]]))
    if args.output:
        with open(args.output, "w", encoding="utf-8") as f:
            json.dump({"command": "python " + " ".join([os.path.relpath(sys.argv[0])]
                                                       + sys.argv[1:]),
                       "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
                       "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
