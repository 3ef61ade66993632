#!/usr/bin/env python3
"""Where an EffDetMask image's time goes: each stage timed on its own, interleaved, median.

Stages of one forward at a fixed detection count (score threshold 0, N per image, original image =
input, so every stage sees exactly N boxes): backbone+BiFPN, class/box heads, padded detection
post-process (NMS), RoIAlign, mask head (convs, deconv, class-channel predictor), paste at image
resolution. The full forward and the baseline's are timed in the same round-robin.

    python benchmarks/profile_stages.py --threads 2 --detections 100 \\
        [--precision bf16] [--opts MODEL.ROI_MASK_HEAD.CONV_DIM 64] [--output stages.json]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Any, Dict

import torch
import torch.nn.functional as F

from effdetmask.config import RANDOM_INIT_OPTS, setup_cfg
from effdetmask.modeling import build_model
from effdetmask.modeling.inference import inference_context
from effdetmask.modeling.meta_arch import normalize_images
from effdetmask.modeling.paste import paste_masks_in_image
from effdetmask.utils.timing import time_callables

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_inference import CONFIGS, ROOT, make_batch  # noqa: E402


def stage_fns(args: argparse.Namespace) -> Dict[str, Any]:
    n = str(args.detections)
    fixed = [*RANDOM_INIT_OPTS, "INPUT.SIZE", str(args.size), "TEST.SCORE_THRESH", "0.0",
             "TEST.DETECTIONS_PER_IMAGE", n]
    cfg = setup_cfg(os.path.join(ROOT, CONFIGS[args.model]),
                    fixed + ["MODEL.EFFDET_HEAD.MAX_DETECTIONS", n, *args.opts])
    model = build_model(cfg, inference_only=True)
    base = build_model(setup_cfg(os.path.join(ROOT, CONFIGS["baseline"]), fixed),
                       inference_only=True)
    batch = make_batch(args.batch_size, args.size, args.size)
    dev = torch.device("cpu")
    amp = "" if args.precision == "fp32" else args.precision
    head = model.mask_head
    with torch.inference_mode(), inference_context(dev, amp):
        images = normalize_images(batch, model.pixel_mean, model.pixel_std)
        if cfg.MODEL.CHANNELS_LAST:
            images = images.contiguous(memory_format=torch.channels_last)
        feats = model.backbone(images)
        cls_out, box_out = model.proposal_generator.head_outputs(feats)
        det = model.proposal_generator.detect(cls_out, box_out)
        idx = torch.arange(args.batch_size)[:, None].expand_as(det["scores"]).reshape(-1, 1)
        rois = torch.cat([idx.float(), det["boxes"].reshape(-1, 4)], 1)
        classes = det["classes"].reshape(-1)
        levels = [feats[n] for n in head.in_features]
        pooled = head.pooler(levels, rois)
        probs = head.forward_rois(feats, rois, classes).float().sigmoid()

    def amp_ctx(fn):
        def run():
            with inference_context(dev, amp):
                return fn()
        return run

    fns = {
        "backbone+BiFPN": lambda: model.backbone(images),
        "class/box heads": lambda: model.proposal_generator.head_outputs(feats),
        "detection post-process": lambda: model.proposal_generator.detect(cls_out, box_out),
        "RoIAlign": lambda: head.pooler(levels, rois),
        "mask head convs+deconv": lambda: F.relu(head.deconv(head.convs(pooled))),
        "mask head (pool..logits)": lambda: head.forward_rois(feats, rois, classes),
        "paste": lambda: [paste_masks_in_image(p, b, args.size, args.size)
                          for p, b in zip(probs.split(args.detections),
                                          det["boxes"].reshape(-1, 4).split(args.detections))],
        f"{args.model} full": lambda: model(batch),
        "baseline full": lambda: base(batch),
    }
    fns = {k: amp_ctx(v) for k, v in fns.items()}
    params = sum(p.numel() for p in head.parameters())
    return {"fns": fns, "mask_head_params_M": params / 1e6, "opts": args.opts}


def main(args: argparse.Namespace) -> Dict[str, Any]:
    torch.set_num_threads(args.threads)
    built = stage_fns(args)
    names = list(built["fns"])
    timing = time_callables(built["fns"], images_per_call={k: args.batch_size for k in names},
                            devices={k: torch.device("cpu") for k in names},
                            warmup=args.warmup, repeats=args.repeats)
    rows = {k: 1e3 * v["s_per_img"] for k, v in timing.items()}
    print(f"{args.model}, {args.precision}, bs {args.batch_size}, {args.detections} detections, "
          f"{args.threads} threads, opts {args.opts}, mask head "
          f"{built['mask_head_params_M']:.2f}M params")
    for k, ms in rows.items():
        print(f"  {k:26s} {ms:9.1f} ms/img")
    print(f"  baseline / {args.model}: {rows['baseline full'] / rows[f'{args.model} full']:.2f}x")
    return {"command": " ".join(sys.argv), "ms_per_img": rows,
            "mask_head_params_M": built["mask_head_params_M"], "precision": args.precision,
            "threads": args.threads, "detections": args.detections, "opts": args.opts}


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="d0", choices=["d0", "d1", "d2"])
    p.add_argument("--detections", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--opts", nargs="*", default=[], help="KEY VALUE overrides for EffDetMask")
    p.add_argument("--output", default="")
    arguments = p.parse_args()
    result = main(arguments)
    if arguments.output:
        with open(arguments.output, "w") as f:
            json.dump(result, f, indent=2)
