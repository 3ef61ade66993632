"""Fashionpedia's attribute metrics as extra keys of the COCO evaluator's results.

When the predictions carry ``attribute_ids`` and the ground truth has attributes,
:class:`~.coco_evaluator.COCOEvaluator` adds to each IoU type's metrics (percent, ``NaN`` where
there is nothing to measure):

* ``AP_IOU_F1``: Fashionpedia's AP, a true positive needing IoU *and* attribute F1 (both
  0.50:0.95) for the 18 categories with attributes (FPEval's ``AP``);
* ``AP_IOU50_F150``: the same at IoU 0.5 and F1 0.5;
* ``AP_IOU``: Fashionpedia's AP with IoU alone (FPEval's IoU-only ``AP``; equal to COCO's ``AP``
  when no ground truth is a crowd);
* ``ATTR_F1``: attribute F1 over every attribute of the detections matched at IoU 0.5
  (micro-average, categories with attributes; :func:`.attribute_group_f1`'s ``"all"`` row), and
  ``ATTR_F1-<group>`` per attribute group (``ATTR_F1-textile pattern``, ``ATTR_F1-length`` ...).

The per-group precision/recall/F1 table is logged (groups with labels or predictions).
"""

from __future__ import annotations

import logging
import math
from typing import Any, Dict, Mapping, Optional, Sequence

from .attribute_f1 import ALL, attribute_group_f1, format_attribute_group_table
from .fashionpedia_eval import evaluate_fashionpedia_json, format_fashionpedia_summary

__all__ = ["ATTRIBUTE_METRIC_KEYS", "attribute_metrics", "results_have_attributes"]

logger = logging.getLogger(__name__)

# our key -> evaluate_fashionpedia_json's key
_FROM_FASHIONPEDIA = {"AP_IOU_F1": "AP", "AP_IOU50_F150": "AP_IOU50_F150", "AP_IOU": "iou/AP"}
ATTRIBUTE_METRIC_KEYS = tuple(_FROM_FASHIONPEDIA) + ("ATTR_F1",)
GROUP_PREFIX = "ATTR_F1-"


def results_have_attributes(coco_results: Sequence[Mapping[str, Any]]) -> bool:
    """Whether the results predict attributes (any detection carries ``attribute_ids``)."""
    return any("attribute_ids" in r for r in coco_results)


def attribute_metrics(
    gt: Mapping[str, Any],
    coco_results: Sequence[Mapping[str, Any]],
    iou_types: Sequence[str],
    img_ids: Optional[Sequence[int]] = None,
    dataset_name: str = "dataset",
) -> Dict[str, Dict[str, float]]:
    """The attribute keys of the module docstring, per IoU type, and the group table logged.

    Args:
        gt: COCO GT dict with ``attribute_ids`` per annotation and an ``attributes`` list
            (:func:`.coco_evaluator.dataset_dicts_to_coco`); category ids are the final
            Fashionpedia ids (FPEval's categories with attributes are fixed ids).
        coco_results: results with ``attribute_ids`` (sparse ids), contiguous category ids.
        iou_types: subset of ``("bbox", "segm")``.
        img_ids: the images evaluated.
    Returns:
        ``{iou_type: {key: value}}`` in percent.
    """
    fp = evaluate_fashionpedia_json(gt, coco_results, iou_types, img_ids=img_ids)
    out: Dict[str, Dict[str, float]] = {}
    for iou_type in iou_types:
        metrics = {k: fp[iou_type].get(v, math.nan) for k, v in _FROM_FASHIONPEDIA.items()}
        table = attribute_group_f1(gt, coco_results, iou_type=iou_type, img_ids=img_ids)
        metrics["ATTR_F1"] = table[ALL]["f1"]
        metrics.update({GROUP_PREFIX + group: row["f1"] for group, row in table.items()
                        if group != ALL})
        out[iou_type] = metrics
        shown = {g: row for g, row in table.items() if g == ALL or row["gt"] or row["predicted"]}
        logger.info("%s %s Fashionpedia: %s, attribute F1 %.3f\nattribute groups (detections "
                    "matched at IoU 0.5; groups neither labelled nor predicted left out):\n%s",
                    dataset_name, iou_type, format_fashionpedia_summary(fp[iou_type]),
                    metrics["ATTR_F1"], format_attribute_group_table(shown))
    return out
