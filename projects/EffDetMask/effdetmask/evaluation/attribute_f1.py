"""Attribute precision / recall / F1 per attribute group (the attributes' supercategories:
"length", "neckline type", "textile pattern", ...) over the detections matched to a ground truth.

Where AP(IoU+F1) says *whether* attributes are right often enough, this table says *which kind*
of attribute a model gets wrong. Matching is COCO's greedy matching by score at one IoU threshold
(all areas, 100 detections per image and category, no F1 condition), restricted as in FPEval to
the categories that carry attributes; each matched (detection, ground truth) pair adds its counts
(micro-average): within a group, ``tp = |P & G|``, ``fp = |P - G|``, ``fn = |G - P|``.
"""

from __future__ import annotations

import math
import os
from typing import Any, Dict, Mapping, Optional, Sequence, Union

import numpy as np

from .fashionpedia_data import build_eval_data, load_gt_dataset, load_results
from .fashionpedia_eval import match_detections
from .fashionpedia_params import AREA_RANGES

__all__ = ["attribute_group_f1", "format_attribute_group_table"]

ALL = "all"  # the row of every attribute together


def _ratio(num: float, den: float) -> float:
    return 100.0 * num / den if den else float("nan")


def attribute_group_f1(
    gt: Union[str, os.PathLike, Mapping[str, Any], Any],
    results: Union[str, os.PathLike, Sequence[Mapping[str, Any]]],
    iou_type: str = "segm",
    iou_threshold: float = 0.5,
    img_ids: Optional[Sequence[int]] = None,
) -> Dict[str, Dict[str, float]]:
    """Attribute precision, recall and F1 per attribute group over matched detections.

    Args:
        gt, results, img_ids: as for :func:`.evaluate_fashionpedia_json`.
        iou_type: ``"bbox"`` or ``"segm"``: the IoU used for matching.
        iou_threshold: a detection matches a ground truth from this IoU on.
    Returns:
        ``{group: {"precision", "recall", "f1", "gt", "predicted", "pairs"}}`` in the order the
        groups first occur in the id-sorted attribute list, then ``"all"``. Precision, recall and
        F1 in percent (``NaN`` when undefined: no predicted / no true attribute of the group);
        ``gt`` and ``predicted``: attribute labels of the group on the matched pairs; ``pairs``:
        matched pairs.
    """
    data = build_eval_data(load_gt_dataset(gt), load_results(results), img_ids)
    dt_geometry, _ = data.dt_geometry(iou_type)
    ious = data.pair_ious(iou_type, dt_geometry)
    match, gt_ignore = match_detections(
        data, ious, None, iou_thresholds=np.array([float(iou_threshold)]),
        f1_thresholds=np.array([-1.0]), area_ranges=[AREA_RANGES["all"]])
    gt_idx = match[:, 0, 0, 0]
    pairs = np.flatnonzero((gt_idx >= 0) & data.has_attributes[data.dt_cat])
    pairs = pairs[~gt_ignore[gt_idx[pairs], 0]]
    predicted = data.dt_attrs[pairs]
    true = data.gt_attrs[gt_idx[pairs]]
    names = list(dict.fromkeys(data.attribute_groups))
    groups = np.array([[g == name for g in data.attribute_groups] for name in names] +
                      [[True] * len(data.attribute_groups)], dtype=np.int64)  # [groups + 1, n]
    tp = (predicted & true).astype(np.int64).sum(axis=0) @ groups.T
    n_pred = predicted.astype(np.int64).sum(axis=0) @ groups.T
    n_true = true.astype(np.int64).sum(axis=0) @ groups.T
    out: Dict[str, Dict[str, float]] = {}
    for k, name in enumerate(names + [ALL]):
        out[name] = {
            "precision": _ratio(tp[k], n_pred[k]), "recall": _ratio(tp[k], n_true[k]),
            "f1": _ratio(2 * tp[k], n_pred[k] + n_true[k]), "gt": int(n_true[k]),
            "predicted": int(n_pred[k]), "pairs": int(len(pairs)),
        }
    return out


def format_attribute_group_table(table: Mapping[str, Mapping[str, float]]) -> str:
    """:func:`attribute_group_f1`'s result as a text table, one group per row."""
    width = max([len(name) for name in table] + [5])
    lines = [f"{'group':<{width}} | {'P':>6} | {'R':>6} | {'F1':>6} | {'GT':>6} | {'pred':>6}"]

    def num(v: float) -> str:
        return f"{'nan' if math.isnan(v) else f'{v:.2f}':>6}"

    for name, row in table.items():
        lines.append(f"{name:<{width}} | {num(row['precision'])} | {num(row['recall'])} | "
                     f"{num(row['f1'])} | {row['gt']:>6d} | {row['predicted']:>6d}")
    return "\n".join(lines)
