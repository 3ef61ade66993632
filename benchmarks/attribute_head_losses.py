#!/usr/bin/env python3
"""Which attribute loss: BCE or focal? Measured with everything else held fixed.

A trained model (the README main job's weights) is loaded; for each loss its attribute head is
re-initialised (same seed), every other weight frozen (BatchNorms in eval mode), and only the head
trains on the training set's RoIs for ``--steps`` steps (AdamW, cosine; RoIs chosen by the RoI
heads exactly as in training). Each head is then evaluated on the validation set, on the same
detections, against the prior baseline (each category's most frequent attributes):

    python benchmarks/attribute_head_losses.py \\
        --config-file output/effdet_lite0_synth_cpu/config.yaml \\
        --weights output/effdet_lite0_synth_cpu/model_final.safetensors \\
        --losses bce focal --steps 150 --output benchmarks/results/attribute_losses_cpu.json

Training the whole model with each loss would also move the detector; this isolates the head.
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
from typing import Any, Dict, List, Optional, Sequence

import torch

from effdetmask.config import setup_cfg
from effdetmask.data.build import build_test_loader, build_train_loader
from effdetmask.data.catalog import DatasetCatalog, MetadataCatalog
from effdetmask.evaluation.attribute_prior import attribute_prior, compare_with_prior
from effdetmask.evaluation.coco_evaluator import COCOEvaluator
from effdetmask.modeling import build_model
from effdetmask.modeling.meta_arch import normalize_images, targets_from_inputs
from effdetmask.modeling.roi_heads import build_attribute_head

KEYS = ("ATTR_F1", "AP_IOU_F1", "AP_IOU50_F150")
logger = logging.getLogger("attribute_head_losses")


def head_only_model(cfg, seed: int) -> torch.nn.Module:
    """The model of ``cfg`` (weights loaded) with a fresh attribute head, its only trainable
    part."""
    model = build_model(cfg, device="cpu")
    torch.manual_seed(seed)
    roi_heads = model.roi_heads
    channels = model.backbone.output_shape()[roi_heads.in_features[0]].channels
    roi_heads.attribute_head = build_attribute_head(cfg, in_channels=channels)
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith("roi_heads.attribute_head."))
    return model


def attribute_loss_of_batch(model: torch.nn.Module, batch: List[Dict[str, Any]]) -> torch.Tensor:
    """``loss_attribute`` of one training batch: frozen features and detections, training RoIs."""
    images = normalize_images(batch, model.pixel_mean, model.pixel_std)
    targets = targets_from_inputs(batch, model.device)
    with torch.no_grad():
        features = model.backbone(images)
        detections = model.proposal_generator.detect(
            *model.proposal_generator.head_outputs(features))
    return model.roi_heads(features, detections, targets)["loss_attribute"]


def train_head(model: torch.nn.Module, cfg, steps: int, lr: float) -> List[float]:
    model.eval()  # BatchNorm statistics and drop-path as at inference; only the head learns
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=cfg.SOLVER.WEIGHT_DECAY)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    losses: List[float] = []
    while len(losses) < steps:
        for batch in build_train_loader(cfg):
            loss = attribute_loss_of_batch(model, batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(float(loss))
            if len(losses) % 25 == 0:
                logger.info("step %d: loss_attribute %.4f", len(losses), losses[-1])
            if len(losses) == steps:
                break
    return losses


def results_json(model: torch.nn.Module, cfg, dataset: str) -> str:
    """Runs ``model`` on ``dataset`` and returns the path of its results JSON."""
    out_dir = tempfile.mkdtemp(prefix="attr_losses_")
    evaluator = COCOEvaluator(dataset, output_dir=out_dir, backend=cfg.TEST.EVALUATOR_BACKEND,
                              distributed=False)
    evaluator.reset()
    with torch.inference_mode():
        for batch in build_test_loader(cfg, dataset):
            evaluator.process(batch, model(batch))
    evaluator.evaluate()
    return os.path.join(out_dir, "coco_instances_results.json")


def annotation_json(dataset: str) -> str:
    """The Fashionpedia-format JSON a registered split was loaded from (set once it is read)."""
    path = MetadataCatalog.get(dataset).get("json_file")
    if not path:  # read from a cache: load the records once to learn their JSON
        DatasetCatalog.get(dataset)
        path = MetadataCatalog.get(dataset).get("json_file")
    if not path:
        raise ValueError(f"dataset {dataset!r} has no json_file: not a JSON-backed dataset")
    return path


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config-file", required=True)
    p.add_argument("--weights", required=True, help="the trained model (MODEL.WEIGHTS)")
    p.add_argument("--losses", nargs="+", default=["bce", "focal"], choices=["bce", "focal"])
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--output", default="")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    rows: Dict[str, Any] = {}
    prior_row: Dict[str, Any] = {}
    for loss in args.losses:
        cfg = setup_cfg(args.config_file, [*args.opts, "MODEL.WEIGHTS", args.weights,
                                           "MODEL.ROI_ATTRIBUTE_HEAD.ENABLED", "True",
                                           "MODEL.ROI_ATTRIBUTE_HEAD.LOSS", loss,
                                           "DATALOADER.NUM_WORKERS", "0"])
        model = head_only_model(cfg, args.seed)
        start = time.perf_counter()
        curve = train_head(model, cfg, args.steps, args.lr)
        train_s = time.perf_counter() - start
        train_name, val_name = cfg.DATASETS.TRAIN[0], cfg.DATASETS.TEST[0]
        results = results_json(model, cfg, val_name)
        with open(results, "r", encoding="utf-8") as f:
            detections = json.load(f)
        comparison = compare_with_prior(annotation_json(val_name), detections,
                                        attribute_prior(annotation_json(train_name)),
                                        ("bbox", "segm"))
        rows[loss] = {"train_s": train_s, "final_loss_mean_last25": sum(curve[-25:]) / 25,
                      **comparison["model"]}
        prior_row = comparison["prior"]
    print_table(rows, prior_row)
    out = {"command": " ".join(sys.argv), "steps": args.steps, "lr": args.lr,
           "weights": args.weights, "heads": rows, "prior": prior_row}
    if args.output:
        os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
        with open(args.output, "w", encoding="utf-8") as f:
            json.dump(out, f, indent=2)
    return out


def print_table(rows: Dict[str, Any], prior: Dict[str, Any]) -> None:
    cols = [(t, k) for t in ("bbox", "segm") for k in KEYS]
    print(f"{'head':<8} | " + " | ".join(f"{t} {k}" for t, k in cols))
    for name, metrics in [*rows.items(), ("prior", prior)]:
        vals = [metrics[t][k] for t, k in cols]
        print(f"{name:<8} | " + " | ".join(
            f"{'nan' if math.isnan(v) else f'{v:.2f}':>{len(t) + len(k) + 1}}"
            for v, (t, k) in zip(vals, cols)))


if __name__ == "__main__":
    main(sys.argv[1:])
