"""Fashionpedia COCO-style JSON (``instances_attributes_{train,val}2020.json``) -> dataset dicts.

Category and attribute ids are remapped to the FINAL taxonomy (``taxonomy.py``) by name. For the
official files this is the identity; for a pre-release file such as the Fashionpedia API's
``sample.json`` (48 categories incl. "earmuffs" and "garment belt", 320 attributes) it moves e.g.
shoe 24 -> 23 and sleeve 32 -> 31. A category the final taxonomy lacks makes its annotations
"unknown category" issues; an attribute it lacks (the sample's textile "gauze") is dropped from the
instance and counted, because the instance itself is still correct.
"""

from __future__ import annotations

import logging
from typing import Any, Dict, List, Optional, Tuple

from .coco_json import coco_json_to_dicts, read_json
from .taxonomy import load_taxonomy
from .validation import DatasetIssue, Reason, SkipReport

__all__ = ["fashionpedia_id_maps", "load_fashionpedia_json"]

logger = logging.getLogger(__name__)


def _norm(name: str) -> str:
    return " ".join(str(name).lower().split())


def fashionpedia_id_maps(
    data: Dict[str, Any], json_file: str
) -> Tuple[Dict[int, int], Dict[int, Optional[int]]]:
    """Maps from a file's category/attribute ids to the final Fashionpedia ids, by name.

    Args:
        data: parsed JSON with ``categories`` and (optionally) ``attributes`` lists.
        json_file: its path, for messages.
    Returns:
        ``(category_map, attribute_map)``: raw category id -> final id (categories missing from
        the final taxonomy are left out, so their annotations are "unknown category"); raw
        attribute id -> final sparse id, or ``None`` for an attribute the final taxonomy dropped.
        A file without an ``attributes`` list is taken to use the final attribute ids.
    Raises:
        DatasetIssue: no ``categories`` list.
    """
    tax = load_taxonomy()
    final_cat = {_norm(n): i for i, n in enumerate(tax.class_names)}
    final_att = {_norm(n): i for n, i in tax.attribute_name_to_id.items()}
    categories = data.get("categories")
    if not isinstance(categories, list) or not categories:
        raise DatasetIssue(json_file, "no 'categories' list", reason=Reason.BAD_RECORD)
    category_map: Dict[int, int] = {}
    missing_cats = []
    for c in categories:
        final = final_cat.get(_norm(c.get("name", "")))
        if final is None:
            missing_cats.append(f"{c.get('id')}:{c.get('name')}")
        else:
            category_map[int(c["id"])] = final
    attributes = data.get("attributes")
    if isinstance(attributes, list) and attributes:
        attribute_map: Dict[int, Optional[int]] = {
            int(a["id"]): final_att.get(_norm(a.get("name", ""))) for a in attributes
        }
    else:
        attribute_map = {i: i for i in tax.attribute_ids}
    moved = sum(1 for k, v in category_map.items() if k != v)
    moved_att = sum(1 for k, v in attribute_map.items() if v is not None and k != v)
    dropped_att = sum(1 for v in attribute_map.values() if v is None)
    if moved or missing_cats or moved_att or dropped_att:
        logger.warning(
            "%s uses a different (pre-release?) taxonomy: remapped by name to the final ids; "
            "%d category ids moved, categories not in the final taxonomy: %s; "
            "%d attribute ids moved, %d attributes not in the final taxonomy (dropped when used)",
            json_file, moved, ", ".join(missing_cats) or "none", moved_att, dropped_att,
        )
    return category_map, attribute_map


def load_fashionpedia_json(
    json_file: str,
    image_root: str,
    skip_invalid: bool = False,
    check_files: bool = True,
    report: Optional[SkipReport] = None,
) -> List[Dict[str, Any]]:
    """Load a Fashionpedia JSON as dataset dicts with final category and attribute ids.

    Args:
        json_file: ``instances_attributes_{train,val}2020.json`` or any file of that format.
        image_root: folder holding the images named by ``images[].file_name``.
        skip_invalid: skip and count bad records (``DATASETS.SKIP_INVALID``) instead of raising.
        check_files: check that every image file exists (cheap; decoding is the mapper's job).
        report: collects skipped/dropped counts; by default one is made and its summary logged.
    Returns:
        dataset dicts (docs/interfaces.md): ``category_id`` 0..45, ``attribute_ids`` final sparse
        ids (sorted), ``attribute_ids_known=True``, ``bbox`` XYWH (derived from the segmentation
        when the file has none), ``segmentation`` polygons or compressed RLE.
    """
    data = read_json(json_file)
    category_map, attribute_map = fashionpedia_id_maps(data, json_file)
    own_report = report is None
    report = report or SkipReport(json_file)
    try:
        dicts = coco_json_to_dicts(
            data, json_file, image_root, category_map=category_map, attribute_map=attribute_map,
            skip_invalid=skip_invalid, check_files=check_files, report=report,
        )
    finally:
        if own_report:
            report.log_summary(logger)
    return dicts
