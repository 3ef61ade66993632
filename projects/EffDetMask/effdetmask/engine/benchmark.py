"""The ``--eval-only`` table: accuracy, size and speed of one model, like the paper's Tables 1-2."""

from __future__ import annotations

import json
import logging
import os
from typing import Dict

import torch

from ..data.build import build_test_loader
from ..modeling import build_model
from ..utils.model_summary import summarize_model
from ..utils.timing import time_inference

logger = logging.getLogger(__name__)

__all__ = ["time_inference", "benchmark_row", "print_benchmark_table"]


def benchmark_row(cfg, results: Dict, max_batches: int = 12) -> Dict[str, object]:
    """One row: AP of the evaluation ``results`` plus size, FLOPs and measured speed."""
    # size and FLOPs of the model as trained; speed of the model as deployed (BN folded)
    summary = summarize_model(build_model(cfg), input_size=cfg.INPUT.SIZE)
    model = build_model(cfg, inference_only=True)
    device = next(model.parameters()).device
    loader = build_test_loader(cfg, cfg.DATASETS.TEST[0])
    batches = []
    for batch in loader:
        batches.append(batch)
        if len(batches) >= max_batches:
            break
    timing = time_inference(model, batches, device=device)
    first = next(iter(results.values()), {}) if results else {}
    return {
        "model": os.path.splitext(os.path.basename(cfg.OUTPUT_DIR.rstrip("/")))[0] or "model",
        "meta_arch": cfg.MODEL.META_ARCHITECTURE,
        "box_AP": first.get("bbox", {}).get("AP"),
        "mask_AP": first.get("segm", {}).get("AP"),
        "params_M": summary["total_params"] / 1e6,
        "checkpoint_MB": summary["checkpoint_bytes"] / 2**20,
        "GFLOPs": summary["flops"] / 1e9 if summary.get("flops") else None,
        "s_per_img": timing["s_per_img"],
        "img_per_s": timing["img_per_s"],
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "threads": torch.get_num_threads(),
        "batch_size": timing["batch_size"],
        "precision": cfg.SOLVER.PRECISION,
        "input_size": cfg.INPUT.SIZE,
    }


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def print_benchmark_table(cfg, results: Dict) -> Dict[str, object]:
    """Prints the benchmark table and writes it to ``OUTPUT_DIR/benchmark.json``."""
    row = benchmark_row(cfg, results)
    keys = list(row)
    widths = [max(len(k), len(_fmt(row[k]))) for k in keys]
    print(" | ".join(k.ljust(w) for k, w in zip(keys, widths)))
    print("-+-".join("-" * w for w in widths))
    print(" | ".join(_fmt(row[k]).ljust(w) for k, w in zip(keys, widths)))
    os.makedirs(cfg.OUTPUT_DIR, exist_ok=True)
    with open(os.path.join(cfg.OUTPUT_DIR, "benchmark.json"), "w") as f:
        json.dump(row, f, indent=2)
    return row
