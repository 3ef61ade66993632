"""COCO-style instance JSON -> detectron2-style dataset dicts (see docs/interfaces.md).

The shared core (:func:`coco_json_to_dicts`) validates every image and annotation and is used by
the Fashionpedia loader (which adds its taxonomy remap) and by :func:`load_coco_json` for generic
COCO files, whose sparse category ids are mapped to contiguous 0..K-1.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any, Dict, List, Mapping, Optional, Tuple

from ..structures.masks import (
    MaskFormatError,
    rle_to_box_xywh,
    segmentation_to_rle,
    validate_segmentation,
)
from .catalog import DatasetCatalog, MetadataCatalog
from .taxonomy import class_colors
from .validation import DatasetIssue, Reason, SkipReport

__all__ = ["read_json", "coco_json_to_dicts", "coco_category_map", "load_coco_json",
           "register_coco_instances"]

logger = logging.getLogger(__name__)

# A box may overhang the image by this many pixels (float rounding in annotation tools) before it
# counts as "outside the image".
BOX_TOLERANCE_PX = 1.0


def read_json(path: str, require_images: bool = True) -> Dict[str, Any]:
    """Read a JSON object; missing file, invalid JSON or (if required) no ``images`` list ->
    :class:`DatasetIssue` naming the file."""
    if not os.path.isfile(path):
        raise DatasetIssue(path, "annotation file does not exist", reason=Reason.MISSING_FILE)
    try:
        with open(path, "r", encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DatasetIssue(path, f"cannot parse JSON: {e}", reason=Reason.BAD_RECORD) from e
    if not isinstance(data, dict):
        raise DatasetIssue(path, "JSON top level is not an object", reason=Reason.BAD_RECORD)
    if require_images and not isinstance(data.get("images"), list):
        raise DatasetIssue(path, "not COCO-style: no 'images' list", reason=Reason.BAD_RECORD)
    return data


def _image_record(img: Any, json_file: str, image_root: str) -> Dict[str, Any]:
    try:
        image_id, file_name = int(img["id"]), str(img["file_name"])
        height, width = int(img["height"]), int(img["width"])
    except (KeyError, TypeError, ValueError) as e:
        raise DatasetIssue(
            json_file, f"image entry lacks a valid id/file_name/height/width ({e!r})",
            record=f"image {str(img)[:80]}",
        ) from None
    if height <= 0 or width <= 0:
        raise DatasetIssue(json_file, f"image size {height}x{width} is not positive",
                           record=f"image id {image_id}")
    return {"file_name": os.path.abspath(os.path.join(image_root, file_name)), "height": height,
            "width": width, "image_id": image_id, "annotations": []}


def _check_box(bbox: Any, height: int, width: int) -> List[float]:
    """Validate ``[x, y, w, h]``; raises ``ValueError`` with the problem in words."""
    if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
        raise ValueError(f"bbox must be [x, y, w, h], got {bbox!r}")
    x, y, w, h = (float(v) for v in bbox)
    tol = BOX_TOLERANCE_PX
    if not (w > 0 and h > 0):
        raise ValueError(f"bbox {[x, y, w, h]} is empty (w or h <= 0)")
    if x < -tol or y < -tol or x + w > width + tol or y + h > height + tol:
        raise ValueError(f"bbox {[x, y, w, h]} lies outside the {width}x{height} image")
    return [x, y, w, h]


def _annotation_record(ann: Dict[str, Any], img: Dict[str, Any], record: str, json_file: str,
                       category_map: Mapping[int, int],
                       attribute_map: Optional[Mapping[int, Optional[int]]],
                       report: SkipReport) -> Dict[str, Any]:
    """One COCO annotation -> dataset-dict annotation; raises :class:`DatasetIssue`."""
    raw_cat = ann.get("category_id")
    if raw_cat not in category_map:
        raise DatasetIssue(json_file, f"unknown category id {raw_cat!r}", record,
                           Reason.UNKNOWN_CATEGORY)
    h, w = img["height"], img["width"]
    segm = ann.get("segmentation")
    if segm is None:
        raise DatasetIssue(json_file, "annotation has no segmentation", record, Reason.BAD_RECORD)
    try:
        validate_segmentation(segm, h, w)
    except MaskFormatError as e:
        reason = Reason.INVALID_RLE if isinstance(segm, dict) else Reason.INVALID_POLYGON
        raise DatasetIssue(json_file, str(e), record, reason) from None
    if isinstance(segm, dict) and isinstance(segm.get("counts"), list):
        # iscrowd annotations use uncompressed RLE; store the compressed form used everywhere else.
        segm = segmentation_to_rle(segm, h, w)
    bbox = ann.get("bbox")
    if bbox is None:  # Fashionpedia's API sample has no bbox: derive it from the mask
        bbox = rle_to_box_xywh(segmentation_to_rle(segm, h, w))
    try:
        bbox = _check_box(bbox, h, w)
    except ValueError as e:
        raise DatasetIssue(json_file, str(e), record, Reason.BOX_OUTSIDE_IMAGE) from None
    out = {"bbox": bbox, "category_id": category_map[raw_cat], "segmentation": segm,
           "iscrowd": int(ann.get("iscrowd", 0)), "id": ann.get("id")}
    if attribute_map is None:
        out["attribute_ids"], out["attribute_ids_known"] = [], False
        return out
    attrs: List[int] = []
    for raw in ann.get("attribute_ids", []) or []:
        if raw not in attribute_map:
            raise DatasetIssue(json_file, f"unknown attribute id {raw!r}", record,
                               Reason.UNKNOWN_ATTRIBUTE)
        final = attribute_map[raw]
        if final is None:
            report.add(Reason.ATTRIBUTE_NOT_IN_FINAL, f"{json_file}: {record}: attribute {raw}")
        else:
            attrs.append(final)
    out["attribute_ids"], out["attribute_ids_known"] = sorted(set(attrs)), True
    return out


def coco_json_to_dicts(data: Dict[str, Any], json_file: str, image_root: str, *,
                       category_map: Mapping[int, int],
                       attribute_map: Optional[Mapping[int, Optional[int]]] = None,
                       skip_invalid: bool = False, check_files: bool = True,
                       report: Optional[SkipReport] = None) -> List[Dict[str, Any]]:
    """Validated dataset dicts from a parsed COCO-style JSON.

    Args:
        data: the parsed JSON (``images``, ``annotations``).
        json_file: its path, for messages and ``file_name`` resolution.
        image_root: folder the images' ``file_name`` are relative to.
        category_map: raw category id -> contiguous id; an id not in it is "unknown".
        attribute_map: raw attribute id -> final sparse id, or ``None`` to drop it (counted); an
            id not in it is "unknown". ``None`` map = the file has no attributes.
        skip_invalid: skip and count bad records instead of raising.
        check_files: check that each image file exists (no decoding; see ``image_io``).
        report: where skipped records are counted; a new one (logged at the end) if omitted.
    Returns:
        dataset dicts, images in file order; annotations carry ``attribute_ids_known``.
    Raises:
        DatasetIssue: for the first bad record (``skip_invalid=False``), and always when no image
            is left (empty dataset).
    """
    own_report = report is None
    report = report or SkipReport(json_file)
    by_id: Dict[int, Dict[str, Any]] = {}
    # An id used by two images: the annotations (which name only the id) cannot be told apart, so
    # when skipping, every image with that id is dropped together with all its annotations.
    duplicated: set = set()
    seen: set = set()
    for img in data.get("images", []):
        try:
            rec = _image_record(img, json_file, image_root)
            where = f"image id {rec['image_id']}"
            if rec["image_id"] not in seen:
                seen.add(rec["image_id"])
            else:
                first = by_id.pop(rec["image_id"], None)
                duplicated.add(rec["image_id"])
                files = ", ".join(f for f in (first and first["file_name"], rec["file_name"]) if f)
                raise DatasetIssue(
                    json_file, f"image id {rec['image_id']} is used by more than one image "
                    f"({files}); its annotations cannot be assigned", where, Reason.DUPLICATE_IMAGE)
            if check_files and not os.path.isfile(rec["file_name"]):
                raise DatasetIssue(rec["file_name"], "image file does not exist",
                                   f"{where} of {json_file}", Reason.MISSING_FILE)
        except DatasetIssue as issue:
            report.handle(issue, skip_invalid)
            continue
        by_id[rec["image_id"]] = rec
    known_ids = {int(i["id"]) for i in data.get("images", []) if isinstance(i, dict) and "id" in i}
    for ann in data.get("annotations", []) or []:
        if not isinstance(ann, dict):
            ann = {"id": f"? ({str(ann)[:40]})"}
        image_id = ann.get("image_id")
        record = f"annotation id {ann.get('id')} (image {image_id})"
        try:
            if image_id not in known_ids:
                raise DatasetIssue(json_file, f"image id {image_id!r} is not in 'images'", record,
                                   Reason.UNKNOWN_IMAGE)
            if image_id not in by_id:
                continue  # its image was skipped already (and counted there)
            img = by_id[image_id]
            img["annotations"].append(_annotation_record(
                ann, img, record, json_file, category_map, attribute_map, report))
        except DatasetIssue as issue:
            report.handle(issue, skip_invalid)
    dicts = [d for d in by_id.values() if d["image_id"] not in duplicated]
    if own_report:
        report.log_summary(logger)
    if not dicts:
        raise DatasetIssue(json_file, "empty dataset: no usable image"
                           + (f" ({report.total} skipped)" if report.total else ""),
                           reason=Reason.EMPTY_DATASET)
    logger.info("%s: %d images, %d instances", json_file, len(dicts),
                sum(len(d["annotations"]) for d in dicts))
    return dicts


def coco_category_map(categories: List[Dict[str, Any]]) -> Tuple[Dict[int, int], List[str]]:
    """COCO categories -> (dataset id -> contiguous 0..K-1 in id order, names by contiguous id)."""
    cats = sorted(categories, key=lambda c: int(c["id"]))
    return {int(c["id"]): i for i, c in enumerate(cats)}, [str(c["name"]) for c in cats]


def load_coco_json(json_file: str, image_root: str, dataset_name: Optional[str] = None,
                   skip_invalid: bool = False, check_files: bool = True) -> List[Dict[str, Any]]:
    """Generic COCO instance JSON -> dataset dicts with contiguous category ids.

    When ``dataset_name`` is given, its metadata gets ``thing_classes``, ``thing_colors``,
    ``thing_dataset_id_to_contiguous_id`` (to write results back in dataset ids), ``json_file``
    and ``evaluator_type="coco"``. Annotations get ``attribute_ids=[]`` and
    ``attribute_ids_known=False``.
    """
    data = read_json(json_file)
    id_map, names = coco_category_map(data.get("categories", []))
    dicts = coco_json_to_dicts(data, json_file, image_root, category_map=id_map,
                               attribute_map=None, skip_invalid=skip_invalid,
                               check_files=check_files)
    if dataset_name is not None:
        MetadataCatalog.get(dataset_name).set(
            thing_classes=names, thing_colors=class_colors(len(names)),
            thing_dataset_id_to_contiguous_id=id_map, json_file=json_file, evaluator_type="coco")
    return dicts


def register_coco_instances(name: str, json_file: str, image_root: str, **metadata: Any) -> None:
    """Register a COCO instance JSON as dataset ``name``, loaded by :func:`load_coco_json` on first
    use (registering reads nothing). Its metadata gets ``json_file``, ``image_root``,
    ``evaluator_type="coco"`` and ``metadata`` now, the class names and id map when it loads."""
    DatasetCatalog.register(name, lambda: load_coco_json(json_file, image_root, name))
    MetadataCatalog.get(name).set(json_file=json_file, image_root=image_root,
                                  evaluator_type="coco", **metadata)
