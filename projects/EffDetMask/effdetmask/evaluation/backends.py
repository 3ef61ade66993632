"""COCO AP on COCO-format JSON, with interchangeable COCO API backends.

Two backends implement the same COCO API (``COCO``, ``COCOeval`` with ``evaluate/accumulate/
summarize``, ``stats`` and ``eval["precision"]``): ``pycocotools`` is the reference and
``faster_coco_eval`` the fast one; the tests check that they give identical numbers.

Metrics are returned in **percent** (0..100), as detectron2 does: ``{"bbox": {"AP", "AP50",
"AP75", "APs", "APm", "APl", "AP-<class name>", ...}, "segm": {...}}``. A metric that has no
ground truth to be measured on (a class without instances, an area range without objects) is
``NaN``, never 0; a class *with* ground truth and no detections is 0.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import os
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Union

import numpy as np
import pycocotools.mask as mask_util

from ..structures.masks import rle_to_box_xywh, segmentation_to_rle

__all__ = [
    "BACKENDS",
    "CocoBackend",
    "IOU_TYPES",
    "complete_gt_dataset",
    "evaluate_coco_json",
    "format_per_category_table",
    "get_backend",
    "load_coco_gt",
    "rle_area",
]

logger = logging.getLogger(__name__)

IOU_TYPES = ("bbox", "segm")
SUMMARY_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")  # COCOeval.stats[0:6]


@dataclass(frozen=True)
class CocoBackend:
    """A COCO API implementation.

    Attributes:
        name: backend name (``TEST.EVALUATOR_BACKEND``).
        coco_cls: the ``COCO`` class; ``coco_cls()`` gives an empty object.
        make_eval: ``(coco_gt, coco_dt, iou_type) -> COCOeval`` object.
    """

    name: str
    coco_cls: type
    make_eval: Callable[[Any, Any, str], Any]


def _pycocotools() -> CocoBackend:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    return CocoBackend("pycocotools", COCO, lambda gt, dt, iou: COCOeval(gt, dt, iou))


def _faster_coco_eval() -> CocoBackend:
    from faster_coco_eval import COCO, COCOeval_faster

    # Its progress messages go to debug: the evaluator logs its own summary.
    return CocoBackend(
        "faster_coco_eval",
        COCO,
        lambda gt, dt, iou: COCOeval_faster(gt, dt, iou, print_function=logger.debug),
    )


# Backend name -> factory; the import happens only for the backend asked for.
BACKENDS: Dict[str, Callable[[], CocoBackend]] = {
    "pycocotools": _pycocotools,
    "faster_coco_eval": _faster_coco_eval,
}


def get_backend(name: str) -> CocoBackend:
    """The backend called ``name`` (a key of :data:`BACKENDS`); unknown names raise ``KeyError``."""
    try:
        return BACKENDS[name]()
    except KeyError:
        raise KeyError(
            f"unknown COCO evaluator backend {name!r}; choose from {sorted(BACKENDS)}"
        ) from None


def complete_gt_dataset(dataset: Mapping[str, Any]) -> Dict[str, Any]:
    """Copy of a COCO GT dict where every annotation has ``bbox``, ``area`` and ``iscrowd``.

    Fashionpedia files may carry polygons without ``bbox``; the COCO API needs ``bbox`` for box
    AP and ``area`` for the area ranges. Missing ones are derived from the segmentation (tight
    box on pixel edges; pixel area of the rasterised mask). Present values are kept.

    Args:
        dataset: COCO GT dict (``images`` with ``height``/``width``, ``annotations``,
            ``categories``); not modified.
    Returns:
        a new dict sharing the unchanged parts with ``dataset``.
    """
    sizes = {img["id"]: (int(img["height"]), int(img["width"])) for img in dataset["images"]}
    annotations = []
    for ann in dataset.get("annotations", []):
        ann = dict(ann)
        if "bbox" not in ann or "area" not in ann:
            h, w = sizes[ann["image_id"]]
            rle = segmentation_to_rle(ann["segmentation"], h, w)
            ann.setdefault("bbox", rle_to_box_xywh(rle))
            ann.setdefault("area", rle_area(rle))
        ann.setdefault("iscrowd", 0)
        annotations.append(ann)
    return {**dataset, "annotations": annotations}


def rle_area(rle: Mapping[str, Any]) -> float:
    """Pixel count of a compressed COCO RLE with ``str`` counts (COCO's GT ``area`` of masks)."""
    return float(mask_util.area({"size": rle["size"], "counts": rle["counts"].encode("ascii")}))


def load_coco_gt(gt: Union[str, os.PathLike, Mapping[str, Any], Any], backend: CocoBackend) -> Any:
    """A backend ``COCO`` object for ground truth given as a path, a dict or a COCO object.

    A COCO object of either backend is rebuilt from its ``dataset`` for ``backend``.
    """
    if isinstance(gt, (str, os.PathLike)):
        with open(gt, "r", encoding="utf-8") as f:
            gt = json.load(f)
    elif hasattr(gt, "dataset") and hasattr(gt, "createIndex"):
        gt = gt.dataset
    coco = backend.coco_cls()
    coco.dataset = complete_gt_dataset(gt)
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        coco.createIndex()
    return coco


def _results_for(results: Sequence[Mapping[str, Any]], iou_type: str) -> List[Dict[str, Any]]:
    """Fresh copies of the results for one IoU type (the COCO APIs write into them)."""
    out = [dict(r) for r in results]
    if iou_type == "segm":
        # loadRes takes the area from the box when a box is present; for masks it must be the
        # mask area (it decides the small/medium/large range of unmatched detections).
        for r in out:
            r.pop("bbox", None)
    return out


def _load_results(coco_gt: Any, results: List[Dict[str, Any]], backend: CocoBackend) -> Any:
    if results:
        with contextlib.redirect_stdout(io.StringIO()):
            return coco_gt.loadRes(results)
    # pycocotools' loadRes fails on an empty list; an empty result set is a valid COCO object.
    coco_dt = backend.coco_cls()
    coco_dt.dataset = {
        "images": list(coco_gt.dataset["images"]),
        "categories": list(coco_gt.dataset["categories"]),
        "annotations": [],
    }
    with contextlib.redirect_stdout(io.StringIO()):
        coco_dt.createIndex()
    return coco_dt


def _nan_if_missing(value: float) -> float:
    # COCOeval reports -1 for "nothing to measure"
    return float("nan") if value < 0 else float(value) * 100.0


def _per_category_ap(coco_eval: Any, coco_gt: Any) -> Dict[str, float]:
    # precision: [T iou thresholds, R recall points, K classes, A area ranges, M max dets]
    precision = coco_eval.eval["precision"]
    out: Dict[str, float] = {}
    for k, cat_id in enumerate(coco_eval.params.catIds):
        p = precision[:, :, k, 0, -1]
        p = p[p > -1]
        name = coco_gt.cats[cat_id].get("name", str(cat_id))
        out[f"AP-{name}"] = float(np.mean(p)) * 100.0 if p.size else float("nan")
    return out


def evaluate_coco_json(
    gt_json_or_coco: Union[str, os.PathLike, Mapping[str, Any], Any],
    results: Union[str, os.PathLike, Sequence[Mapping[str, Any]]],
    iou_types: Sequence[str] = IOU_TYPES,
    backend: str = "pycocotools",
    img_ids: Optional[Sequence[int]] = None,
) -> Dict[str, Dict[str, float]]:
    """COCO AP of results against ground truth, per IoU type.

    Args:
        gt_json_or_coco: COCO GT as a JSON path, a dict or a COCO object (either backend).
            Annotations lacking ``bbox``/``area`` get them from their segmentation.
        results: COCO results (path or list of dicts): ``image_id``, ``category_id``, ``score``,
            ``bbox`` ``[x, y, w, h]`` and/or ``segmentation`` (compressed RLE). For ``"bbox"``
            results without ``bbox`` use the box of their mask; for ``"segm"`` any ``bbox`` is
            ignored. Not modified.
        iou_types: subset of ``("bbox", "segm")``.
        backend: a key of :data:`BACKENDS`.
        img_ids: evaluate on these images only (default: every GT image).
    Returns:
        ``{iou_type: {"AP", "AP50", "AP75", "APs", "APm", "APl", "AP-<class>"...}}`` in percent;
        ``NaN`` where there is no ground truth to measure.
    """
    impl = get_backend(backend)
    if isinstance(results, (str, os.PathLike)):
        with open(results, "r", encoding="utf-8") as f:
            results = json.load(f)
    coco_gt = load_coco_gt(gt_json_or_coco, impl)
    out: Dict[str, Dict[str, float]] = {}
    for iou_type in iou_types:
        if iou_type not in IOU_TYPES:
            raise ValueError(f"iou_type must be one of {IOU_TYPES}, got {iou_type!r}")
        coco_dt = _load_results(coco_gt, _results_for(results, iou_type), impl)
        coco_eval = impl.make_eval(coco_gt, coco_dt, iou_type)
        if img_ids is not None:
            coco_eval.params.imgIds = sorted(int(i) for i in img_ids)
        summary = io.StringIO()
        with contextlib.redirect_stdout(summary):  # pycocotools prints its summary table
            coco_eval.evaluate()
            coco_eval.accumulate()
            coco_eval.summarize()
        logger.debug("%s %s summary:\n%s", impl.name, iou_type, summary.getvalue())
        metrics = {m: _nan_if_missing(v) for m, v in zip(SUMMARY_METRICS, coco_eval.stats[:6])}
        metrics.update(_per_category_ap(coco_eval, coco_gt))
        out[iou_type] = metrics
    return out


def format_per_category_table(metrics: Mapping[str, float], columns: int = 3) -> str:
    """Per-category AP as a text table (``category | AP`` repeated ``columns`` times).

    Args:
        metrics: one IoU type's metrics from :func:`evaluate_coco_json`.
        columns: category/AP pairs per row.
    Returns:
        the table; ``nan`` marks classes without ground truth.
    """
    pairs = [(k[3:], v) for k, v in metrics.items() if k.startswith("AP-")]
    if not pairs:
        return ""
    width = max(len(name) for name, _ in pairs)
    cells = [f"{name:<{width}} | {'nan' if math.isnan(v) else f'{v:6.3f}':>6}" for name, v in pairs]
    rows = [cells[i : i + columns] for i in range(0, len(cells), columns)]
    return "\n".join(" | ".join(row) for row in rows)
