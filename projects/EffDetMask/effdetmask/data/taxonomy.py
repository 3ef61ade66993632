"""The final Fashionpedia taxonomy: 46 categories (ids 0..45), 294 attributes (sparse ids 0..340).

The names come from ``fashionpedia_taxonomy.json`` shipped inside the package (generated once from
the Fashionpedia API's ``category_attributes_descriptions.json``; the Kaggle iMaterialist 2020
``label_descriptions.json`` holds the same lists). Attribute ids are sparse, so the model's
``[N, 294]`` multi-hot vectors use *indices*; ``attribute_id_to_index`` / ``attribute_index_to_id``
are the only maps between the two.
"""

from __future__ import annotations

import colorsys
import json
from functools import lru_cache
from importlib import resources
from typing import Any, Dict, FrozenSet, List, Tuple

__all__ = [
    "NUM_CLASSES",
    "NUM_ATTRIBUTES",
    "Taxonomy",
    "load_taxonomy",
    "class_names",
    "attribute_names",
    "attribute_id_to_index",
    "attribute_index_to_id",
    "class_colors",
    "left_right_attribute_pairs",
    "fashionpedia_metadata",
    "CATEGORIES_WITH_ATTRIBUTES",
    "category_has_attributes",
]

NUM_CLASSES = 46
NUM_ATTRIBUTES = 294
# the categories whose instances carry attributes in the final taxonomy: the garments (0-12) and
# the parts collar, lapel, sleeve, pocket and neckline (28, 29, 31-33); the rest (accessories, other
# parts) never have any. Fashionpedia's FPParams.catsWithAttributes holds the same 18 ids.
CATEGORIES_WITH_ATTRIBUTES = frozenset([*range(13), 28, 29, 31, 32, 33])
_TAXONOMY_FILE = "fashionpedia_taxonomy.json"


class Taxonomy:
    """Categories and attributes of one label set, with id <-> index maps.

    Args:
        categories: ``[{"id": int, "name": str, "supercategory": str}, ...]``; ids must be 0..K-1.
        attributes: same form; ids may be sparse.
    """

    def __init__(self, categories: List[Dict[str, Any]], attributes: List[Dict[str, Any]]) -> None:
        cats = sorted(categories, key=lambda c: int(c["id"]))
        if [int(c["id"]) for c in cats] != list(range(len(cats))):
            raise ValueError("taxonomy: category ids must be contiguous 0..K-1")
        atts = sorted(attributes, key=lambda a: int(a["id"]))
        self.class_names: List[str] = [str(c["name"]) for c in cats]
        self.class_supercategories: List[str] = [str(c.get("supercategory", "")) for c in cats]
        self.attribute_ids: List[int] = [int(a["id"]) for a in atts]
        self.attribute_names: List[str] = [str(a["name"]) for a in atts]
        self.attribute_supercategories: List[str] = [str(a.get("supercategory", "")) for a in atts]
        if len(set(self.attribute_ids)) != len(atts) or len(set(self.attribute_names)) != len(atts):
            raise ValueError("taxonomy: attribute ids and names must be unique")
        self.attribute_id_to_index = {i: k for k, i in enumerate(self.attribute_ids)}
        self.attribute_index_to_id: Dict[int, int] = dict(enumerate(self.attribute_ids))
        self.class_name_to_id: Dict[str, int] = {n: i for i, n in enumerate(self.class_names)}
        self.attribute_name_to_id: Dict[str, int] = dict(
            zip(self.attribute_names, self.attribute_ids)
        )


@lru_cache(maxsize=1)
def load_taxonomy() -> Taxonomy:
    """The final Fashionpedia taxonomy read from the package data file (read once, cached)."""
    text = resources.files("effdetmask.data").joinpath(_TAXONOMY_FILE).read_text(encoding="utf-8")
    data = json.loads(text)
    tax = Taxonomy(data["categories"], data["attributes"])
    if len(tax.class_names) != NUM_CLASSES or len(tax.attribute_ids) != NUM_ATTRIBUTES:
        raise ValueError(
            f"{_TAXONOMY_FILE}: expected {NUM_CLASSES} categories and {NUM_ATTRIBUTES} attributes, "
            f"found {len(tax.class_names)} and {len(tax.attribute_ids)}"
        )
    return tax


def class_names() -> List[str]:
    """46 category names; list index = category id (0 = "shirt, blouse", a real class)."""
    return list(load_taxonomy().class_names)


def attribute_names() -> List[str]:
    """294 attribute names; list index = attribute *index* (not the sparse id)."""
    return list(load_taxonomy().attribute_names)


def attribute_id_to_index() -> Dict[int, int]:
    """Sparse Fashionpedia attribute id (0..340) -> dense index (0..293)."""
    return dict(load_taxonomy().attribute_id_to_index)


def attribute_index_to_id() -> Dict[int, int]:
    """Dense attribute index (0..293) -> sparse Fashionpedia attribute id (0..340)."""
    return dict(load_taxonomy().attribute_index_to_id)


def category_has_attributes(num_classes: int = NUM_CLASSES) -> List[bool]:
    """Per category id ``0..num_classes-1``, whether its instances carry attributes
    (:data:`CATEGORIES_WITH_ATTRIBUTES`): the attribute head's loss skips the others."""
    return [c in CATEGORIES_WITH_ATTRIBUTES for c in range(num_classes)]


def class_colors(num_classes: int = NUM_CLASSES) -> List[Tuple[int, int, int]]:
    """Deterministic, pairwise distinct RGB colours (0..255), one per class.

    Hues step by the golden ratio so neighbouring class ids get far-apart hues; saturation and value
    alternate over three levels so that classes whose hues land close still differ.
    """
    colors: List[Tuple[int, int, int]] = []
    for i in range(num_classes):
        hue = (i * 0.618033988749895) % 1.0
        sat = (0.95, 0.65, 0.8)[i % 3]
        val = (0.95, 0.8, 0.65)[(i // 3) % 3]
        r, g, b = colorsys.hsv_to_rgb(hue, sat, val)
        colors.append((int(round(r * 255)), int(round(g * 255)), int(round(b * 255))))
    return colors


def left_right_attribute_pairs(names: List[str] | None = None) -> FrozenSet[Tuple[int, int]]:
    """Pairs ``(index_left, index_right)`` of attributes that swap under a horizontal flip.

    A pair is two attribute names that differ only by the words "left" and "right". The final
    Fashionpedia taxonomy has none (it describes garments, not sides; e.g. "asymmetric (collar)"
    is flip-invariant), so for it this returns an empty set and a flip needs no attribute change.
    Category names carry no side either (both sleeves are "sleeve").

    Args:
        names: attribute names by index; default the final Fashionpedia list.
    """
    names = attribute_names() if names is None else names
    index = {n: i for i, n in enumerate(names)}
    pairs = set()
    for i, name in enumerate(names):
        words = name.split()
        if "left" in words:
            other = " ".join("right" if w == "left" else w for w in words)
            if other in index:
                pairs.add((i, index[other]))
    return frozenset(pairs)


def fashionpedia_metadata() -> Dict[str, Any]:
    """Metadata of any dataset labelled with the final Fashionpedia taxonomy.

    Returns:
        dict for ``MetadataCatalog.get(name).set(**...)``: ``thing_classes`` (46 names),
        ``thing_colors`` (46 RGB tuples), ``thing_dataset_id_to_contiguous_id`` (identity 0..45),
        ``attribute_names`` (294), ``attribute_id_to_index``, ``attribute_index_to_id``,
        ``num_attributes``, ``left_right_attribute_pairs`` (empty) and ``evaluator_type`` "coco".
    """
    tax = load_taxonomy()
    return {
        "thing_classes": list(tax.class_names),
        "thing_colors": class_colors(len(tax.class_names)),
        "thing_dataset_id_to_contiguous_id": {i: i for i in range(len(tax.class_names))},
        "attribute_names": list(tax.attribute_names),
        "attribute_id_to_index": dict(tax.attribute_id_to_index),
        "attribute_index_to_id": dict(tax.attribute_index_to_id),
        "num_attributes": len(tax.attribute_ids),
        "left_right_attribute_pairs": left_right_attribute_pairs(list(tax.attribute_names)),
        "evaluator_type": "coco",
    }
