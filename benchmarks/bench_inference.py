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

Precisions: every (model, precision) of ``--precisions`` is timed in the same interleaved round,
so fp32, bf16 autocast and onnxruntime fp32 / int8 compare directly; the baseline runs in
``--baseline-precisions`` (default fp32) and every speed-up is against its first.

    python benchmarks/bench_inference.py --models d0 d0_fast baseline --threads 2 --floor \\
        --precisions fp32 bf16 onnx-fp32 onnx-int8 --output benchmarks/results/cpu_2threads.json
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
from effdetmask.utils.table import format_table
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


# PyTorch precisions (autocast dtype) and onnxruntime ones (CPU only, EffDetMask models only)
TORCH_PRECISIONS = {"fp32": "", "bf16": "bf16", "fp16": "fp16"}
ONNX_PRECISIONS = ("onnx-fp32", "onnx-int8")


def run_key(name: str, precision: str) -> str:
    """Timing key of one (model, precision): ``d0`` for fp32, ``d0@bf16`` otherwise."""
    return name if precision == "fp32" else f"{name}@{precision}"


def build_runs(args, device: str, batch: List[dict]) -> Dict[str, Dict[str, Any]]:
    """key -> {"fn", "name", "precision", ...}: every callable timed together for one setting.

    One model per name serves all its PyTorch precisions (autocast per call); the onnxruntime
    precisions export it (int8: calibrated on ``--calibration-images`` of
    ``--calibration-dataset``; with ``--condition-random`` a random-init model is first given
    trained-like activations by :func:`effdetmask.export.quantize.condition_random_model`). The
    baseline is timed in ``--baseline-precisions`` only."""
    runs: Dict[str, Dict[str, Any]] = {}
    dev = torch.device(device)
    gpu_batch = [{**x, "image": x["image"].to(dev)} for x in batch]
    for name in run_names(args):
        config = CONFIGS[name.removesuffix(ATTRIBUTES_SUFFIX)]
        cfg = setup_cfg(os.path.join(ROOT, config), model_opts(args, name, device))
        model = build_model(cfg, inference_only=True)
        precisions = args.baseline_precisions if name == "baseline" else args.precisions
        for precision in [p for p in precisions if p in TORCH_PRECISIONS]:
            amp = TORCH_PRECISIONS[precision]

            def fn(model=model, amp=amp) -> Any:
                with inference_context(dev, amp):
                    return model(gpu_batch)

            runs[run_key(name, precision)] = {"fn": fn, "name": name, "precision": precision,
                                              "cfg": cfg}
            if args.floor and name != "baseline" and not name.endswith(ATTRIBUTES_SUFFIX):
                images = normalize_images(gpu_batch, model.pixel_mean, model.pixel_std)
                if cfg.MODEL.CHANNELS_LAST:
                    images = images.contiguous(memory_format=torch.channels_last)

                def floor(model=model, images=images, amp=amp) -> Any:
                    with inference_context(dev, amp):
                        return model.backbone(images)

                runs[run_key(f"{name}:floor", precision)] = {
                    "fn": floor, "name": f"{name}:floor", "precision": precision, "cfg": cfg}
        onnx = [p for p in precisions if p in ONNX_PRECISIONS] if name != "baseline" else []
        if onnx and device == "cpu":
            for precision, predict in onnx_runs(args, name, cfg, onnx).items():
                runs[run_key(name, precision)] = {"fn": predict, "name": name,
                                                  "precision": precision, "cfg": cfg}
    return runs


def onnx_runs(args, name: str, cfg, precisions: List[str]) -> Dict[str, Callable[[], Any]]:
    """onnxruntime callables of ``name`` for ``precisions`` (``onnx-fp32`` / ``onnx-int8``)."""
    from effdetmask.export import OnnxPredictor, export_onnx
    from effdetmask.export.quantize import (
        calibration_images,
        condition_random_model,
        quantize_onnx_int8,
    )

    folder = tempfile.mkdtemp(prefix="bench_onnx_")
    calib_cfg = cfg.clone()  # a generated calibration split of just the images needed, at S
    calib_cfg.merge_from_list(["DATASETS.SYNTH.NUM_TRAIN", str(args.calibration_images),
                               "DATASETS.SYNTH.IMAGE_SIZE", str(args.size)])
    calib = calibration_images(calib_cfg, args.calibration_dataset, args.calibration_images)
    torch.manual_seed(0)
    model = build_model(cfg, device="cpu")  # unfolded: conditioning resets BatchNorm statistics
    if args.condition_random and not cfg.MODEL.WEIGHTS:
        condition_random_model(model, calib)
    fp32 = export_onnx(model.eval(), os.path.join(folder, f"{name}.onnx"), cfg.INPUT.SIZE)
    paths = {"onnx-fp32": fp32}
    if "onnx-int8" in precisions:
        paths["onnx-int8"] = quantize_onnx_int8(fp32, os.path.join(folder, f"{name}.int8.onnx"),
                                                calib)
    batch = make_batch(args.current_bs, args.size, args.orig_size or args.size)
    out = {}
    for precision in precisions:
        pred = OnnxPredictor(paths[precision], score_thresh=cfg.TEST.SCORE_THRESH,
                             threads=args.threads,
                             detections_per_image=cfg.TEST.DETECTIONS_PER_IMAGE,
                             attribute_score_thresh=cfg.MODEL.ROI_ATTRIBUTE_HEAD.SCORE_THRESH)
        out[precision] = lambda pred=pred: pred(batch)
    return out


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
            batch = make_batch(bs, args.size, args.orig_size or args.size)
            runs = build_runs(args, device, batch)
            counts = {k: count_detections(r["fn"]) for k, r in runs.items()}
            timing = time_callables({k: r["fn"] for k, r in runs.items()},
                                    images_per_call={k: bs for k in runs},
                                    devices={k: torch.device(device) for k in runs},
                                    warmup=args.warmup, repeats=args.repeats)
            base = timing.get(run_key("baseline", args.baseline_precisions[0]), {})
            base = base.get("s_per_img")
            for key, t in timing.items():
                run = runs[key]
                floor = timing.get(run_key(f"{run['name']}:floor", run["precision"]), {})
                floor = floor.get("s_per_img")
                rows.append({
                    "model": run["name"], "device": card, "batch_size": bs,
                    "precision": run["precision"],
                    "ms_per_img": 1e3 * t["s_per_img"], "img_per_s": t["img_per_s"],
                    "speedup_vs_baseline": base / t["s_per_img"] if base else None,
                    "baseline_precision": args.baseline_precisions[0],
                    "floor_ms_per_img": 1e3 * floor if floor else None,
                    "pipeline_over_floor": t["img_per_s"] * floor if floor else None,
                    "detections_per_img": counts[key], "repeats": t["repeats"],
                    "input_size": args.size, "opts": model_opts(args, run["name"], device),
                })
            del runs
    return rows


def print_table(rows: List[Dict[str, Any]]) -> None:
    print(format_table(rows, ["model", "device", "batch_size", "precision", "ms_per_img",
                              "img_per_s", "speedup_vs_baseline", "pipeline_over_floor",
                              "detections_per_img"]))


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", default=["d0", "baseline"], choices=sorted(CONFIGS))
    p.add_argument("--devices", nargs="+", default=["cpu"])
    p.add_argument("--batch-sizes", nargs="+", type=int, default=[1])
    p.add_argument("--precisions", nargs="+", default=["fp32"],
                   choices=[*TORCH_PRECISIONS, *ONNX_PRECISIONS],
                   help="EffDetMask precisions, all timed in one interleaved round: PyTorch "
                        "fp32/bf16/fp16 (autocast), onnxruntime onnx-fp32/onnx-int8 (CPU)")
    p.add_argument("--baseline-precisions", nargs="+", default=["fp32"],
                   choices=list(TORCH_PRECISIONS),
                   help="the baseline's; speed-ups are against the first")
    p.add_argument("--calibration-dataset", default="fashion_synth_train",
                   help="int8 calibration images (a registered dataset)")
    p.add_argument("--calibration-images", type=int, default=16)
    p.add_argument("--condition-random", action="store_true",
                   help="give a random-init model trained-like activations before the ONNX "
                        "export (effdetmask.export.quantize.condition_random_model)")
    p.add_argument("--detections", type=int, default=100, help="fixed N per image; 0 = realistic")
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--orig-size", type=int, default=0, help="original image side (0 = --size)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--floor", action="store_true", help="also time backbone+BiFPN alone")
    p.add_argument("--onnx", action="store_true", help="shorthand for adding onnx-fp32")
    p.add_argument("--attribute-head", default="config", choices=["config", "on", "off", "both"],
                   help="the attribute head as the configs say, on, off, or both (twin rows)")
    p.add_argument("--output", default="", help="JSON file for the rows")
    p.add_argument("--opts", nargs="*", default=[], help="KEY VALUE overrides for EffDetMask")
    p.add_argument("--baseline-opts", nargs="*", default=[], help="KEY VALUE for the baseline")
    args = p.parse_args(argv)
    if args.onnx and "onnx-fp32" not in args.precisions:
        args.precisions.append("onnx-fp32")
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
