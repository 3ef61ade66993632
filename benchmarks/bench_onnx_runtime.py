#!/usr/bin/env python3
"""onnxruntime session settings x fp32/int8 graphs: ms per image of ``OnnxPredictor`` on CPU.

Exports d0 and d0_fast (random init, ``RANDOM_INIT_OPTS``) at ``--size``, with exactly
``--detections`` detections per image (score threshold 0, ``MAX_DETECTIONS`` = N, as
``bench_inference.py`` does), quantizes each to int8 (``effdetmask.export.quantize``, calibrated on
``--calibration-images`` images of ``fashion_synth_train`` generated at ``--size``), and times
every combination of graph optimization level, intra-op threads, CPU memory arena and execution
mode. The settings of one graph are timed interleaved (``effdetmask.utils.timing``); medians.

Random init leaves activations that vanish with depth, so before export every BatchNorm is
re-estimated on the calibration images and the prediction convs set to spread scores and keep
boxes near their anchors (``condition_random_model``): the int8 graph then quantizes
unit-variance activations, as it would for a trained model, and N detections survive.
``--int8-variants`` adds int8 graphs with int8 activations (s8s8) and with the class/box
prediction convs kept float, timed with the default settings, with their output error against
fp32 (sorted-score and box differences; only a proxy on random weights).

    nice -n 19 python benchmarks/bench_onnx_runtime.py --int8-variants \\
        --output benchmarks/results/cpu_onnxruntime_settings.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import platform
import sys
import tempfile
from typing import Any, Dict, List

import numpy as np
import onnxruntime as ort
import torch

from effdetmask.config import RANDOM_INIT_OPTS, setup_cfg
from effdetmask.export import OnnxPredictor, export_onnx
from effdetmask.export.quantize import (
    HEAD_PREDICT_CONVS,
    calibration_images,
    condition_random_model,
    quantize_onnx_int8,
)
from effdetmask.modeling import build_model
from effdetmask.modeling.fold_bn import fold_batch_norm
from effdetmask.utils.table import format_table
from effdetmask.utils.timing import time_callables

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
CONFIGS = {"d0": "configs/effdet_d0.yaml", "d0_fast": "configs/effdet_d0_fast.yaml"}
SETTINGS = {"graph_optimization": ("basic", "extended", "all"), "threads": (1, 2),
            "cpu_mem_arena": (True, False), "parallel": (False, True)}
logger = logging.getLogger("bench_onnx_runtime")


def model_cfg(args: argparse.Namespace, name: str) -> Any:
    n = str(args.detections)
    return setup_cfg(os.path.join(ROOT, CONFIGS[name]), [
        *RANDOM_INIT_OPTS, "INPUT.SIZE", str(args.size), "TEST.SCORE_THRESH", "0.0",
        "TEST.DETECTIONS_PER_IMAGE", n, "MODEL.EFFDET_HEAD.MAX_DETECTIONS", n,
        "DATASETS.SYNTH.NUM_TRAIN", str(args.calibration_images),
        "DATASETS.SYNTH.IMAGE_SIZE", str(args.size)])


def export_graphs(args: argparse.Namespace, name: str, out_dir: str) -> Dict[str, Any]:
    """fp32 and int8 graphs of one model: ``{"cfg", "calibration", "graphs": {label: path}}``."""
    cfg = model_cfg(args, name)
    cal = calibration_images(cfg, "fashion_synth_train", args.calibration_images)
    torch.manual_seed(0)
    model = build_model(cfg, device="cpu")
    condition_random_model(model, cal)
    fold_batch_norm(model)
    fp32 = export_onnx(model.eval(), os.path.join(out_dir, f"{name}.onnx"), args.size)
    graphs = {"fp32": fp32,
              "int8": quantize_onnx_int8(fp32, os.path.join(out_dir, f"{name}.int8.onnx"), cal)}
    if args.int8_variants:
        graphs["int8_s8s8"] = quantize_onnx_int8(
            fp32, os.path.join(out_dir, f"{name}.s8.onnx"), cal, activation_type="QInt8")
        graphs["int8_float_predict"] = quantize_onnx_int8(
            fp32, os.path.join(out_dir, f"{name}.fp_predict.onnx"), cal, exclude=HEAD_PREDICT_CONVS)
    return {"cfg": cfg, "calibration": cal, "graphs": graphs}


def output_error(ref: OnnxPredictor, ours: OnnxPredictor, images: List[np.ndarray]
                 ) -> Dict[str, float]:
    """Max over ``images`` of |sorted score diff| and, for ``ours``' top-10 detections matched
    to the closest same-class box of ``ref``, the median L-inf box distance (px)."""
    score, box = 0.0, []
    for image in images:
        a, b = ref.run(image), ours.run(image)
        score = max(score, float(np.abs(np.sort(a["scores"][0]) - np.sort(b["scores"][0])).max()))
        dist = np.abs(b["boxes"][0, :10, None] - a["boxes"][0][None]).max(-1)
        dist = np.where(b["classes"][0, :10, None] == a["classes"][0][None], dist, np.inf)
        box.append(float(np.median(dist.min(1))))
    return {"max_sorted_score_diff": score, "median_top10_box_dist_px": float(np.median(box))}


def time_graph(args, model: str, label: str, path: str, batch: List[dict],
               grid: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    preds = {json.dumps(s, sort_keys=True): OnnxPredictor(
        path, score_thresh=0.0, detections_per_image=args.detections, **s) for s in grid}
    counts = {k: len(p(batch)[0]["instances"]["scores"]) for k, p in preds.items()}
    timing = time_callables({k: (lambda p=p: p(batch)) for k, p in preds.items()},
                            images_per_call={k: 1 for k in preds},
                            devices={k: torch.device("cpu") for k in preds},
                            warmup=args.warmup, repeats=args.repeats)
    return [{"model": model, "graph": label, **json.loads(k), "ms_per_img": 1e3 * t["s_per_img"],
             "min_ms_per_img": 1e3 * t["min_s_per_img"], "repeats": t["repeats"],
             "detections_per_img": counts[k], "input_size": args.size} for k, t in timing.items()]


def main(args: argparse.Namespace) -> Dict[str, Any]:
    torch.set_num_threads(2)
    grid = [dict(zip(SETTINGS, v)) for v in itertools.product(*SETTINGS.values())]
    default = {"graph_optimization": "all", "threads": 2, "cpu_mem_arena": True,
               "parallel": False}
    rows, errors = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            out = export_graphs(args, name, tmp)
            image = out["calibration"][0]
            batch = [{"image": torch.from_numpy(image[0]), "image_id": 0, "height": args.size,
                      "width": args.size, "scale": 1.0}]
            for label, path in out["graphs"].items():
                logger.warning("timing %s %s", name, label)
                settings = grid if label in ("fp32", "int8") else [default]
                rows += time_graph(args, name, label, path, batch, settings)
                if label != "fp32":
                    errors[f"{name}:{label}"] = output_error(
                        OnnxPredictor(out["graphs"]["fp32"]), OnnxPredictor(path),
                        out["calibration"][:4])
    return {"rows": rows, "int8_error_vs_fp32": errors}


def print_table(rows: List[Dict[str, Any]]) -> None:
    cols = ["model", "graph", "graph_optimization", "threads", "cpu_mem_arena", "parallel",
            "ms_per_img", "min_ms_per_img", "detections_per_img"]

    def fmt(v: Any) -> str:
        return f"{v:.1f}" if isinstance(v, float) else str(v)

    rows = sorted(rows, key=lambda r: (r["model"], r["graph"], r["threads"], r["ms_per_img"]))
    print(format_table(rows, cols, fmt))


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", default=list(CONFIGS), choices=sorted(CONFIGS))
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--detections", type=int, default=100)
    p.add_argument("--calibration-images", type=int, default=16)
    p.add_argument("--int8-variants", action="store_true",
                   help="also time s8s8 and float-prediction-conv int8 graphs (default settings)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--output", default="", help="JSON file for the rows")
    return p.parse_args(argv)


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    arguments = parse_args()
    result = main(arguments)
    print_table(result["rows"])
    print(json.dumps(result["int8_error_vs_fp32"], indent=1))
    if arguments.output:
        os.makedirs(os.path.dirname(os.path.abspath(arguments.output)), exist_ok=True)
        with open(arguments.output, "w") as f:
            json.dump({"command": " ".join(sys.argv), "torch": torch.__version__,
                       "onnxruntime": ort.__version__,
                       "cpu": f"{platform.processor() or platform.machine()}, "
                              f"{os.cpu_count()} cores (shared, nice 19)",
                       "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), **result}, f,
                      indent=2)
