#!/usr/bin/env python3
"""Export the full EffDetMask (detections + 28x28 masks, dynamic batch) to ONNX.

    python tools/export_onnx.py --config-file configs/effdet_d0.yaml --output model.onnx \\
        [--opset 17] [--check] [KEY VALUE ...]

The graph: ``images uint8 [B, 3, S, S]`` -> ``boxes [B, N, 4]`` (xyxy input pixels), ``scores
[B, N]`` (-1 = padding), ``classes [B, N]``, ``masks [B, N, 28, 28]`` probabilities, and with
MODEL.ROI_ATTRIBUTE_HEAD.ENABLED ``attribute_scores [B, N, 294]``. Pasting at the original
resolution: ``effdetmask.export.OnnxPredictor`` (the same code as the PyTorch model).
``--check`` runs onnxruntime on a random batch of 2 and prints the largest differences
(detections matched by score rank, ties by box).
"""

import argparse
import logging

import torch

from effdetmask.config import setup_cfg
from effdetmask.export import export_onnx
from effdetmask.export.onnx import (
    EffDetMaskOnnxWrapper,
    OnnxPredictor,
    match_by_score,
    output_names,
)
from effdetmask.modeling import build_model


def check(model: torch.nn.Module, path: str, size: int) -> None:
    images = torch.randint(0, 256, (2, 3, size, size), dtype=torch.uint8)
    ours = {k: torch.from_numpy(v) for k, v in OnnxPredictor(path).run(images.numpy()).items()}
    with torch.inference_mode():
        ref = dict(zip(output_names(model), EffDetMaskOnnxWrapper(model)(images)))
    for i in range(images.shape[0]):
        valid = ref["scores"][i] >= 0
        a = {k: v[i][valid] for k, v in ours.items()}
        b = {k: v[i][valid] for k, v in ref.items()}
        match = match_by_score(a["scores"], a["classes"], a["boxes"], b["scores"], b["classes"],
                               b["boxes"])
        ok = match >= 0
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
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    cfg = setup_cfg(args.config_file, args.opts)
    model = build_model(cfg, device="cpu", inference_only=True)
    export_onnx(model, args.output, cfg.INPUT.SIZE, opset=args.opset)
    if args.check:
        check(model, args.output, cfg.INPUT.SIZE)


if __name__ == "__main__":
    main()
