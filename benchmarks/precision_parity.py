#!/usr/bin/env python3
"""Accuracy of each inference precision against fp32, on a trained model.

The same weights run on a validation set in every precision: PyTorch fp32 (the reference), PyTorch
bf16 autocast, and with ``--onnx`` the exported graph in onnxruntime fp32 and int8 (static QDQ,
calibrated on ``--calibration-images`` images of the training set). For each it reports box and
mask AP (COCO, percent), their change against fp32, and how the instances themselves move: the
share of fp32 instances with a same-class counterpart (box IoU >= 0.5, greedy by score) and the
mean mask IoU of those pairs, with the masks pasted at image resolution.

    python benchmarks/precision_parity.py --config-file output/effdet_lite0_synth_cpu/config.yaml \\
        --weights output/effdet_lite0_synth_cpu/model_final.safetensors --onnx \\
        --output benchmarks/results/precision_parity_lite0_synth_cpu.json

A precision that loses more than 1 AP point is not a default (README "CPU precisions").
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import tempfile
import time
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch
from torchvision.ops import box_iou

from effdetmask.config import setup_cfg
from effdetmask.data.build import build_test_loader
from effdetmask.evaluation.coco_evaluator import COCOEvaluator
from effdetmask.modeling import build_model
from effdetmask.modeling.inference import inference_context
from effdetmask.utils.table import format_table

logger = logging.getLogger("precision_parity")
Predict = Callable[[List[Dict[str, Any]]], List[Dict[str, Any]]]


def torch_predictor(model: torch.nn.Module, amp_dtype: str) -> Predict:
    def predict(batch):
        with torch.inference_mode(), inference_context(model.device, amp_dtype):
            return model(batch)
    return predict


def onnx_predictors(model: torch.nn.Module, cfg, calibration_images: int,
                    threads: int) -> Dict[str, Predict]:
    """``onnx-fp32`` and ``onnx-int8`` predictors of ``model``'s exported graph."""
    from effdetmask.export import OnnxPredictor, export_onnx
    from effdetmask.export.quantize import calibration_images as calib
    from effdetmask.export.quantize import quantize_onnx_int8

    folder = tempfile.mkdtemp(prefix="parity_onnx_")
    fp32 = export_onnx(model, os.path.join(folder, "model.onnx"), cfg.INPUT.SIZE)
    int8 = quantize_onnx_int8(fp32, os.path.join(folder, "model.int8.onnx"),
                              calib(cfg, cfg.DATASETS.TRAIN[0], calibration_images))
    kwargs = dict(score_thresh=cfg.TEST.SCORE_THRESH, threads=threads,
                  detections_per_image=cfg.TEST.DETECTIONS_PER_IMAGE,
                  attribute_score_thresh=cfg.MODEL.ROI_ATTRIBUTE_HEAD.SCORE_THRESH)
    return {"onnx-fp32": OnnxPredictor(fp32, **kwargs), "onnx-int8": OnnxPredictor(int8, **kwargs)}


def run(predict: Predict, cfg, dataset: str) -> Dict[str, Any]:
    """Predictions per image id, COCO metrics, and seconds spent predicting."""
    evaluator = COCOEvaluator(dataset, output_dir=None, backend=cfg.TEST.EVALUATOR_BACKEND,
                              distributed=False)
    evaluator.reset()
    outputs: Dict[int, Dict[str, Any]] = {}
    seconds = 0.0
    for batch in build_test_loader(cfg, dataset):
        start = time.perf_counter()
        out = predict(batch)
        seconds += time.perf_counter() - start
        evaluator.process(batch, out)
        for x, o in zip(batch, out):
            outputs[int(x["image_id"])] = o["instances"]
    return {"instances": outputs, "metrics": evaluator.evaluate(), "predict_s": seconds}


def matched_mask_iou(ref: Dict[str, torch.Tensor], other: Dict[str, torch.Tensor]
                     ) -> List[float]:
    """Mask IoU of each ``ref`` instance that has a same-class counterpart in ``other`` (box IoU
    >= 0.5, greedy in ``ref``'s score order, each ``other`` instance used once)."""
    if len(ref["scores"]) == 0 or len(other["scores"]) == 0:
        return []
    iou = box_iou(ref["boxes"].float(), other["boxes"].float())
    iou[ref["classes"][:, None] != other["classes"][None]] = 0
    used = torch.zeros(len(other["scores"]), dtype=torch.bool)
    out = []
    for i in torch.argsort(ref["scores"], descending=True).tolist():
        cand = iou[i].masked_fill(used, 0)
        j = int(cand.argmax())
        if cand[j] < 0.5:
            continue
        used[j] = True
        a, b = ref["masks"][i], other["masks"][j]
        union = (a | b).sum().item()
        out.append((a & b).sum().item() / union if union else 1.0)
    return out


def summary(name: str, result: Dict[str, Any], ref: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    row = {"precision": name, "predict_s": result["predict_s"],
           "box_AP": result["metrics"]["bbox"]["AP"], "mask_AP": result["metrics"]["segm"]["AP"]}
    if ref is not None:
        ious: List[float] = []
        total = 0
        for image_id, inst in ref["instances"].items():
            total += len(inst["scores"])
            ious += matched_mask_iou(inst, result["instances"][image_id])
        row.update(box_AP_change=row["box_AP"] - ref["metrics"]["bbox"]["AP"],
                   mask_AP_change=row["mask_AP"] - ref["metrics"]["segm"]["AP"],
                   matched_share=len(ious) / total if total else math.nan,
                   matched_mask_iou=sum(ious) / len(ious) if ious else math.nan)
    return row


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config-file", required=True)
    p.add_argument("--weights", required=True, help="trained weights (MODEL.WEIGHTS)")
    p.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    p.add_argument("--onnx", action="store_true", help="also onnxruntime fp32 and int8")
    p.add_argument("--calibration-images", type=int, default=200)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--dataset", default="", help="default: the config's first DATASETS.TEST")
    p.add_argument("--output", default="")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    cfg = setup_cfg(args.config_file, [*args.opts, "MODEL.WEIGHTS", args.weights,
                                       "MODEL.DEVICE", "cpu", "TEST.AMP_DTYPE", "",
                                       "DATALOADER.NUM_WORKERS", "0"])
    dataset = args.dataset or cfg.DATASETS.TEST[0]
    model = build_model(cfg, inference_only=True)
    predictors: Dict[str, Predict] = {
        ("fp32" if p_ == "fp32" else p_): torch_predictor(model, "" if p_ == "fp32" else p_)
        for p_ in dict.fromkeys(["fp32", *args.precisions])}
    if args.onnx:
        predictors.update(onnx_predictors(model, cfg, args.calibration_images, args.threads))
    results = {name: run(fn, cfg, dataset) for name, fn in predictors.items()}
    rows = [summary(name, r, None if name == "fp32" else results["fp32"])
            for name, r in results.items()]
    print_table(rows)
    out = {"command": " ".join(sys.argv), "torch": torch.__version__, "dataset": dataset,
           "weights": args.weights, "rows": rows}
    if args.output:
        os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
        with open(args.output, "w", encoding="utf-8") as f:
            json.dump(out, f, indent=2)
    return out


def print_table(rows: List[Dict[str, Any]]) -> None:
    cols = ["precision", "box_AP", "box_AP_change", "mask_AP", "mask_AP_change",
            "matched_share", "matched_mask_iou", "predict_s"]

    def fmt(v: Any) -> str:
        return "-" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)

    print(format_table(rows, cols, fmt))


if __name__ == "__main__":
    main(sys.argv[1:])
