#!/usr/bin/env python3
"""A model's attribute predictions against the prior baseline, on the same detections.

The prior (``effdetmask.evaluation.attribute_prior``) predicts for every detection its category's
most frequent training attributes (``k`` = the category's median attribute count). It replaces
the ``attribute_ids`` of the model's results JSON and nothing else, so the table below compares
attribute F1 and AP(IoU+F1) of the head and the prior on identical boxes, masks and scores:

    python benchmarks/attribute_prior.py --train-json TRAIN.json --gt-json VAL.json \\
        --results OUTPUT_DIR/inference/fashion_synth_val/coco_instances_results.json \\
        [--output benchmarks/results/attribute_prior.json]

TRAIN/VAL are Fashionpedia-format JSONs (for the generated data:
``<root>/fashion_synth/train_n…/instances_attributes.json`` and the val split's); the results JSON
is the one ``train_net.py --eval-only`` writes (Fashionpedia category ids).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from typing import Any, Dict, List, Optional, Sequence

from effdetmask.evaluation.attribute_prior import attribute_prior, compare_with_prior

KEYS = ("ATTR_F1", "AP_IOU_F1", "AP_IOU50_F150", "AP_IOU")


def format_table(comparison: Dict[str, Dict[str, Dict[str, float]]]) -> str:
    """``compare_with_prior``'s result as rows ``iou_type key | model | prior | model - prior``."""
    lines = [f"{'metric':<20} | {'model':>7} | {'prior':>7} | {'gain':>7}"]

    def num(v: float) -> str:
        return f"{'nan' if math.isnan(v) else f'{v:.2f}':>7}"

    for iou_type, metrics in comparison["model"].items():
        for key in KEYS:
            m, p = metrics[key], comparison["prior"][iou_type][key]
            lines.append(f"{iou_type + ' ' + key:<20} | {num(m)} | {num(p)} | {num(m - p)}")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--train-json", required=True, help="training GT: the prior's frequencies")
    p.add_argument("--gt-json", required=True, help="evaluation GT the results belong to")
    p.add_argument("--results", required=True, help="the model's results JSON (attribute_ids)")
    p.add_argument("--iou-types", nargs="+", default=["bbox", "segm"])
    p.add_argument("--output", help="also write the figures (and the prior) as JSON here")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    with open(args.results, "r", encoding="utf-8") as f:
        results: List[Dict[str, Any]] = json.load(f)
    if not any("attribute_ids" in r for r in results):
        p.error(f"{args.results}: no detection carries attribute_ids (attribute head off?)")
    prior = attribute_prior(args.train_json)
    comparison = compare_with_prior(args.gt_json, results, prior, args.iou_types)
    print(format_table(comparison))
    out = {"train_json": args.train_json, "gt_json": args.gt_json, "results": args.results,
           "num_detections": len(results),
           "prior_attribute_ids": {str(k): v for k, v in prior.items()},
           **comparison}
    if args.output:
        with open(args.output, "w", encoding="utf-8") as f:
            json.dump(out, f, indent=2)
    return out


if __name__ == "__main__":
    main(sys.argv[1:])
