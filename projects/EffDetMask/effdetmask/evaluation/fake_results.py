"""Seeded fake detections made from ground truth, for testing and benchmarking evaluators.

Each ground truth becomes, unless dropped, a detection with a shifted and dilated/eroded mask,
sometimes the wrong class, some attributes removed and random ones added, a random score, and
sometimes a second (duplicate) detection; every image also gets random rectangular false
positives. The result exercises every branch of COCO/Fashionpedia matching: misses, duplicates,
wrong classes, low-IoU and low-F1 matches, all three area ranges.
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional

import cv2
import numpy as np
import pycocotools.mask as mask_util

from ..structures.masks import coco_rle_encode, segmentation_to_mask

__all__ = ["perturbed_results"]


def perturbed_results(gt: Mapping[str, Any], seed: int, *, drop: float = 0.15,
                      wrong_class: float = 0.15, duplicate: float = 0.1, false_positives: int = 2,
                      attribute_noise: float = 0.3, with_bbox: bool = True,
                      score_decimals: Optional[int] = None, max_shift: int = 4
                      ) -> List[Dict[str, Any]]:
    """Fake results (COCO/Fashionpedia results format) from a ground-truth dict.

    Args:
        gt: COCO/Fashionpedia GT with ``images``, ``annotations``, ``categories`` and optionally
            ``attributes`` (the attribute ids drawn from; default none).
        seed: random seed; the same arguments give the same results.
        drop: probability that a ground truth gets no detection.
        wrong_class: probability that its detection has a random category.
        duplicate: probability of a second detection of the same object.
        false_positives: random rectangles per image.
        attribute_noise: probability of removing each true attribute; also the mean number of
            random attributes added (x2).
        with_bbox: give each result a ``bbox`` (the mask's box with Gaussian noise, sigma 1.5 px).
        score_decimals: round scores (creates ties) when given.
        max_shift: masks move by up to this many pixels in x and y.
    Returns:
        results with ``image_id``, ``category_id``, ``score``, ``attribute_ids``, ``segmentation``
        (compressed RLE, ``str`` counts) and, with ``with_bbox``, ``bbox``.
    """
    rng = np.random.default_rng(seed)
    sizes = {img["id"]: (int(img["height"]), int(img["width"])) for img in gt["images"]}
    cat_ids = [int(c["id"]) for c in gt["categories"]]
    attr_ids = [int(a["id"]) for a in gt.get("attributes", [])]
    results: List[Dict[str, Any]] = []

    def attributes(true_ids) -> List[int]:
        out = {int(a) for a in true_ids if rng.random() > attribute_noise}
        if attr_ids:
            out |= set(rng.choice(attr_ids, size=rng.poisson(attribute_noise * 2)).tolist())
        return sorted(out)

    def jitter(mask: np.ndarray) -> np.ndarray:
        dx, dy = rng.integers(-max_shift, max_shift + 1, size=2)
        mask = np.roll(np.roll(mask, int(dx), axis=1), int(dy), axis=0)
        kernel = np.ones((int(rng.integers(1, 4)),) * 2, np.uint8)
        op = rng.integers(3)
        return cv2.dilate(mask, kernel) if op == 0 else cv2.erode(mask, kernel) if op == 1 else mask

    def add(image_id: int, category_id: int, mask: np.ndarray, attrs: List[int]) -> None:
        if not mask.any():
            return
        score = float(rng.random())
        r: Dict[str, Any] = {
            "image_id": int(image_id), "category_id": int(category_id), "attribute_ids": attrs,
            "score": round(score, score_decimals) if score_decimals is not None else score,
            "segmentation": coco_rle_encode(mask),
        }
        if with_bbox:
            box = mask_util.toBbox(mask_util.encode(np.asfortranarray(mask)))
            r["bbox"] = [float(v) for v in box + rng.normal(0.0, 1.5, 4)]
        results.append(r)

    for ann in gt["annotations"]:
        if rng.random() < drop:
            continue
        mask = jitter(segmentation_to_mask(ann["segmentation"], *sizes[ann["image_id"]]))
        cat = ann["category_id"] if rng.random() >= wrong_class else rng.choice(cat_ids)
        true_attrs = ann.get("attribute_ids") or []
        add(ann["image_id"], cat, mask, attributes(true_attrs))
        if rng.random() < duplicate:
            add(ann["image_id"], cat, jitter(mask), attributes(true_attrs))
    for image_id, (h, w) in sizes.items():
        for _ in range(false_positives):
            x0, y0 = int(rng.integers(0, max(w - 2, 1))), int(rng.integers(0, max(h - 2, 1)))
            x1, y1 = x0 + int(rng.integers(2, w - x0 + 1)), y0 + int(rng.integers(2, h - y0 + 1))
            mask = np.zeros((h, w), np.uint8)
            mask[y0:y1, x0:x1] = 1
            add(image_id, rng.choice(cat_ids), mask, attributes([]))
    return results
