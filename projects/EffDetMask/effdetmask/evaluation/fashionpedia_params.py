"""Parameters of Fashionpedia's official metric (``FPEval``, PyPI ``fashionpedia`` 1.1).

The metric is COCO AP where a true positive must also have attribute F1 >= tau with its ground
truth, for the 18 categories that carry attributes. FPEval hard-codes the final 46-category
taxonomy: which categories have attributes, and three super-categories by id range. An extra
threshold of ``-1`` on each axis means "no constraint" and gives the IoU-only and F1-only
summaries. Categories are matched by id here; FPEval mixes ids and indices into the category list,
which agree for the contiguous ids 0..K-1 of every Fashionpedia file (it fails on other ids).
"""

from __future__ import annotations

from typing import Dict, FrozenSet, Tuple

import numpy as np

__all__ = [
    "AREA_RANGES",
    "CATEGORIES_WITH_ATTRIBUTES",
    "F1_THRESHOLDS",
    "IOU_THRESHOLDS",
    "MAX_DETS",
    "NO_CONSTRAINT",
    "RECALL_THRESHOLDS",
    "SUPERCATEGORY_IDS",
]

# FPParams.catsWithAttributes: garments (0-12) and the parts hood, collar, lapel..neckline
CATEGORIES_WITH_ATTRIBUTES: FrozenSet[int] = frozenset(
    [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 28, 29, 31, 32, 33]
)
# FPParams.catSuperCls / catSuperClsIds: outerwear 0-12, accessory 13-26, part 27-45; the summary
# keys are "AP" + letter ("APa" only without the F1 constraint: accessories have no attributes)
SUPERCATEGORY_IDS: Dict[str, Tuple[int, int]] = {"o": (0, 13), "a": (13, 27), "p": (27, 46)}

NO_CONSTRAINT = -1.0
# pycocotools' Params, plus FPEval's trailing -1; the thresholds come from the same linspace
# expressions as the reference, so that "== 0.75" selects the same entry
IOU_THRESHOLDS = np.append(np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1,
                                       endpoint=True), NO_CONSTRAINT)
F1_THRESHOLDS = np.append(np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1,
                                      endpoint=True), NO_CONSTRAINT)
RECALL_THRESHOLDS = np.linspace(0.0, 1.00, int(np.round((1.00 - 0.0) / 0.01)) + 1, endpoint=True)
AREA_RANGES: Dict[str, Tuple[float, float]] = {
    "all": (0.0, 1e5**2), "small": (0.0, 32.0**2), "medium": (32.0**2, 96.0**2),
    "large": (96.0**2, 1e5**2),
}
MAX_DETS = (1, 10, 100)
