"""COCO's greedy detection-to-ground-truth matching with FPEval's attribute-F1 constraint,
for every (area range, IoU threshold, F1 threshold) at once, vectorised over image/category groups.

The rule (``COCOeval.evaluateImg``, ``FPEval.evaluateImg``): detections in score order; each takes,
among the not yet matched ground truths of its group (crowd ones stay available in COCOeval's
categories without attributes; FPEval's own loop, used for categories with attributes, does not
reuse them), walking them in order with the non-ignored ones first, every one whose IoU and F1 are
both at least the best so far (starting from the thresholds); a walk that has found a non-ignored
match stops at the first ignored one. The walk is a chain, not an argmax, when two quantities must
both grow, so it is replayed here ground truth by ground truth — a Python loop over the few ground
truths of a group and over detection ranks, each step a numpy operation on all groups of the same
size and all thresholds at once. Non-ignored and ignored ground truths form two independent
chains; the ignored one counts only when the first found nothing.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from .fashionpedia_data import EvalData

__all__ = ["greedy_match"]


def _padded(values: np.ndarray, data: EvalData, groups: np.ndarray, num_gt: int) -> np.ndarray:
    """Pair values of ``groups`` (all with ``num_gt`` ground truths) -> ``[n, D_max, num_gt]``."""
    num_det = data.group_num_det[groups]
    rows = np.repeat(np.arange(len(groups)), num_det)
    ranks = np.arange(int(num_det.sum())) - np.repeat(np.cumsum(num_det) - num_det, num_det)
    flat = (data.group_pair_start[groups][rows] + ranks * num_gt)[:, None] + np.arange(num_gt)
    out = np.zeros((len(groups), int(num_det.max()), num_gt), dtype=np.float64)
    out[rows, ranks] = values[flat]
    return out


def greedy_match(data: EvalData, groups: np.ndarray, ious: np.ndarray, f1s: Optional[np.ndarray],
                 gt_ignore: np.ndarray, iou_thresholds: np.ndarray, f1_thresholds: np.ndarray,
                 reuse_crowd: bool, out: np.ndarray) -> None:
    """Match the detections of ``groups`` and write the matched ground truths into ``out``.

    Args:
        data: the evaluation's groups and pairs.
        groups: int64 indices of the groups to match (those of one kind of category).
        ious: float64 [P] IoU of every pair; f1s: float64 [P] F1 of every pair, or ``None``
            when ``f1_thresholds`` is only ``[-1]``.
        gt_ignore: bool [Ng, A] ground truth ignored in area range ``a`` (crowd or outside).
        iou_thresholds: float64 [T]; f1_thresholds: float64 [F]; ``-1`` = no constraint.
        reuse_crowd: a matched crowd ground truth stays available (COCOeval) or not (FPEval).
        out: int64 [Nd, A, T, F], filled with -1 by the caller; receives, for each detection of
            ``groups``, the index of its ground truth (into ``data.gt_*``) or -1.
    """
    num_areas = gt_ignore.shape[1]
    thr_i = np.minimum(iou_thresholds, 1 - 1e-10)[None, None, :, None]
    thr_f = np.minimum(f1_thresholds, 1 - 1e-10)[None, None, None, :]
    combos = (num_areas, len(iou_thresholds), len(f1_thresholds))
    groups = groups[(data.group_num_det[groups] > 0) & (data.group_num_gt[groups] > 0)]
    for num_gt in np.unique(data.group_num_gt[groups]).tolist():
        sel = groups[data.group_num_gt[groups] == num_gt]
        sel = sel[np.argsort(-data.group_num_det[sel], kind="stable")]
        num_det = data.group_num_det[sel]
        iou_b = _padded(ious, data, sel, num_gt)
        f1_b = _padded(f1s, data, sel, num_gt) if f1s is not None else None
        gts = data.group_gt_start[sel][:, None] + np.arange(num_gt)  # [n, G]
        ignored = gt_ignore[gts].transpose(0, 2, 1)[:, :, None, None, :]  # [n, A, 1, 1, G]
        reusable = (data.gt_crowd[gts] if reuse_crowd else np.zeros(gts.shape, bool))
        reusable = reusable[:, None, None, None, :]
        matched = np.zeros((len(sel),) + combos + (num_gt,), dtype=bool)
        for d in range(int(num_det[0])):
            k = int(np.count_nonzero(num_det > d))
            best = _walk(iou_b[:k, d], None if f1_b is None else f1_b[:k, d],
                         ~matched[:k] | reusable[:k], ignored[:k], thr_i, thr_f)
            hit = best >= 0
            out[data.group_det_start[sel[:k]] + d] = np.where(
                hit, gts[:k, 0][:, None, None, None] + best, -1)
            idx = np.nonzero(hit)
            matched[idx + (best[hit],)] = True


def _walk(iou: np.ndarray, f1: Optional[np.ndarray], available: np.ndarray, ignored: np.ndarray,
          thr_i: np.ndarray, thr_f: np.ndarray) -> np.ndarray:
    """One detection rank of ``k`` groups: the ground truth each (area, IoU thr, F1 thr) takes.

    Args:
        iou, f1: [k, G] this detection's IoU / F1 with the group's ground truths.
        available: bool [k, A, T, F, G]; ignored: bool [k, A, 1, 1, G].
        thr_i: [1, 1, T, 1]; thr_f: [1, 1, 1, F] thresholds (capped below 1).
    Returns:
        int64 [k, A, T, F]: local ground-truth index, -1 = no match.
    """
    shape = available.shape[:-1]
    if iou.shape[1] == 1:  # one ground truth: the walk is a single test
        ok = available[..., 0] & (iou[:, 0, None, None, None] >= thr_i)
        if f1 is not None:
            ok &= f1[:, 0, None, None, None] >= thr_f
        return np.where(ok, 0, -1)
    # chain 0 walks the non-ignored ground truths, chain 1 the ignored ones
    cur_i = [np.broadcast_to(thr_i, shape).copy() for _ in range(2)]
    cur_f = [np.broadcast_to(thr_f, shape).copy() for _ in range(2)] if f1 is not None else None
    best = [np.full(shape, -1, dtype=np.int64) for _ in range(2)]
    for g in range(iou.shape[1]):
        value_i = iou[:, g, None, None, None]
        ok_base = available[..., g]
        ign = ignored[..., g]
        for chain, in_chain in enumerate((~ign, ign)):
            if not in_chain.any():
                continue  # no ground truth of this chain at position g (a small array)
            ok = ok_base & in_chain & (value_i >= cur_i[chain])
            if f1 is not None:
                value_f = f1[:, g, None, None, None]
                ok &= value_f >= cur_f[chain]
                np.copyto(cur_f[chain], value_f, where=ok)
            np.copyto(cur_i[chain], value_i, where=ok)
            np.copyto(best[chain], g, where=ok)
    return np.where(best[0] >= 0, best[0], best[1])
