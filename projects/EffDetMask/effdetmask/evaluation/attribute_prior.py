"""The prior baseline for attributes: every detection gets its category's most frequent attributes.

A model's attribute head has to beat this to show that it reads attributes from pixels rather
than from the class alone. The prior of a category is its ``k`` most frequent attribute ids in the
training ground truth, ``k`` the median number of attributes of its instances (ties in frequency
go to the smaller id), counted over the instances whose attributes are known
(``attribute_ids_known``) of the categories that carry attributes in Fashionpedia's metric.
Applied to a results JSON it replaces each detection's ``attribute_ids`` and keeps everything else
(boxes, masks, scores), so model and prior are scored on the same detections.
"""

from __future__ import annotations

import collections
import json
import os
from typing import Any, Dict, List, Mapping, Sequence, Union

import numpy as np

from .attribute_eval import attribute_metrics
from .backends import IOU_TYPES
from .fashionpedia_data import load_gt_dataset, load_results
from .fashionpedia_params import CATEGORIES_WITH_ATTRIBUTES

__all__ = ["attribute_prior", "apply_attribute_prior", "compare_with_prior"]

JsonLike = Union[str, os.PathLike, Mapping[str, Any]]


def _annotations(train: Union[JsonLike, Sequence[Mapping[str, Any]]]) -> List[Mapping[str, Any]]:
    """Annotations of a COCO/Fashionpedia GT (path or dict) or of dataset dicts."""
    if isinstance(train, (str, os.PathLike)):
        with open(train, "r", encoding="utf-8") as f:
            train = json.load(f)
    if isinstance(train, Mapping):
        return list(train.get("annotations", []))
    return [a for record in train for a in record.get("annotations", [])]


def attribute_prior(
    train: Union[JsonLike, Sequence[Mapping[str, Any]]],
    categories: Sequence[int] = CATEGORIES_WITH_ATTRIBUTES,
) -> Dict[int, List[int]]:
    """Each category's prior attribute set from the training ground truth.

    Args:
        train: Fashionpedia JSON (path or dict) or dataset dicts; annotations with
            ``category_id`` (the final Fashionpedia ids) and ``attribute_ids``; those with
            ``attribute_ids_known`` False are left out.
        categories: the categories that get a prior (default: those with attributes in
            Fashionpedia's metric); others predict no attribute.
    Returns:
        ``{category_id: sorted attribute ids}`` for every category in ``categories`` with known
        instances (an empty list when their median count is 0).
    """
    wanted = {int(c) for c in categories}
    counts: Dict[int, collections.Counter] = collections.defaultdict(collections.Counter)
    sizes: Dict[int, List[int]] = collections.defaultdict(list)
    for ann in _annotations(train):
        cat = int(ann["category_id"])
        if cat not in wanted or not ann.get("attribute_ids_known", True) or ann.get("iscrowd"):
            continue
        ids = {int(a) for a in ann.get("attribute_ids", ()) or ()}
        counts[cat].update(ids)
        sizes[cat].append(len(ids))
    prior: Dict[int, List[int]] = {}
    for cat, sz in sizes.items():
        k = int(np.floor(np.median(sz) + 0.5))  # half up: a 1/2 split predicts one attribute
        ranked = sorted(counts[cat].items(), key=lambda kv: (-kv[1], kv[0]))
        prior[cat] = sorted(a for a, _ in ranked[:k])
    return dict(sorted(prior.items()))


def apply_attribute_prior(results: Union[str, os.PathLike, Sequence[Mapping[str, Any]]],
                          prior: Mapping[int, Sequence[int]]) -> List[Dict[str, Any]]:
    """A copy of ``results`` whose ``attribute_ids`` are the prior of each detection's category
    (``[]`` for a category without one); the input is not modified."""
    return [{**r, "attribute_ids": list(prior.get(int(r["category_id"]), []))}
            for r in load_results(results)]


def compare_with_prior(
    gt: JsonLike,
    results: Union[str, os.PathLike, Sequence[Mapping[str, Any]]],
    prior: Mapping[int, Sequence[int]],
    iou_types: Sequence[str] = IOU_TYPES,
) -> Dict[str, Dict[str, Dict[str, float]]]:
    """Attribute metrics of the model's results and of the prior on the same detections.

    Args:
        gt: the evaluation ground truth (Fashionpedia JSON path or dict).
        results: the model's results (with ``attribute_ids``), Fashionpedia category ids.
        prior: from :func:`attribute_prior` on the *training* ground truth.
        iou_types: subset of ``("bbox", "segm")``; ``segm`` needs masks in the results.
    Returns:
        ``{"model": {iou_type: metrics}, "prior": {...}}`` with the keys of
        :mod:`.attribute_eval` (``AP_IOU_F1``, ``AP_IOU50_F150``, ``AP_IOU``, ``ATTR_F1``, ...),
        in percent.
    """
    gt = load_gt_dataset(gt)
    model = load_results(results)
    return {"model": attribute_metrics(gt, model, iou_types, dataset_name="model"),
            "prior": attribute_metrics(gt, apply_attribute_prior(model, prior), iou_types,
                                       dataset_name="prior")}
