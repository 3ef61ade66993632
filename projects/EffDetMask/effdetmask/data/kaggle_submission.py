"""COCO/Fashionpedia results -> Kaggle iMaterialist (Fashion) 2020 ``submission.csv``.

Columns ``ImageId,EncodedPixels,ClassId,AttributesIds``, one row per instance:

* ``ImageId``: the image's file name without folder and extension.
* ``EncodedPixels``: Kaggle RLE, ``start length`` pairs, starts 1-indexed, pixels column-major
  (:func:`effdetmask.structures.masks.kaggle_rle_encode`, the project's one RLE module).
* ``ClassId``: the final Fashionpedia category id (0..45; Kaggle uses the same ids).
* ``AttributesIds``: the instance's sparse attribute ids, sorted, comma-joined; empty for none.

The competition required the masks of an image not to overlap: a pixel belongs to the
highest-scoring instance that covers it (ties: the earlier result), and an instance left with no
pixel is dropped. It also required every test image to appear, so an image without any
detection gets one placeholder row, ``1 1`` (a single pixel) of class 23 with no attributes, the
form of the competition's sample submission. Result ids are mapped to the final taxonomy by
name through the image list's ``categories``/``attributes`` (identity for the official files;
the pre-release API sample moves e.g. shoe 24 -> 23).
"""

from __future__ import annotations

import csv
import json
import logging
import os
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import pycocotools.mask as mask_util

from ..structures.masks import kaggle_rle_encode, rle_to_box_xywh, segmentation_to_rle
from .fashionpedia import fashionpedia_id_maps
from .taxonomy import load_taxonomy

__all__ = ["SUBMISSION_COLUMNS", "SubmissionStats", "submission_rows", "write_kaggle_submission"]

logger = logging.getLogger(__name__)

SUBMISSION_COLUMNS = ("ImageId", "EncodedPixels", "ClassId", "AttributesIds")
# the placeholder row of an image without detections (the sample submission's)
EMPTY_IMAGE_PIXELS, EMPTY_IMAGE_CLASS = "1 1", 23


@dataclass
class SubmissionStats:
    """Counts of one conversion."""

    images: int = 0
    rows: int = 0
    placeholder_rows: int = 0
    below_threshold: int = 0
    emptied_by_overlap: int = 0
    unknown_category: int = 0
    unknown_attribute: int = 0


def _read(obj: Union[str, os.PathLike, Any]) -> Any:
    if isinstance(obj, (str, os.PathLike)):
        with open(obj, "r", encoding="utf-8") as f:
            return json.load(f)
    return obj


def _image_rows(image: Mapping[str, Any], dets: List[Mapping[str, Any]],
                category_map: Dict[int, int], attribute_map: Dict[int, Optional[int]],
                stats: SubmissionStats) -> Iterator[Tuple[str, int, str]]:
    h, w = int(image["height"]), int(image["width"])
    # the pixels already taken, flat in column-major order (Kaggle's and COCO RLE's order)
    taken = np.zeros(h * w, dtype=bool)
    for det in sorted(dets, key=lambda r: -float(r["score"])):  # stable: ties keep file order
        cat = category_map.get(int(det["category_id"]))
        if cat is None:
            stats.unknown_category += 1
            continue
        rle = segmentation_to_rle(det["segmentation"], h, w)  # validated here
        x0, _, bw, _ = rle_to_box_xywh(rle)
        # only the box's columns hold pixels: a contiguous range [lo, hi) of the flat order
        lo, hi = int(x0) * h, int(np.ceil(x0 + bw)) * h
        full = mask_util.decode({"size": rle["size"], "counts": rle["counts"].encode("ascii")})
        mask = full.ravel(order="F")[lo:hi].astype(bool) & ~taken[lo:hi]
        if not mask.any():
            stats.emptied_by_overlap += 1
            continue
        taken[lo:hi] |= mask
        # the window's columns as an [h, columns] mask; its runs start `lo` pixels later
        runs = np.array(kaggle_rle_encode(mask.reshape(-1, h).T).split(), dtype=np.int64)
        runs[0::2] += lo
        attrs = set()
        for a in (int(a) for a in det.get("attribute_ids") or []):
            if a in attribute_map and attribute_map[a] is not None:
                attrs.add(attribute_map[a])
            elif a not in attribute_map:
                stats.unknown_attribute += 1
        yield " ".join(map(str, runs.tolist())), cat, ",".join(map(str, sorted(attrs)))


def submission_rows(
    results: Union[str, os.PathLike, Sequence[Mapping[str, Any]]],
    images: Union[str, os.PathLike, Mapping[str, Any]],
    score_threshold: float = 0.0,
    empty_image_row: bool = True,
    stats: Optional[SubmissionStats] = None,
) -> Iterator[Dict[str, str]]:
    """Submission rows, image by image in the image list's order, best score first.

    Args:
        results: path or list of results: ``image_id``, ``category_id``, ``score``,
            ``segmentation`` (RLE or polygons at the image's size), optional ``attribute_ids``.
        images: path or dict of a COCO/Fashionpedia GT or image-info JSON: ``images`` with
            ``id``, ``file_name``, ``height``, ``width``; optional ``categories``/``attributes``
            (the results' ids; mapped to the final taxonomy by name).
        score_threshold: results scoring below it are left out.
        empty_image_row: give an image without any row the placeholder row (``1 1``, class 23).
        stats: filled with counts when given.
    Yields:
        ``{"ImageId", "EncodedPixels", "ClassId", "AttributesIds"}`` (all ``str``).
    Raises:
        ValueError: a result on an image missing from the list.
        MaskFormatError: a segmentation that does not fit its image.
    """
    results, images = _read(results), _read(images)
    stats = stats if stats is not None else SubmissionStats()
    if images.get("categories"):
        category_map, attribute_map = fashionpedia_id_maps(images, "image list")
    else:  # no label lists: the results use the final ids
        tax = load_taxonomy()
        category_map = {i: i for i in range(len(tax.class_names))}
        attribute_map: Dict[int, Optional[int]] = {i: i for i in tax.attribute_ids}
    by_image: Dict[int, List[Mapping[str, Any]]] = defaultdict(list)
    for r in results:
        if float(r["score"]) < score_threshold:
            stats.below_threshold += 1
        else:
            by_image[int(r["image_id"])].append(r)
    known = {int(img["id"]) for img in images["images"]}
    missing = sorted(set(by_image) - known)
    if missing:
        raise ValueError(f"{len(missing)} image id(s) of the results are not in the image list, "
                         f"e.g. {missing[:5]}")
    for image in images["images"]:
        stats.images += 1
        image_id = os.path.splitext(os.path.basename(str(image["file_name"])))[0]
        n = 0
        for pixels, cat, attrs in _image_rows(image, by_image.get(int(image["id"]), []),
                                              category_map, attribute_map, stats):
            n += 1
            yield {"ImageId": image_id, "EncodedPixels": pixels, "ClassId": str(cat),
                   "AttributesIds": attrs}
        stats.rows += n
        if n == 0 and empty_image_row:
            stats.rows += 1
            stats.placeholder_rows += 1
            yield {"ImageId": image_id, "EncodedPixels": EMPTY_IMAGE_PIXELS,
                   "ClassId": str(EMPTY_IMAGE_CLASS), "AttributesIds": ""}


def write_kaggle_submission(
    results: Union[str, os.PathLike, Sequence[Mapping[str, Any]]],
    images: Union[str, os.PathLike, Mapping[str, Any]],
    csv_path: Union[str, os.PathLike],
    score_threshold: float = 0.0,
    empty_image_row: bool = True,
) -> SubmissionStats:
    """Write ``submission.csv`` (see the module doc and :func:`submission_rows`).

    Returns:
        the counts of the conversion (also logged).
    """
    stats = SubmissionStats()
    tmp = f"{csv_path}.tmp"
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=SUBMISSION_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(submission_rows(results, images, score_threshold, empty_image_row,
                                         stats))
    os.replace(tmp, csv_path)  # never leave a half-written submission under the final name
    logger.info("%s: %s", csv_path, stats)
    return stats
