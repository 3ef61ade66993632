"""Kaggle iMaterialist-Fashion-2020 ``train.csv`` (+ ``label_descriptions.json``) -> dataset dicts.

CSV columns: ``ImageId,EncodedPixels,Height,Width,ClassId,AttributesIds``; one row per instance,
rows of one image grouped by ``ImageId``. A submission file (no ``Height``/``Width``) reads with the
image sizes given separately. ``EncodedPixels`` is Kaggle RLE (1-indexed starts,
column-major); it becomes compressed COCO RLE without decoding the mask. ``ClassId`` is the
Fashionpedia category id. An empty ``AttributesIds`` cell means *unknown*, not "no attributes",
so such instances get ``attribute_ids=[]`` and ``attribute_ids_known=False`` and the attribute
loss must ignore them.
"""

from __future__ import annotations

import csv
import logging
import os
import sys
from typing import Any, Dict, List, Mapping, Optional, Tuple

from ..structures.masks import MaskFormatError, kaggle_rle_to_coco_rle, rle_to_box_xywh
from .coco_json import read_json
from .fashionpedia import fashionpedia_id_maps
from .taxonomy import load_taxonomy
from .validation import DatasetIssue, Reason, SkipReport

__all__ = ["load_imaterialist_csv"]

logger = logging.getLogger(__name__)

_COLUMNS = ("ImageId", "EncodedPixels", "Height", "Width", "ClassId", "AttributesIds")
_SIZE_COLUMNS = ("Height", "Width")


def _label_maps(
    label_json: Optional[str],
) -> Tuple[Dict[int, int], Dict[int, Optional[int]]]:
    """Category/attribute maps to the final ids; identity when no label file is given."""
    if label_json is None:
        tax = load_taxonomy()
        return {i: i for i in range(len(tax.class_names))}, {i: i for i in tax.attribute_ids}
    return fashionpedia_id_maps(read_json(label_json, require_images=False), label_json)


def _instance(row: Dict[str, str], height: int, width: int, record: str, csv_file: str,
              category_map: Dict[int, int], attribute_map: Dict[int, Optional[int]],
              report: SkipReport) -> Dict[str, Any]:
    try:
        raw_cat = int(row["ClassId"])
    except (TypeError, ValueError):
        raise DatasetIssue(csv_file, f"ClassId {row['ClassId']!r} is not an integer", record,
                           Reason.UNKNOWN_CATEGORY) from None
    if raw_cat not in category_map:
        raise DatasetIssue(csv_file, f"unknown category id {raw_cat}", record,
                           Reason.UNKNOWN_CATEGORY)
    try:
        rle = kaggle_rle_to_coco_rle(row["EncodedPixels"] or "", height, width)
    except MaskFormatError as e:
        raise DatasetIssue(csv_file, str(e), record, Reason.INVALID_RLE) from None
    cell = (row.get("AttributesIds") or "").strip()
    attrs: List[int] = []
    for tok in cell.split(",") if cell else []:
        try:
            raw = int(tok)
        except ValueError:
            raise DatasetIssue(csv_file, f"attribute id {tok!r} is not an integer", record,
                               Reason.UNKNOWN_ATTRIBUTE) from None
        if raw not in attribute_map:
            raise DatasetIssue(csv_file, f"unknown attribute id {raw}", record,
                               Reason.UNKNOWN_ATTRIBUTE)
        if attribute_map[raw] is None:
            report.add(Reason.ATTRIBUTE_NOT_IN_FINAL, f"{csv_file}: {record}: attribute {raw}")
        else:
            attrs.append(int(attribute_map[raw]))
    return {
        "bbox": rle_to_box_xywh(rle), "category_id": category_map[raw_cat], "segmentation": rle,
        "iscrowd": 0, "attribute_ids": sorted(set(attrs)), "attribute_ids_known": bool(cell),
    }


def load_imaterialist_csv(
    csv_file: str,
    image_root: str,
    label_json: Optional[str] = None,
    skip_invalid: bool = False,
    check_files: bool = True,
    report: Optional[SkipReport] = None,
    image_sizes: Optional[Mapping[str, Tuple[int, int]]] = None,
) -> List[Dict[str, Any]]:
    """Load the Kaggle iMaterialist 2020 CSV as dataset dicts.

    Args:
        csv_file: ``train.csv`` (or any subset with the same header).
        image_root: folder of ``<ImageId>.jpg``.
        label_json: ``label_descriptions.json``; ids are mapped to the final taxonomy by name
            (identity for the 2020 file). ``None``: the CSV is taken to use the final ids.
        skip_invalid: skip and count bad rows/images instead of raising.
        check_files: check that every image file exists.
        report: collects skipped counts; by default one is made and its summary logged.
        image_sizes: ``ImageId -> (height, width)`` for a CSV without ``Height``/``Width``
            columns (a submission file); ignored when the CSV has them.
    Returns:
        dataset dicts in order of first appearance; ``image_id`` = 1, 2, ... in that order and
        ``kaggle_image_id`` = the CSV's ``ImageId``; ``segmentation`` compressed COCO RLE;
        ``bbox`` XYWH from the mask.
    Raises:
        DatasetIssue: bad header, first bad row (``skip_invalid=False``), or empty dataset.
    """
    if not os.path.isfile(csv_file):
        raise DatasetIssue(csv_file, "CSV file does not exist", reason=Reason.MISSING_FILE)
    category_map, attribute_map = _label_maps(label_json)
    own_report = report is None
    report = report or SkipReport(csv_file)
    # EncodedPixels of a large garment in a 5000 x 3700 photo is far over csv's default limit.
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    images: Dict[str, Dict[str, Any]] = {}
    bad_images = set()
    with open(csv_file, "r", newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        has_sizes = all(c in (reader.fieldnames or []) for c in _SIZE_COLUMNS)
        needed = _COLUMNS if has_sizes or image_sizes is None else tuple(
            c for c in _COLUMNS if c not in _SIZE_COLUMNS)
        missing = [c for c in needed if c not in (reader.fieldnames or [])]
        if missing:
            raise DatasetIssue(csv_file, f"CSV header lacks column(s) {missing}",
                               reason=Reason.BAD_RECORD)
        for line, row in enumerate(reader, start=2):
            key = (row["ImageId"] or "").strip()
            record = f"line {line} (ImageId {key})"
            try:
                if key in bad_images:
                    continue
                try:
                    if has_sizes:
                        height, width = int(row["Height"]), int(row["Width"])
                    elif key in image_sizes:
                        height, width = (int(v) for v in image_sizes[key])
                    else:
                        raise DatasetIssue(csv_file, "no size given for the image", record)
                except (TypeError, ValueError):
                    raise DatasetIssue(csv_file, "Height/Width are not integers", record) from None
                img = images.get(key)
                if img is None:
                    img = _new_image(key, height, width, image_root, len(images) + 1)
                    if check_files and not os.path.isfile(img["file_name"]):
                        bad_images.add(key)
                        raise DatasetIssue(img["file_name"], "image file does not exist",
                                           f"ImageId {key} of {csv_file}", Reason.MISSING_FILE)
                    images[key] = img
                elif (img["height"], img["width"]) != (height, width):
                    raise DatasetIssue(
                        csv_file, f"size {height}x{width} differs from the image's earlier rows "
                        f"({img['height']}x{img['width']})", record, Reason.IMAGE_SIZE_MISMATCH)
                img["annotations"].append(_instance(
                    row, height, width, record, csv_file, category_map, attribute_map, report))
            except DatasetIssue as issue:
                report.handle(issue, skip_invalid)
    if own_report:
        report.log_summary(logger)
    dicts = list(images.values())
    if not dicts:
        raise DatasetIssue(csv_file, "empty dataset: no usable image", reason=Reason.EMPTY_DATASET)
    logger.info("%s: %d images, %d instances", csv_file, len(dicts),
                sum(len(d["annotations"]) for d in dicts))
    return dicts


def _new_image(key: str, height: int, width: int, image_root: str, image_id: int) -> Dict[str, Any]:
    if height <= 0 or width <= 0:
        raise DatasetIssue(key, f"image size {height}x{width} is not positive")
    return {"file_name": os.path.abspath(os.path.join(image_root, f"{key}.jpg")),
            "height": height, "width": width, "image_id": image_id, "kaggle_image_id": key,
            "annotations": []}
