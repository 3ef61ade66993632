#!/usr/bin/env python3
"""Export the full EffDetMask (detections + 28x28 masks, dynamic batch) to ONNX.

    python tools/export_onnx.py --config-file configs/effdet_d0.yaml --output model.onnx \\
        [--opset 17] [--check] [--int8 --calibration-dataset NAME [--calibration-images 200]]
        [KEY VALUE ...]

The graph: ``images uint8 [B, 3, S, S]`` -> ``boxes [B, N, 4]`` (xyxy input pixels), ``scores
[B, N]`` (-1 = padding), ``classes [B, N]``, ``masks [B, N, 28, 28]`` probabilities, and with
MODEL.ROI_ATTRIBUTE_HEAD.ENABLED ``attribute_scores [B, N, 294]``. Pasting at the original
resolution: ``effdetmask.export.OnnxPredictor`` (the same code as the PyTorch model).
``--check`` runs onnxruntime on a random batch of 2 and prints the largest differences
(detections matched by score rank, ties by box).

``--int8`` also writes ``<stem>.int8.onnx`` next to ``--output``: static QDQ int8 convs
(``effdetmask.export.quantize``), calibrated on ``--calibration-images`` images of the registered
dataset ``--calibration-dataset`` mapped as at test time; ``--check`` then compares it with
PyTorch too (larger differences: int8 is an approximation).
"""

import argparse
import logging
import os

import torch

from effdetmask.config import setup_cfg
from effdetmask.export import export_onnx
from effdetmask.export.onnx import (
    EffDetMaskOnnxWrapper,
    OnnxPredictor,
    match_by_score,
    output_names,
)
from effdetmask.export.quantize import calibration_images, int8_path_for, quantize_onnx_int8
from effdetmask.modeling import build_model


def check(model: torch.nn.Module, path: str, size: int, score_tol: float = 1e-5) -> None:
    """Print per image how many detections match (score within ``score_tol``, same class, the
    closest box) and their largest box, mask and attribute differences."""
    print(f"{path} vs PyTorch:")
    images = torch.randint(0, 256, (2, 3, size, size), dtype=torch.uint8)
    ours = {k: torch.from_numpy(v) for k, v in OnnxPredictor(path).run(images.numpy()).items()}
    with torch.inference_mode():
        ref = dict(zip(output_names(model), EffDetMaskOnnxWrapper(model)(images)))
    for i in range(images.shape[0]):
        valid = ref["scores"][i] >= 0
        a = {k: v[i][valid] for k, v in ours.items()}
        b = {k: v[i][valid] for k, v in ref.items()}
        match = match_by_score(a["scores"], a["classes"], a["boxes"], b["scores"], b["classes"],
                               b["boxes"], score_tol=score_tol)
        ok = match >= 0
        if not ok.any():
            print(f"image {i}: none of {len(ok)} detections matched (score within {score_tol})")
            continue
        box = (a["boxes"][ok] - b["boxes"][match[ok]]).abs().max().item()
        mask = (a["masks"][ok] - b["masks"][match[ok]]).abs().max().item()
        attrs = ""
        if "attribute_scores" in a:
            diff = (a["attribute_scores"][ok] - b["attribute_scores"][match[ok]]).abs().max()
            attrs = f", max |attribute score diff| {diff.item():.3g}"
        print(f"image {i}: {int(ok.sum())}/{len(ok)} detections matched by score, "
              f"max |box diff| {box:.3g} px, max |mask prob diff| {mask:.3g}{attrs}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--output", required=True, help="path of the .onnx file")
    parser.add_argument("--opset", type=int, default=17)
    parser.add_argument("--check", action="store_true", help="compare onnxruntime with PyTorch")
    parser.add_argument("--int8", action="store_true",
                        help="also write a static int8 graph, <stem>.int8.onnx")
    parser.add_argument("--calibration-dataset", default="",
                        help="registered dataset whose images calibrate --int8 (required by it)")
    parser.add_argument("--calibration-images", type=int, default=200,
                        help="number of calibration images (default 200)")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    args = parser.parse_args()
    if args.int8 and not args.calibration_dataset:
        parser.error("--int8 needs --calibration-dataset NAME: a registered dataset (e.g. "
                     "fashionpedia_val, fashion_synth_val) whose images set the activation ranges")
    logging.basicConfig(level=logging.INFO)
    cfg = setup_cfg(args.config_file, args.opts)
    calibration = (calibration_images(cfg, args.calibration_dataset, args.calibration_images)
                   if args.int8 else None)  # before the export: a bad name fails fast
    model = build_model(cfg, device="cpu", inference_only=True)
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    export_onnx(model, args.output, cfg.INPUT.SIZE, opset=args.opset)
    print(f"fp32: {args.output}")
    if args.int8:
        int8 = quantize_onnx_int8(args.output, int8_path_for(args.output), calibration)
        print(f"int8: {int8}")
    if args.check:
        check(model, args.output, cfg.INPUT.SIZE)
        if args.int8:
            check(model, int8, cfg.INPUT.SIZE, score_tol=0.02)  # int8 moves scores


if __name__ == "__main__":
    main()
