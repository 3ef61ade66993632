"""Ground truth and detections of a Fashionpedia evaluation as flat arrays, grouped by image and
category, with the IoU and attribute F1 of every (detection, ground truth) pair of a group.

The conventions are those of the COCO API (``COCOeval._prepare``/``computeIoU``, ``loadRes``) and
of FPEval (``computeF1``), so that the matching gives the same numbers:

* evaluated images: every ground-truth image (or ``img_ids``); categories: the ground truth's
  ``categories`` list; detections of other categories are not evaluated, detections on unknown
  images are an error.
* a ground truth is ignored when ``iscrowd``; crowd IoU is intersection over detection area.
* per (image, category) the detections are sorted by score (stable: ties keep file order) and the
  first 100 kept; ground truths keep file order.
* detection area: box ``w * h`` for a result with a ``bbox``, else the mask's pixel count (also in
  box evaluation, where the box is then the mask's box); ground-truth area: its ``area`` field.
* attribute F1 between the attribute sets ``P`` (detection) and ``G`` (ground truth) as FPEval
  computes it, scikit-learn's ``f1_score(average="macro")`` on two multi-hot vectors over the
  ``n`` attributes of the ground truth's ``attributes`` list: the mean of the F1 of the label "1"
  (``2|P&G| / (|P|+|G|)``) and of the label "0" (``2|~P&~G| / (2n-|P|-|G|)``), each counted only
  when the label occurs in either vector. A file without an ``attributes`` list uses the final
  294-attribute taxonomy.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import pycocotools.mask as mask_util

from ..data.taxonomy import load_taxonomy
from .backends import complete_gt_dataset
from .fashionpedia_params import CATEGORIES_WITH_ATTRIBUTES, MAX_DETS

__all__ = ["EvalData", "build_eval_data", "load_gt_dataset", "load_results"]

JsonLike = Union[str, os.PathLike, Mapping[str, Any], Any]


def load_gt_dataset(gt: JsonLike) -> Dict[str, Any]:
    """Ground truth (path, dict or COCO-API object) -> dict whose annotations all have ``bbox``,
    ``area`` and ``iscrowd`` (derived from the segmentation where missing)."""
    if isinstance(gt, (str, os.PathLike)):
        with open(gt, "r", encoding="utf-8") as f:
            gt = json.load(f)
    elif hasattr(gt, "dataset") and hasattr(gt, "createIndex"):
        gt = gt.dataset
    return complete_gt_dataset(gt)


def load_results(results: Union[str, os.PathLike, Sequence[Mapping[str, Any]]]
                 ) -> List[Mapping[str, Any]]:
    """Results as a list of dicts (read from a path if one is given)."""
    if isinstance(results, (str, os.PathLike)):
        with open(results, "r", encoding="utf-8") as f:
            results = json.load(f)
    return list(results)


def _rle(segm: Any, height: int, width: int) -> Dict[str, Any]:
    """COCO ``annToRLE``: polygons or (un)compressed RLE -> compressed RLE with ``bytes`` counts."""
    if isinstance(segm, list):
        rle = mask_util.merge(mask_util.frPyObjects(segm, height, width))
    elif isinstance(segm["counts"], list):
        rle = mask_util.frPyObjects(segm, height, width)
    else:
        rle = segm
    counts = rle["counts"]
    return {"size": list(rle["size"]),
            "counts": counts.encode("ascii") if isinstance(counts, str) else counts}


def _attribute_list(gt: Mapping[str, Any]) -> Tuple[List[int], List[str]]:
    """Sorted attribute ids of the ground truth (the final taxonomy if it has none) and their
    supercategories (attribute groups)."""
    attrs = {int(a["id"]): str(a.get("supercategory", "")) for a in gt.get("attributes") or []}
    if not attrs:
        tax = load_taxonomy()
        attrs = dict(zip(tax.attribute_ids, tax.attribute_supercategories))
    ids = sorted(attrs)
    return ids, [attrs[i] for i in ids]


def _multi_hot(lists: Sequence[Sequence[int]], columns: Dict[int, int], what: str) -> np.ndarray:
    """``bool [len(lists), n]``; duplicate ids count once."""
    out = np.zeros((len(lists), len(columns)), dtype=bool)
    lens = np.fromiter((len(x) for x in lists), dtype=np.int64, count=len(lists))
    if lens.sum():
        ids = np.fromiter((int(a) for x in lists for a in x), dtype=np.int64, count=int(lens.sum()))
        lookup = np.full(max(max(columns) + 1, int(ids.max()) + 1), -1, dtype=np.int64)
        lookup[list(columns)] = list(columns.values())
        cols = lookup[np.clip(ids, 0, None)]
        bad = (cols < 0) | (ids < 0)
        if bad.any():
            raise ValueError(f"{what}: attribute id {int(ids[bad][0])} is not in the ground "
                             "truth's attribute list")
        out[np.repeat(np.arange(len(lists)), lens), cols] = True
    return out


@dataclass
class EvalData:
    """Ground truth and detections of one evaluation, sorted by (category, image).

    ``K`` categories (``cat_ids``, sorted), ``Ng`` ground truths, ``Nd`` detections (at most
    100 per image and category, sorted by score within it), ``N`` groups (image, category pairs
    with a ground truth or a detection), ``P`` pairs, ``n`` attributes.

    Attributes:
        cat_ids: int64 [K]; has_attributes: bool [K], FPEval's categories with attributes.
        attribute_ids: int64 [n] the attribute id of each multi-hot column; attribute_groups:
            their supercategories.
        gt_cat, gt_img: int64 [Ng] category index and image index (into the sorted image ids).
        gt_id: int64 [Ng] annotation ids (a match to id 0 counts as no match, as in COCOeval).
        gt_area: float64 [Ng]; gt_crowd: bool [Ng]; gt_attrs: bool [Ng, n].
        dt_cat, dt_img: int64 [Nd]; dt_score: float64 [Nd]; dt_rank: int64 [Nd] rank by score in
            its group; dt_attrs: bool [Nd, n]; dt_source: int64 [Nd] index into the results.
        group_cat, group_det_start, group_num_det, group_gt_start, group_num_gt,
            group_pair_start: int64 [N]; the pairs of a group are ``pair_start + d * num_gt + g``.
        pair_det, pair_gt: int64 [P] detection and ground-truth index of each pair.
    """

    cat_ids: np.ndarray
    has_attributes: np.ndarray
    attribute_ids: np.ndarray
    attribute_groups: List[str]
    gt_cat: np.ndarray
    gt_img: np.ndarray
    gt_id: np.ndarray
    gt_area: np.ndarray
    gt_crowd: np.ndarray
    gt_attrs: np.ndarray
    dt_cat: np.ndarray
    dt_img: np.ndarray
    dt_score: np.ndarray
    dt_rank: np.ndarray
    dt_attrs: np.ndarray
    dt_source: np.ndarray
    group_cat: np.ndarray
    group_det_start: np.ndarray
    group_num_det: np.ndarray
    group_gt_start: np.ndarray
    group_num_gt: np.ndarray
    group_pair_start: np.ndarray
    pair_det: np.ndarray
    pair_gt: np.ndarray
    _gt_anns: List[Mapping[str, Any]]
    _results: List[Mapping[str, Any]]
    _sizes: np.ndarray  # int64 [num images, 2] height, width

    def dt_geometry(self, iou_type: str):
        """Detections' ``(boxes or RLEs, area float64 [Nd])`` for ``iou_type`` (see module doc)."""
        res = [self._results[i] for i in self.dt_source]
        hw = self._sizes[self.dt_img]
        rles = None
        if iou_type == "segm" or any(not r.get("bbox") for r in res):
            rles = [_rle(r["segmentation"], h, w) if "segmentation" in r else None
                    for r, (h, w) in zip(res, hw.tolist())]
        if iou_type == "segm":
            if any(r is None for r in rles):
                raise ValueError("segm evaluation: a result has no 'segmentation'")
            # one call per mask: pycocotools 2.0.11's area() of a list overflows past 255 masks
            area = np.array([float(mask_util.area(r)) for r in rles], dtype=np.float64)
            return rles, area
        boxes = np.zeros((len(res), 4), dtype=np.float64)
        area = np.zeros(len(res), dtype=np.float64)
        for i, r in enumerate(res):
            if r.get("bbox"):
                boxes[i] = r["bbox"]
                area[i] = float(r["bbox"][2]) * float(r["bbox"][3])
            elif rles[i] is not None:
                boxes[i] = mask_util.toBbox(rles[i])
                area[i] = float(mask_util.area(rles[i]))
            else:
                raise ValueError("bbox evaluation: a result has neither 'bbox' nor 'segmentation'")
        return boxes, area

    def gt_geometry(self, iou_type: str):
        """Ground truths' boxes (float64 [Ng, 4]) or RLEs for ``iou_type``."""
        if iou_type == "segm":
            hw = self._sizes[self.gt_img].tolist()
            return [_rle(a["segmentation"], h, w) for a, (h, w) in zip(self._gt_anns, hw)]
        return np.array([a["bbox"] for a in self._gt_anns], dtype=np.float64).reshape(-1, 4)

    def pair_ious(self, iou_type: str, dt_geometry: Any) -> np.ndarray:
        """float64 [P]: COCO IoU of each pair (``maskUtils.iou`` semantics, crowd-aware)."""
        gt_geometry = self.gt_geometry(iou_type)
        if iou_type == "bbox":
            return _box_iou_pairs(dt_geometry[self.pair_det], gt_geometry[self.pair_gt],
                                  self.gt_crowd[self.pair_gt])
        out = np.zeros(len(self.pair_det), dtype=np.float64)
        crowd = self.gt_crowd.astype(np.uint8)
        both = np.flatnonzero((self.group_num_det > 0) & (self.group_num_gt > 0))
        for n in both.tolist():
            d0, nd = int(self.group_det_start[n]), int(self.group_num_det[n])
            g0, ng = int(self.group_gt_start[n]), int(self.group_num_gt[n])
            p0 = int(self.group_pair_start[n])
            out[p0:p0 + nd * ng] = mask_util.iou(dt_geometry[d0:d0 + nd], gt_geometry[g0:g0 + ng],
                                                 crowd[g0:g0 + ng]).reshape(-1)
        return out

    def pair_f1s(self) -> np.ndarray:
        """float64 [P]: FPEval's attribute F1 of each pair (see module doc)."""
        n = self.gt_attrs.shape[1]
        tp = np.count_nonzero(self.dt_attrs[self.pair_det] & self.gt_attrs[self.pair_gt], axis=1)
        p = np.count_nonzero(self.dt_attrs, axis=1)[self.pair_det]
        g = np.count_nonzero(self.gt_attrs, axis=1)[self.pair_gt]
        pos_den, neg_den = p + g, 2 * n - p - g
        with np.errstate(divide="ignore", invalid="ignore"):
            f_pos = 2.0 * tp / pos_den
            f_neg = 2.0 * (n - p - g + tp) / neg_den
        has_pos, has_neg = pos_den > 0, neg_den > 0
        both = (f_pos + f_neg) / 2.0
        return np.where(has_pos & has_neg, both, np.where(has_pos, f_pos, f_neg))


def _box_iou_pairs(dt: np.ndarray, gt: np.ndarray, crowd: np.ndarray) -> np.ndarray:
    """pycocotools' ``bbIou`` for aligned rows of XYWH boxes, with the same operation order."""
    w = np.minimum(dt[:, 2] + dt[:, 0], gt[:, 2] + gt[:, 0]) - np.maximum(dt[:, 0], gt[:, 0])
    h = np.minimum(dt[:, 3] + dt[:, 1], gt[:, 3] + gt[:, 1]) - np.maximum(dt[:, 1], gt[:, 1])
    inter = w * h
    da = dt[:, 2] * dt[:, 3]
    union = np.where(crowd, da, da + gt[:, 2] * gt[:, 3] - inter)
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = inter / union
    return np.where((w > 0) & (h > 0), iou, 0.0)


def build_eval_data(gt: Mapping[str, Any], results: Sequence[Mapping[str, Any]],
                    img_ids: Optional[Sequence[int]] = None) -> EvalData:
    """Sort and group a completed ground truth (:func:`load_gt_dataset`) and its results.

    Raises:
        ValueError: a result on an image the ground truth lacks, or an attribute id outside the
            ground truth's attribute list.
    """
    images = {int(img["id"]): img for img in gt["images"]}
    unknown = {int(r["image_id"]) for r in results} - images.keys()
    if unknown:
        raise ValueError(f"results refer to {len(unknown)} image(s) not in the ground truth, "
                         f"e.g. {sorted(unknown)[:5]}")
    image_ids = sorted(images) if img_ids is None else sorted({int(i) for i in img_ids})
    img_index = {i: k for k, i in enumerate(image_ids)}
    sizes = np.array([[int(images[i]["height"]), int(images[i]["width"])] for i in image_ids],
                     dtype=np.int64).reshape(-1, 2)
    cat_ids = np.array(sorted({int(c["id"]) for c in gt.get("categories", [])}), dtype=np.int64)
    cat_index = {int(c): k for k, c in enumerate(cat_ids)}
    attribute_ids, attribute_groups = _attribute_list(gt)
    columns = {a: k for k, a in enumerate(attribute_ids)}

    anns = [a for a in gt.get("annotations", [])
            if int(a["image_id"]) in img_index and int(a["category_id"]) in cat_index]
    gt_cat = np.array([cat_index[int(a["category_id"])] for a in anns], dtype=np.int64)
    gt_img = np.array([img_index[int(a["image_id"])] for a in anns], dtype=np.int64)
    g_order = np.lexsort((np.arange(len(anns)), gt_img, gt_cat))
    anns = [anns[i] for i in g_order]
    gt_cat, gt_img = gt_cat[g_order], gt_img[g_order]

    keep = [i for i, r in enumerate(results)
            if int(r["image_id"]) in img_index and int(r["category_id"]) in cat_index]
    res = [results[i] for i in keep]
    dt_cat = np.array([cat_index[int(r["category_id"])] for r in res], dtype=np.int64)
    dt_img = np.array([img_index[int(r["image_id"])] for r in res], dtype=np.int64)
    dt_score = np.array([float(r["score"]) for r in res], dtype=np.float64)
    d_order = np.lexsort((np.arange(len(res)), -dt_score, dt_img, dt_cat))
    dt_cat, dt_img, dt_score = dt_cat[d_order], dt_img[d_order], dt_score[d_order]
    dt_source = np.asarray(keep, dtype=np.int64)[d_order]

    num_images = len(image_ids)
    g_key, d_key = gt_cat * num_images + gt_img, dt_cat * num_images + dt_img
    keys = np.union1d(g_key, d_key)
    g_start = np.searchsorted(g_key, keys)
    num_gt = np.searchsorted(g_key, keys, side="right") - g_start
    d_start = np.searchsorted(d_key, keys)
    d_count = np.searchsorted(d_key, keys, side="right") - d_start
    # rank of each detection in its group; COCOeval keeps the first maxDets[-1]
    group_of_det = np.repeat(np.arange(len(keys)), d_count)
    rank = np.arange(len(d_key)) - d_start[group_of_det]
    kept = rank < MAX_DETS[-1]
    new_start = np.cumsum(np.minimum(d_count, MAX_DETS[-1])) - np.minimum(d_count, MAX_DETS[-1])
    num_det = np.minimum(d_count, MAX_DETS[-1])
    dt_cat, dt_img, dt_score = dt_cat[kept], dt_img[kept], dt_score[kept]
    dt_source, rank = dt_source[kept], rank[kept]

    pair_count = num_det * num_gt
    pair_start = np.cumsum(pair_count) - pair_count
    groups = np.repeat(np.arange(len(keys)), pair_count)
    local = np.arange(int(pair_count.sum())) - pair_start[groups]
    pair_det = new_start[groups] + local // np.maximum(num_gt[groups], 1)
    pair_gt = g_start[groups] + local % np.maximum(num_gt[groups], 1)

    return EvalData(
        cat_ids=cat_ids,
        has_attributes=np.array([c in CATEGORIES_WITH_ATTRIBUTES for c in cat_ids.tolist()],
                                dtype=bool),
        attribute_ids=np.asarray(attribute_ids, dtype=np.int64), attribute_groups=attribute_groups,
        gt_cat=gt_cat, gt_img=gt_img,
        gt_id=np.array([int(a["id"]) for a in anns], dtype=np.int64),
        gt_area=np.array([float(a["area"]) for a in anns], dtype=np.float64),
        gt_crowd=np.array([bool(a.get("iscrowd", 0)) for a in anns], dtype=bool),
        gt_attrs=_multi_hot([a.get("attribute_ids") or [] for a in anns], columns,
                            "ground truth"),
        dt_cat=dt_cat, dt_img=dt_img, dt_score=dt_score, dt_rank=rank,
        dt_attrs=_multi_hot([results[i].get("attribute_ids") or [] for i in dt_source.tolist()],
                            columns, "results"),
        dt_source=dt_source, group_cat=keys // max(num_images, 1),
        group_det_start=new_start, group_num_det=num_det, group_gt_start=g_start,
        group_num_gt=num_gt, group_pair_start=pair_start, pair_det=pair_det, pair_gt=pair_gt,
        _gt_anns=anns, _results=list(results), _sizes=sizes,
    )
