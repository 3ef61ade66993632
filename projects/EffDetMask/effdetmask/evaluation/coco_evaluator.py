"""detectron2-style COCO evaluator: box and mask AP of model outputs at the original resolution.

Ground truth is the dataset's *original* annotations (dataset dicts: ``bbox`` XYWH, polygons or
RLE, at the original image size), never the letterboxed training targets. Predictions are model
outputs (``docs/interfaces.md``), already mapped back to the original image; masks are encoded
to RLE as they arrive so that memory stays at a few hundred bytes per detection.

Metrics are in percent (see :mod:`.backends`). Category ids are the contiguous 0..K-1 classes
everywhere; the results JSON maps them back to dataset ids when the metadata has
``thing_dataset_id_to_contiguous_id``.

Attributes: model outputs with ``attribute_ids`` (per instance the sparse Fashionpedia ids it
predicts) give results with ``attribute_ids``, as in Fashionpedia's results format. When they do
and the dataset has attributes, each IoU type's metrics also get Fashionpedia's AP with IoU and
attribute F1 and the attribute F1 keys of :mod:`.attribute_eval` (``AP_IOU_F1``,
``AP_IOU50_F150``, ``AP_IOU``, ``ATTR_F1``, ``ATTR_F1-<group>``), and the per-group table is logged.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np
import torch
import torch.distributed as dist

from ..data.catalog import DatasetCatalog, MetadataCatalog
from ..data.mapper import attribute_ids_known
from ..data.taxonomy import load_taxonomy
from ..structures.boxes import xyxy_to_xywh
from ..structures.masks import coco_rle_encode, segmentation_to_rle
from .attribute_eval import attribute_metrics, results_have_attributes
from .backends import (
    IOU_TYPES,
    evaluate_coco_json,
    format_per_category_table,
    get_backend,
    rle_area,
)

__all__ = ["COCOEvaluator", "dataset_dicts_to_coco", "instances_to_coco_json"]

logger = logging.getLogger(__name__)

RESULTS_FILE = "coco_instances_results.json"


def taxonomy_attributes() -> List[Dict[str, Any]]:
    """The final taxonomy's 294 attributes as a Fashionpedia ``attributes`` list (id, name,
    supercategory = attribute group)."""
    tax = load_taxonomy()
    return [{"id": int(i), "name": n, "supercategory": s} for i, n, s in
            zip(tax.attribute_ids, tax.attribute_names, tax.attribute_supercategories)]


def dataset_dicts_to_coco(
    dataset_dicts: Sequence[Mapping[str, Any]], class_names: Sequence[str]
) -> Dict[str, Any]:
    """Dataset dicts -> COCO GT dict at the original resolution.

    Args:
        dataset_dicts: detectron2-style dicts (``image_id``, ``height``, ``width``,
            ``annotations`` with ``bbox`` XYWH, ``category_id`` 0..K-1, ``segmentation`` polygons
            or RLE, ``iscrowd``, optionally ``attribute_ids`` and ``attribute_ids_known``).
        class_names: K names; category ``k`` is named ``class_names[k]``.
    Returns:
        COCO dict; segmentations as compressed RLE (``str`` counts), ``area`` = mask pixel area
        unless the dict carries ``area``, annotation ids 1..N. When any annotation has
        ``attribute_ids``, the dict is in Fashionpedia's format: every annotation gets
        ``attribute_ids`` (sparse ids, sorted; ``[]`` when missing) and ``attribute_ids_known``,
        and the dict gets the taxonomy's ``attributes`` list (an unknown set, e.g. a blank Kaggle
        cell, still counts as "no attributes" in Fashionpedia's F1).
    """
    with_attributes = any("attribute_ids" in a for r in dataset_dicts
                          for a in r.get("annotations", []))
    images, annotations = [], []
    for record in dataset_dicts:
        h, w = int(record["height"]), int(record["width"])
        images.append({"id": int(record["image_id"]), "height": h, "width": w,
                       "file_name": record.get("file_name", "")})
        for ann in record.get("annotations", []):
            out = {
                "id": len(annotations) + 1,
                "image_id": int(record["image_id"]),
                "category_id": int(ann["category_id"]),
                "bbox": [float(v) for v in ann["bbox"]],
                "iscrowd": int(ann.get("iscrowd", 0)),
            }
            if "segmentation" in ann:
                rle = segmentation_to_rle(ann["segmentation"], h, w)
                out["segmentation"] = rle
                out["area"] = float(ann.get("area", rle_area(rle)))
            else:
                out["area"] = float(ann.get("area", out["bbox"][2] * out["bbox"][3]))
            if with_attributes:
                out["attribute_ids"] = sorted({int(a) for a in ann.get("attribute_ids", ())})
                out["attribute_ids_known"] = attribute_ids_known(ann)
            annotations.append(out)
    categories = [{"id": k, "name": str(n)} for k, n in enumerate(class_names)]
    gt = {"images": images, "annotations": annotations, "categories": categories}
    if with_attributes:
        gt["attributes"] = taxonomy_attributes()
    return gt


def instances_to_coco_json(instances: Mapping[str, Any], image_id: int, height: int,
                           width: int) -> List[Dict[str, Any]]:
    """One image's model output -> COCO results (contiguous category ids).

    Args:
        instances: ``boxes`` float ``[N, 4]`` xyxy original pixels, ``scores`` ``[N]``,
            ``classes`` int ``[N]``, and ``masks`` bool ``[N, height, width]`` or ``masks_rle``
            (N COCO RLE dicts of size ``[height, width]``) or neither (box-only model);
            optionally ``attribute_ids``: N sequences of sparse Fashionpedia attribute ids.
        image_id: the image's id.
        height, width: original image size; masks must have it (not the letterbox size).
    Returns:
        N dicts with ``image_id``, ``category_id``, ``score``, ``bbox`` XYWH, with masks
        ``segmentation`` (compressed RLE, ``str`` counts), and with attributes ``attribute_ids``
        (sorted ``int`` list, Fashionpedia's results format).
    """
    boxes_xywh = xyxy_to_xywh(torch.as_tensor(instances["boxes"]).detach().float().cpu())
    scores = torch.as_tensor(instances["scores"]).detach().float().cpu().tolist()
    classes = torch.as_tensor(instances["classes"]).detach().cpu().tolist()
    n = len(scores)
    rles: Optional[List[Dict[str, Any]]] = None
    if instances.get("masks_rle") is not None:
        rles = [segmentation_to_rle(r, height, width) for r in instances["masks_rle"]]
    elif instances.get("masks") is not None:
        masks = torch.as_tensor(instances["masks"]).detach().cpu()
        if n and tuple(masks.shape[1:]) != (height, width):
            raise ValueError(
                f"image {image_id}: masks are {tuple(masks.shape[1:])}, the original image is "
                f"{(height, width)}; outputs must be mapped back from the letterbox"
            )
        rles = [coco_rle_encode(m) for m in masks.numpy().astype(np.uint8, copy=False)]
    if rles is not None and len(rles) != n:
        raise ValueError(f"image {image_id}: {len(rles)} masks for {n} detections")
    attrs: Optional[List[List[int]]] = None
    if instances.get("attribute_ids") is not None:
        attrs = [sorted({int(a) for a in torch.as_tensor(ids).reshape(-1).tolist()})
                 for ids in instances["attribute_ids"]]
        if len(attrs) != n:
            raise ValueError(f"image {image_id}: {len(attrs)} attribute sets for {n} detections")
    results = []
    for i in range(n):
        r = {"image_id": int(image_id), "category_id": int(classes[i]), "score": float(scores[i]),
             "bbox": [float(v) for v in boxes_xywh[i].tolist()]}
        if rles is not None:
            r["segmentation"] = rles[i]
        if attrs is not None:
            r["attribute_ids"] = attrs[i]
        results.append(r)
    return results


def _world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


class COCOEvaluator:
    """Box and mask COCO AP of a dataset, detectron2's ``reset/process/evaluate`` protocol.

    Args:
        dataset_name: a registered dataset; its dicts are the ground truth, its metadata gives
            ``thing_classes`` (names) and ``thing_dataset_id_to_contiguous_id`` (for the JSON).
            May be ``None`` when ``dataset_dicts`` is given.
        output_dir: where ``coco_instances_results.json`` is written (rank 0); ``None`` = nowhere.
        backend: ``"faster_coco_eval"`` or ``"pycocotools"`` (``TEST.EVALUATOR_BACKEND``).
        iou_types: subset of ``("bbox", "segm")``; ``segm`` is skipped if no prediction has a mask.
        dataset_dicts: ground truth given directly instead of through the catalog.
        class_names: names of the classes, overriding the metadata.
        distributed: gather predictions from all processes of the default process group.
        attributes: evaluate attributes (Fashionpedia's AP with IoU+F1, attribute F1) when the
            predictions carry ``attribute_ids``; ``None`` = when the dataset has attributes (its
            metadata has ``attribute_names``, as every Fashionpedia-taxonomy dataset's does, or
            else an annotation has known ``attribute_ids``).
    """

    def __init__(
        self,
        dataset_name: Optional[str] = None,
        output_dir: Optional[str] = None,
        backend: str = "faster_coco_eval",
        iou_types: Sequence[str] = IOU_TYPES,
        dataset_dicts: Optional[Sequence[Mapping[str, Any]]] = None,
        class_names: Optional[Sequence[str]] = None,
        distributed: bool = True,
        attributes: Optional[bool] = None,
    ) -> None:
        if dataset_name is None and dataset_dicts is None:
            raise ValueError("COCOEvaluator needs a dataset_name or dataset_dicts")
        get_backend(backend)  # fail at construction, not after a full inference pass
        self.dataset_name = dataset_name
        self.output_dir = output_dir
        self.backend = backend
        self.iou_types = tuple(iou_types)
        self._dataset_dicts = dataset_dicts
        meta = MetadataCatalog.get(dataset_name) if dataset_name is not None else None
        self._class_names = list(class_names) if class_names is not None else (
            list(meta.get("thing_classes")) if meta is not None and meta.get("thing_classes")
            else None)
        id_map = meta.get("thing_dataset_id_to_contiguous_id") if meta is not None else None
        self._contiguous_to_dataset_id = {v: k for k, v in id_map.items()} if id_map else None
        self._distributed = distributed
        if attributes is None and meta is not None and meta.get("attribute_names"):
            attributes = True
        self._attributes = attributes  # None: decided by the ground truth (_ground_truth)
        self._gt_coco: Optional[Dict[str, Any]] = None
        self.reset()

    @classmethod
    def from_config(cls, cfg: Any, dataset_name: str,
                    output_dir: Optional[str] = None) -> "COCOEvaluator":
        """Evaluator of ``dataset_name`` with ``TEST.EVALUATOR_BACKEND``; JSON under OUTPUT_DIR."""
        if output_dir is None:
            output_dir = os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        return cls(dataset_name, output_dir=output_dir, backend=cfg.TEST.EVALUATOR_BACKEND)

    def reset(self) -> None:
        """Forget the predictions processed so far."""
        # image_id -> results; keyed so that an image seen twice (a distributed sampler pads the
        # last batch with repeats) counts once
        self._predictions: Dict[int, List[Dict[str, Any]]] = {}

    def process(self, inputs: Sequence[Mapping[str, Any]],
                outputs: Sequence[Mapping[str, Any]]) -> None:
        """Encode one batch of model outputs to COCO results.

        Args:
            inputs: mapper outputs (``image_id``, ``height``, ``width`` of the original image).
            outputs: per image ``{"instances": {...}}`` as in ``docs/interfaces.md``.
        """
        for inp, out in zip(inputs, outputs):
            image_id = int(inp["image_id"])
            self._predictions[image_id] = instances_to_coco_json(
                out["instances"], image_id, int(inp["height"]), int(inp["width"])
            )

    def _gather(self) -> Optional[Dict[int, List[Dict[str, Any]]]]:
        """All processes' predictions on rank 0 (``None`` on other ranks)."""
        if not self._distributed or _world_size() == 1:
            return dict(self._predictions)
        parts: List[Any] = [None] * _world_size()
        dist.all_gather_object(parts, self._predictions)
        if dist.get_rank() != 0:
            return None
        merged: Dict[int, List[Dict[str, Any]]] = {}
        for part in parts:
            merged.update(part)
        return merged

    def evaluate(self) -> Dict[str, Dict[str, float]]:
        """Gather, write the results JSON, and compute AP (rank 0); every rank gets the numbers.

        Returns:
            ``{"bbox": {...}, "segm": {...}}`` in percent (see :mod:`.backends`); ``{}`` when no
            image was processed.
        """
        predictions = self._gather()
        results: Dict[str, Dict[str, float]] = {}
        if predictions is not None:
            results = self._evaluate_predictions(predictions)
        if self._distributed and _world_size() > 1:
            # the training loop logs the same numbers on every rank
            box = [results]
            dist.broadcast_object_list(box, src=0)
            results = box[0]
        return results

    def _ground_truth(self) -> Dict[str, Any]:
        if self._gt_coco is None:
            dicts = self._dataset_dicts
            if dicts is None:
                dicts = DatasetCatalog.get(self.dataset_name)
            names = self._class_names
            if names is None:
                num = 1 + max((a["category_id"] for d in dicts for a in d.get("annotations", [])),
                              default=-1)
                names = [str(k) for k in range(num)]
            self._gt_coco = dataset_dicts_to_coco(dicts, names)
            if self._attributes is None:  # a plain COCO file's attributes are all unknown
                self._attributes = any(a.get("attribute_ids_known")
                                       for a in self._gt_coco["annotations"])
        return self._gt_coco

    def _evaluate_predictions(
        self, predictions: Dict[int, List[Dict[str, Any]]]
    ) -> Dict[str, Dict[str, float]]:
        if not predictions:
            logger.warning("COCOEvaluator(%s): no image was processed; nothing to evaluate",
                           self.dataset_name)
            return {}
        coco_results = [r for image_id in sorted(predictions) for r in predictions[image_id]]
        self._write_results(coco_results)
        iou_types = list(self.iou_types)
        if coco_results and "segm" in iou_types and "segmentation" not in coco_results[0]:
            logger.info("predictions carry no masks: evaluating boxes only")
            iou_types.remove("segm")
        gt = self._ground_truth()
        metrics = evaluate_coco_json(gt, coco_results, iou_types, self.backend,
                                     img_ids=sorted(predictions))
        for iou_type, m in metrics.items():
            logger.info(
                "%s %s AP (%s, %d images, %d detections): %s\nper category:\n%s",
                self.dataset_name or "dataset", iou_type, self.backend, len(predictions),
                len(coco_results), ", ".join(f"{k} {m[k]:.3f}" for k in ("AP", "AP50", "AP75",
                                                                         "APs", "APm", "APl")),
                format_per_category_table(m),
            )
        if self._attributes and results_have_attributes(coco_results):
            if "attributes" not in gt:
                gt = {**gt, "attributes": taxonomy_attributes()}
            for iou_type, m in attribute_metrics(gt, coco_results, iou_types, sorted(predictions),
                                                 self.dataset_name or "dataset").items():
                metrics[iou_type].update(m)
        elif results_have_attributes(coco_results):
            logger.info("%s has no attributes: the predicted attribute_ids are not evaluated",
                        self.dataset_name or "dataset")
        return metrics

    def _write_results(self, coco_results: List[Dict[str, Any]]) -> None:
        if not self.output_dir:
            return
        os.makedirs(self.output_dir, exist_ok=True)
        path = os.path.join(self.output_dir, RESULTS_FILE)
        to_dataset = self._contiguous_to_dataset_id
        if to_dataset:
            coco_results = [{**r, "category_id": to_dataset[r["category_id"]]}
                            for r in coco_results]
        with open(path, "w", encoding="utf-8") as f:
            json.dump(coco_results, f)
        logger.info("wrote %d detections to %s", len(coco_results), path)
