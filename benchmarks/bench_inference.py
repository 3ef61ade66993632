#!/usr/bin/env python3
"""Inference speed: models x devices x batch sizes x precisions, the baseline in the same run.

Every configuration of one (device, batch size, precision) is timed *interleaved* with the
baseline (``effdetmask.utils.timing``), so the ratios compare like with like on a shared machine.
Masks are pasted at image resolution inside the timed call.

Detection count: ``--detections N`` (default 100) forces exactly N instances per image even with
random weights: score threshold 0 and ``DETECTIONS_PER_IMAGE = MAX_DETECTIONS = N`` for EffDetMask
(its 5000 pre-NMS candidates leave far more than N after per-class NMS), ``box_score_thresh 0`` and
``box_detections_per_img N`` for the baseline (1000 RPN proposals x 46 class-specific boxes); the
original image equals the input (scale 1) so no box lies on letterbox padding. The measured count
is checked and written to the JSON. ``--detections 0`` = realistic mode: ``TEST.SCORE_THRESH``
from the config (0.05), whatever survives.

    python benchmarks/bench_inference.py --models d0 baseline --batch-sizes 1 --threads 2 \\
        --floor --onnx --output benchmarks/results/cpu_2threads.json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import tempfile
from typing import Any, Callable, Dict, List

import torch

from effdetmask.config import RANDOM_INIT_OPTS, setup_cfg
from effdetmask.modeling import build_model
from effdetmask.modeling.inference import inference_context
from effdetmask.modeling.meta_arch import normalize_images
from effdetmask.utils.timing import time_callables

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
CONFIGS = {"d0": "configs/effdet_d0.yaml", "d0_fast": "configs/effdet_d0_fast.yaml",
           "d1": "configs/effdet_d1.yaml", "d2": "configs/effdet_d2.yaml",
           "lite0": "configs/effdet_lite0.yaml", "lite1": "configs/effdet_lite1.yaml",
           "lite2": "configs/effdet_lite2.yaml", "baseline": "configs/mask_rcnn_R_50_FPN.yaml"}
logger = logging.getLogger("bench_inference")


def make_batch(batch_size: int, size: int, orig: int, seed: int = 0) -> List[Dict[str, Any]]:
    """Mapper outputs of random uint8 images; originals ``orig x orig`` letterboxed to ``size``."""
    g = torch.Generator().manual_seed(seed)
    return [{"image": torch.randint(0, 256, (3, size, size), dtype=torch.uint8, generator=g),
             "image_id": i, "height": orig, "width": orig, "scale": size / orig}
            for i in range(batch_size)]


# the attribute head's cost: with --attribute-head both, every EffDetMask model is timed twice,
# as "<name>" with the head off and "<name>+attributes" with it on, in the same interleaved run
ATTRIBUTES_SUFFIX = "+attributes"


def run_names(args: argparse.Namespace) -> List[str]:
    """The timed model names: ``--models``, plus ``<name>+attributes`` twins where asked."""
    names = list(args.models)
    if args.attribute_head == "both":
        names += [n + ATTRIBUTES_SUFFIX for n in args.models if n != "baseline"]
    return names


def model_opts(args: argparse.Namespace, name: str, device: str) -> List[str]:
    opts = [*RANDOM_INIT_OPTS, "INPUT.SIZE", str(args.size), "MODEL.DEVICE", device]
    if args.attribute_head != "config":
        on = name.endswith(ATTRIBUTES_SUFFIX) or args.attribute_head == "on"
        opts += ["MODEL.ROI_ATTRIBUTE_HEAD.ENABLED", str(on)]
    if args.detections > 0:
        n = str(args.detections)
        opts += ["TEST.SCORE_THRESH", "0.0", "TEST.DETECTIONS_PER_IMAGE", n]
        if name != "baseline":
            opts += ["MODEL.EFFDET_HEAD.MAX_DETECTIONS", n]
    return opts + (list(args.opts) if name != "baseline" else list(args.baseline_opts))


def build_runs(args, device: str, batch: List[dict], amp: str) -> Dict[str, Dict[str, Any]]:
    """name -> {"fn", "model", ...}: the callables timed together for one setting."""
    runs: Dict[str, Dict[str, Any]] = {}
    dev = torch.device(device)
    gpu_batch = [{**x, "image": x["image"].to(dev)} for x in batch]
    for name in run_names(args):
        config = CONFIGS[name.removesuffix(ATTRIBUTES_SUFFIX)]
        cfg = setup_cfg(os.path.join(ROOT, config), model_opts(args, name, device))
        model = build_model(cfg, inference_only=True)

        def fn(model=model) -> Any:
            with inference_context(dev, amp):
                return model(gpu_batch)

        runs[name] = {"fn": fn, "model": model, "cfg": cfg}
        if args.floor and name != "baseline" and not name.endswith(ATTRIBUTES_SUFFIX):
            images = normalize_images(gpu_batch, model.pixel_mean, model.pixel_std)
            if cfg.MODEL.CHANNELS_LAST:
                images = images.contiguous(memory_format=torch.channels_last)

            def floor(model=model, images=images) -> Any:
                with inference_context(dev, amp):
                    return model.backbone(images)

            runs[f"{name}:floor"] = {"fn": floor, "model": model, "cfg": cfg}
    if args.onnx and device == "cpu" and not amp:
        for name in [n for n in run_names(args) if n != "baseline"]:
            runs[f"{name}:onnxruntime"] = onnx_run(args, name, runs[name])
    return runs


def onnx_run(args, name: str, run: Dict[str, Any]) -> Dict[str, Any]:
    from effdetmask.export import OnnxPredictor, export_onnx

    cfg = run["cfg"]
    path = os.path.join(tempfile.mkdtemp(), f"{name}.onnx")
    export_onnx(run["model"], path, cfg.INPUT.SIZE)
    pred = OnnxPredictor(path, score_thresh=cfg.TEST.SCORE_THRESH, threads=args.threads,
                         detections_per_image=cfg.TEST.DETECTIONS_PER_IMAGE,
                         attribute_score_thresh=cfg.MODEL.ROI_ATTRIBUTE_HEAD.SCORE_THRESH)
    batch = make_batch(args.current_bs, args.size, args.orig_size or args.size)
    return {"fn": lambda: pred(batch), "model": None, "cfg": cfg}


def count_detections(fn: Callable[[], Any]) -> float:
    with torch.inference_mode():
        out = fn()
    if isinstance(out, list):
        return sum(len(o["instances"]["scores"]) for o in out) / len(out)
    return float("nan")


def main(args: argparse.Namespace) -> List[Dict[str, Any]]:
    torch.set_num_threads(args.threads)
    rows = []
    for device in args.devices:
        if device.startswith("cuda") and not torch.cuda.is_available():
            logger.warning("no CUDA device: skipping %s", device)
            continue
        card = torch.cuda.get_device_name(device) if device.startswith("cuda") else (
            f"cpu {platform.processor() or platform.machine()}, {args.threads} threads")
        for bs in args.batch_sizes:
            args.current_bs = bs
            for precision in args.precisions:
                amp = "" if precision == "fp32" else precision
                batch = make_batch(bs, args.size, args.orig_size or args.size)
                runs = build_runs(args, device, batch, amp)
                counts = {n: count_detections(r["fn"]) for n, r in runs.items()}
                timing = time_callables({n: r["fn"] for n, r in runs.items()},
                                        images_per_call={n: bs for n in runs},
                                        devices={n: torch.device(device) for n in runs},
                                        warmup=args.warmup, repeats=args.repeats)
                base = timing.get("baseline", {}).get("s_per_img")
                for name, t in timing.items():
                    floor = timing.get(f"{name}:floor", {}).get("s_per_img")
                    rows.append({
                        "model": name, "device": card, "batch_size": bs, "precision": precision,
                        "ms_per_img": 1e3 * t["s_per_img"], "img_per_s": t["img_per_s"],
                        "speedup_vs_baseline": base / t["s_per_img"] if base else None,
                        "floor_ms_per_img": 1e3 * floor if floor else None,
                        "pipeline_over_floor": t["img_per_s"] * floor if floor else None,
                        "detections_per_img": counts[name], "repeats": t["repeats"],
                        "input_size": args.size, "opts": model_opts(args, name, device),
                    })
                del runs
    return rows


def print_table(rows: List[Dict[str, Any]]) -> None:
    cols = ["model", "device", "batch_size", "precision", "ms_per_img", "img_per_s",
            "speedup_vs_baseline", "pipeline_over_floor", "detections_per_img"]

    def fmt(v: Any) -> str:
        return "-" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)

    widths = [max(len(c), *(len(fmt(r[c])) for r in rows)) for c in cols]
    print(" | ".join(c.ljust(w) for c, w in zip(cols, widths)))
    print("-+-".join("-" * w for w in widths))
    for r in rows:
        print(" | ".join(fmt(r[c]).ljust(w) for c, w in zip(cols, widths)))


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", default=["d0", "baseline"], choices=sorted(CONFIGS))
    p.add_argument("--devices", nargs="+", default=["cpu"])
    p.add_argument("--batch-sizes", nargs="+", type=int, default=[1])
    p.add_argument("--precisions", nargs="+", default=["fp32"], choices=["fp32", "bf16", "fp16"])
    p.add_argument("--detections", type=int, default=100, help="fixed N per image; 0 = realistic")
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--orig-size", type=int, default=0, help="original image side (0 = --size)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--floor", action="store_true", help="also time backbone+BiFPN alone")
    p.add_argument("--onnx", action="store_true",
                   help="also time each EffDetMask model in onnxruntime (CPU, fp32)")
    p.add_argument("--attribute-head", default="config", choices=["config", "on", "off", "both"],
                   help="the attribute head as the configs say, on, off, or both (twin rows)")
    p.add_argument("--output", default="", help="JSON file for the rows")
    p.add_argument("--opts", nargs="*", default=[], help="KEY VALUE overrides for EffDetMask")
    p.add_argument("--baseline-opts", nargs="*", default=[], help="KEY VALUE for the baseline")
    args = p.parse_args(argv)
    if "baseline" not in args.models:
        args.models.append("baseline")  # ratios are only meaningful side by side
    return args


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    arguments = parse_args()
    result = main(arguments)
    print_table(result)
    if arguments.output:
        os.makedirs(os.path.dirname(os.path.abspath(arguments.output)), exist_ok=True)
        with open(arguments.output, "w") as f:
            json.dump({"command": " ".join(sys.argv), "torch": torch.__version__,
                       "rows": result}, f, indent=2)
