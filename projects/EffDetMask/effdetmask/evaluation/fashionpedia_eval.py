"""Fashionpedia's official metric — AP with IoU and attribute F1 — on JSON files, in numpy.

The numbers are those of ``FPEval`` (PyPI ``fashionpedia`` 1.1, the Fashionpedia API), which
needs numpy < 1.24, scikit-learn, scikit-image and matplotlib; the tests compare every key with
it. A detection of one of the 18 categories with attributes is a true positive only when its IoU
*and* its attribute F1 (see :mod:`.fashionpedia_data`) with the ground truth reach the thresholds
(IoU 0.50:0.95 x F1 0.50:0.95); other categories are scored by IoU alone. Metrics are in percent
like :func:`.evaluate_coco_json`, ``NaN`` where there is nothing to measure.
"""

from __future__ import annotations

import logging
import math
import os
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from .backends import IOU_TYPES
from .fashionpedia_accumulate import accumulate, summarize
from .fashionpedia_data import EvalData, build_eval_data, load_gt_dataset, load_results
from .fashionpedia_matching import greedy_match
from .fashionpedia_params import AREA_RANGES, F1_THRESHOLDS, IOU_THRESHOLDS

__all__ = ["evaluate_fashionpedia_json", "match_detections", "format_fashionpedia_summary"]

logger = logging.getLogger(__name__)

# prefixes of the IoU-only and F1-only summaries in the returned dicts
SUMMARY_PREFIX = {"iou_f1": "", "iou": "iou/", "f1": "f1/"}


def match_detections(data: EvalData, ious: np.ndarray, f1s: Optional[np.ndarray],
                     iou_thresholds: np.ndarray = IOU_THRESHOLDS,
                     f1_thresholds: np.ndarray = F1_THRESHOLDS,
                     area_ranges: Sequence[Tuple[float, float]] = tuple(AREA_RANGES.values())
                     ) -> Tuple[np.ndarray, np.ndarray]:
    """Matched ground truth of every detection, for every area range and threshold pair.

    Categories with attributes use FPEval's matching (IoU and F1); the others COCOeval's (IoU
    alone, at the last F1 threshold, which must be ``-1``).

    Args:
        data: see :func:`.fashionpedia_data.build_eval_data`.
        ious, f1s: float64 [P] per pair; ``f1s`` may be ``None`` when ``f1_thresholds == [-1]``.
        iou_thresholds [T], f1_thresholds [F], area_ranges: ``A`` ``(lo, hi)`` pixel areas.
    Returns:
        ``(match, gt_ignore)``: int64 [Nd, A, T, F] index into the ground truths or -1 (for
        categories without attributes only ``[..., -1]`` is filled); bool [Ng, A] ground truth
        ignored (crowd, or area outside the range).
    """
    if f1_thresholds[-1] != -1:
        raise ValueError("the last F1 threshold must be -1 (no F1 constraint)")
    lo, hi = np.array(area_ranges, dtype=np.float64).reshape(-1, 2).T
    gt_ignore = data.gt_crowd[:, None] | (data.gt_area[:, None] < lo) | (data.gt_area[:, None] > hi)
    match = np.full((len(data.dt_score), len(lo), len(iou_thresholds), len(f1_thresholds)), -1,
                    dtype=np.int64)
    with_attrs = data.has_attributes[data.group_cat]
    greedy_match(data, np.flatnonzero(with_attrs), ious, f1s, gt_ignore, iou_thresholds,
                 f1_thresholds, reuse_crowd=False, out=match)
    greedy_match(data, np.flatnonzero(~with_attrs), ious, None, gt_ignore, iou_thresholds,
                 f1_thresholds[-1:], reuse_crowd=True, out=match[..., -1:])
    return match, gt_ignore


def _tables(data: EvalData, iou_type: str, f1s: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    dt_geometry, dt_area = data.dt_geometry(iou_type)
    ious = data.pair_ious(iou_type, dt_geometry)
    match, gt_ignore = match_detections(data, ious, f1s)
    lo, hi = np.array(list(AREA_RANGES.values()), dtype=np.float64).T
    # a padding ground truth (index Ng, id 0, not ignored) stands for "no match"
    gt_id = np.append(data.gt_id, 0)
    gt_ignore_padded = np.vstack([gt_ignore, np.zeros((1, len(lo)), dtype=bool)])
    dt_outside = (dt_area[:, None] < lo) | (dt_area[:, None] > hi)
    areas = np.arange(len(lo))[None, :, None, None]

    def classify(dets: slice, f1_thresholds: slice) -> Tuple[np.ndarray, np.ndarray]:
        m = match[dets, ..., f1_thresholds]
        gt = np.where(m >= 0, m, len(data.gt_id))
        # COCOeval stores the matched ground truth's id: a match to id 0 reads as "no match"
        real = gt_id[gt] != 0
        ignored = gt_ignore_padded[gt, areas] | (~real & dt_outside[dets, :, None, None])
        return real & ~ignored, ~real & ~ignored

    num_gt = np.stack([np.bincount(data.gt_cat[~gt_ignore[:, a]], minlength=len(data.cat_ids))
                       for a in range(len(lo))], axis=1)
    return accumulate(data.dt_cat, data.dt_score, data.dt_rank, classify, num_gt,
                      data.has_attributes, match.shape[2:])


def _percent(value: float) -> float:
    return float("nan") if value < 0 else value * 100.0


def evaluate_fashionpedia_json(
    gt: Union[str, os.PathLike, Mapping[str, Any], Any],
    results: Union[str, os.PathLike, Sequence[Mapping[str, Any]]],
    iou_types: Sequence[str] = IOU_TYPES,
    img_ids: Optional[Sequence[int]] = None,
) -> Dict[str, Dict[str, float]]:
    """Fashionpedia AP (IoU + attribute F1) of results against ground truth, per IoU type.

    Args:
        gt: Fashionpedia/COCO GT as a JSON path, dict or COCO-API object; annotations carry
            ``attribute_ids`` (missing = none); ``attributes`` lists the attribute ids (missing:
            the final 294). Annotations lacking ``bbox``/``area`` get them from the mask.
        results: path or list of dicts with ``image_id``, ``category_id``, ``score``,
            ``attribute_ids`` (missing = none), and ``segmentation`` (RLE or polygons) and/or
            ``bbox`` XYWH. Box evaluation uses ``bbox`` (area ``w * h``) or else the mask's box and
            area; mask evaluation ignores ``bbox``. Not modified.
        iou_types: subset of ``("bbox", "segm")``.
        img_ids: evaluate on these images only (default: every GT image).
    Returns:
        ``{iou_type: metrics}`` in percent, ``NaN`` = nothing to measure. ``metrics`` holds
        FPEval's summary keys unprefixed (``AP``, ``AP_IOU50``, ``AP_IOU75``, ``AP_F150``,
        ``AP_F175``, ``AP_IOU50_F150`` ... ``AP_IOU75_F175``, ``APo``, ``APp``, ``APs``, ``APm``,
        ``APl``, ``AR@1``, ``AR@10``, ``AR@100``, ``ARs@100``, ``ARm@100``, ``ARl@100``), the
        IoU-only summary under ``iou/`` (``iou/AP`` is COCO's AP when no ground truth is a crowd;
        it adds ``iou/APa``) and the F1-only summary (IoU ignored) under ``f1/``.
    Raises:
        ValueError: unknown IoU type, results on images not in the GT, attribute ids not in the
            GT's attribute list.
    """
    for iou_type in iou_types:
        if iou_type not in IOU_TYPES:
            raise ValueError(f"iou_type must be one of {IOU_TYPES}, got {iou_type!r}")
    data = build_eval_data(load_gt_dataset(gt), load_results(results), img_ids)
    f1s = data.pair_f1s()
    out: Dict[str, Dict[str, float]] = {}
    for iou_type in iou_types:
        precision, recall = _tables(data, iou_type, f1s)
        metrics: Dict[str, float] = {}
        for name, summary in summarize(precision, recall, data.cat_ids,
                                       data.has_attributes).items():
            metrics.update({SUMMARY_PREFIX[name] + k: _percent(v) for k, v in summary.items()})
        out[iou_type] = metrics
        logger.debug("fashionpedia %s: %s", iou_type, format_fashionpedia_summary(metrics))
    return out


def format_fashionpedia_summary(metrics: Mapping[str, float]) -> str:
    """One line: AP with IoU+F1, IoU only, F1 only, and AP50 for each (percent)."""
    def fmt(key: str) -> str:
        v = metrics.get(key, float("nan"))
        return "nan" if math.isnan(v) else f"{v:.3f}"

    return (f"AP(IoU+F1) {fmt('AP')} [IoU50+F150 {fmt('AP_IOU50_F150')}], "
            f"AP(IoU) {fmt('iou/AP')} [IoU50 {fmt('iou/AP_IOU50')}], AP(F1) {fmt('f1/AP')}")
