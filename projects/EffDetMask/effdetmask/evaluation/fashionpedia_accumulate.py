"""Precision/recall tables from matched detections, and FPEval's summaries of them.

``accumulate`` is ``FPEval.accumulate`` (COCO's interpolated precision at 101 recall points, per
category, area range and max detections, for each IoU and F1 threshold) without its per-threshold
Python loops: the recall-point lookup uses the fact that recall only takes the values
``k / num_gt``, so "first detection reaching recall r" is "the k-th true positive". It keeps the
mean over the recall points instead of the points: FPEval's summaries average every defined
entry of a selection, and a defined (threshold, category, area, max dets) cell always has all 101
points, so the mean of cell means is the same number (up to float summation order).
``summarize`` returns the dictionaries of ``FPEval.summarize`` (``results``, ``resultDet``,
``resultF1``) as fractions, ``-1`` where nothing can be measured.
"""

from __future__ import annotations

from typing import Callable, Dict, Optional, Tuple

import numpy as np

from .fashionpedia_params import (
    AREA_RANGES,
    F1_THRESHOLDS,
    IOU_THRESHOLDS,
    MAX_DETS,
    RECALL_THRESHOLDS,
    SUPERCATEGORY_IDS,
)

__all__ = ["accumulate", "summarize"]


def _precision_at_recall(tps: np.ndarray, fps: np.ndarray, num_gt: np.ndarray
                         ) -> Tuple[np.ndarray, np.ndarray]:
    """Mean interpolated precision over the recall thresholds, and final recall.

    Args:
        tps, fps: bool [A, C, N] true/false positives of the score-sorted detections, per area
            range ``A`` and threshold combination ``C``.
        num_gt: int64 [A] non-ignored ground truths (> 0).
    Returns:
        precision float64 [A, C], recall float64 [A, C].
    """
    num_areas, num_combos, n = tps.shape
    if n == 0:
        return np.zeros((num_areas, num_combos)), np.zeros((num_areas, num_combos))
    tp_sum = np.cumsum(tps, axis=2, dtype=np.float64)
    fp_sum = np.cumsum(fps, axis=2, dtype=np.float64)
    recall = tp_sum[:, :, -1] / num_gt[:, None]
    precision = tp_sum / (fp_sum + tp_sum + np.spacing(1))
    precision = np.maximum.accumulate(precision[:, :, ::-1], axis=2)[:, :, ::-1]
    # first detection whose recall reaches threshold r = the k_r-th true positive, where k_r is
    # the smallest count with k / num_gt >= r (same float division as the reference's recall)
    max_gt = int(num_gt.max())
    first = np.full((num_areas, num_combos, max_gt + 1), n, dtype=np.int64)
    first[:, :, 0] = 0
    a, c, j = np.nonzero(tps)
    first[a, c, tp_sum[a, c, j].astype(np.int64)] = j
    need = np.stack([np.searchsorted(np.arange(g + 1, dtype=np.float64) / g, RECALL_THRESHOLDS,
                                     side="left") for g in num_gt.tolist()])  # [A, R]
    need = np.broadcast_to(need[:, None, :], (num_areas, num_combos, need.shape[1]))
    at = np.take_along_axis(first, need, axis=2)
    values = np.take_along_axis(precision, np.minimum(at, n - 1), axis=2)
    return np.where(at < n, values, 0.0).mean(axis=2), recall


def accumulate(dt_cat: np.ndarray, dt_score: np.ndarray, dt_rank: np.ndarray,
               classify: Callable[[slice, slice], Tuple[np.ndarray, np.ndarray]],
               num_gt: np.ndarray, has_attributes: np.ndarray, num_thresholds: Tuple[int, int]
               ) -> Tuple[np.ndarray, np.ndarray]:
    """FPEval's precision and recall tables.

    Args:
        dt_cat, dt_score, dt_rank: [Nd] detections sorted by (category, image, -score).
        classify: ``(detections, f1_thresholds) -> (tps, fps)``, bool ``[n, A, T, F']`` true /
            false positives (neither = ignored) of a slice of the detections at a slice of the
            F1 thresholds.
        num_gt: int64 [K, A] non-ignored ground truths per category and area range.
        has_attributes: bool [K]; other categories have results only at F1 threshold -1.
        num_thresholds: ``(T, F)``.
    Returns:
        precision (mean over the recall thresholds) and recall, float64 [T, F, K, A, M], -1
        where undefined.
    """
    num_t, num_f = num_thresholds
    num_k, num_areas = num_gt.shape
    precision = np.full((num_t, num_f, num_k, num_areas, len(MAX_DETS)), -1.0)
    recall = np.full((num_t, num_f, num_k, num_areas, len(MAX_DETS)), -1.0)
    starts = np.searchsorted(dt_cat, np.arange(num_k + 1))
    for k in range(num_k):
        areas = np.flatnonzero(num_gt[k] > 0)
        if not len(areas):
            continue
        f_slice = slice(None) if has_attributes[k] else slice(num_f - 1, num_f)
        combos = num_t * (num_f if has_attributes[k] else 1)
        s, e = starts[k], starts[k + 1]
        tps, fps = classify(slice(s, e), f_slice)
        # images in order, then a stable sort by score: FPEval's concatenate + mergesort
        order = np.argsort(-dt_score[s:e], kind="mergesort")
        prev = -1
        for m, max_det in enumerate(MAX_DETS):
            keep = order[dt_rank[s:e][order] < max_det]
            if len(keep) == prev:  # no image has more detections: same as the smaller max_det
                precision[..., k, :, m] = precision[..., k, :, m - 1]
                recall[..., k, :, m] = recall[..., k, :, m - 1]
                continue
            prev = len(keep)
            # [A', T * F', N]: one row per area range and threshold pair
            tp = tps[keep][:, areas].reshape(len(keep), len(areas), combos)
            fp = fps[keep][:, areas].reshape(len(keep), len(areas), combos)
            prec, rec = _precision_at_recall(tp.transpose(1, 2, 0), fp.transpose(1, 2, 0),
                                             num_gt[k, areas])
            precision[:, f_slice, k, areas, m] = prec.reshape(len(areas), num_t, -1).transpose(
                1, 2, 0)
            recall[:, f_slice, k, areas, m] = rec.reshape(len(areas), num_t, -1).transpose(1, 2, 0)
    return precision, recall


def _summary_value(table: np.ndarray, iou: bool, f1: bool, cats: np.ndarray,
                   has_attributes: np.ndarray, iou_thr: Optional[float] = None,
                   f1_thr: Optional[float] = None, area: str = "all", max_det: int = 100) -> float:
    """``FPEval._summarize``: the mean of the defined entries of one selection of a
    ``[T, F, K, A, M]`` table (precision or recall)."""
    num_t = len(IOU_THRESHOLDS)
    if iou and iou_thr is not None:
        t_idx = np.flatnonzero(iou_thr == IOU_THRESHOLDS)
    else:
        t_idx = np.arange(num_t - 1) if iou else np.array([num_t - 1])
    last_f = len(F1_THRESHOLDS) - 1
    if f1 and f1_thr is not None:
        f_attr = np.flatnonzero(f1_thr == F1_THRESHOLDS)
    else:
        f_attr = np.arange(last_f) if f1 else np.array([last_f])
    a = list(AREA_RANGES).index(area)
    m = MAX_DETS.index(max_det)
    table = table[..., a, m]  # [T, F, K]
    v = np.concatenate([table[np.ix_(t_idx, f_attr, cats[has_attributes[cats]])].reshape(-1),
                        table[np.ix_(t_idx, [last_f], cats[~has_attributes[cats]])].reshape(-1)])
    v = v[v > -1]
    return float(np.mean(v)) if v.size else -1.0


def summarize(precision: np.ndarray, recall: np.ndarray, cat_ids: np.ndarray,
              has_attributes: np.ndarray) -> Dict[str, Dict[str, float]]:
    """FPEval's three summaries, as fractions (-1 = nothing to measure).

    Returns:
        ``{"iou_f1": results, "iou": resultDet, "f1": resultF1}``, each with FPEval's keys
        (``APo``/``APa``/``APp``, ``AP``, ``AP_IOU50``, ``AP_IOU75``, ``AP_F150``, ``AP_F175``,
        ``AP_IOU50_F150`` .. ``AP_IOU75_F175``, ``APs``/``APm``/``APl``, ``AR@1``/``AR@10``/
        ``AR@100``, ``ARs@100``/``ARm@100``/``ARl@100``, as far as the summary has them).
    """
    all_cats = np.arange(len(cat_ids))
    out = {}
    for name, f1, iou in (("iou_f1", True, True), ("iou", False, True), ("f1", True, False)):
        def value(ap=True, cats=all_cats, **kw):
            return _summary_value(precision if ap else recall, iou, f1, cats, has_attributes,
                                  **kw)

        res: Dict[str, float] = {}
        for letter, (lo, hi) in SUPERCATEGORY_IDS.items():
            if letter == "a" and f1:
                continue
            res["AP" + letter] = value(cats=all_cats[(cat_ids >= lo) & (cat_ids < hi)])
        res["AP"] = value()
        if iou:
            res["AP_IOU50"] = value(iou_thr=0.5)
            res["AP_IOU75"] = value(iou_thr=0.75)
        if f1:
            res["AP_F150"] = value(f1_thr=0.5)
            res["AP_F175"] = value(f1_thr=0.75)
        if f1 and iou:
            for it in (0.5, 0.75):
                for ft in (0.5, 0.75):
                    res[f"AP_IOU{int(it * 100)}_F1{int(ft * 100)}"] = value(iou_thr=it, f1_thr=ft)
        for area in ("small", "medium", "large"):
            res[f"AP{area[0]}"] = value(area=area)
        for max_det in MAX_DETS:
            res[f"AR@{max_det}"] = value(ap=False, max_det=max_det)
        for area in ("small", "medium", "large"):
            res[f"AR{area[0]}@100"] = value(ap=False, area=area)
        out[name] = res
    return out
