"""The embedded Fashionpedia taxonomy: sizes, sparse id <-> index maps, colours, metadata."""

import json
from pathlib import Path

import pytest

from effdetmask.data.taxonomy import (
    NUM_ATTRIBUTES,
    attribute_id_to_index,
    attribute_index_to_id,
    attribute_names,
    class_colors,
    class_names,
    fashionpedia_metadata,
    left_right_attribute_pairs,
)

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
SOURCE = SHARED_DATA / "fashionpedia_api_sample" / "category_attributes_descriptions.json"
KAGGLE_LABELS = SHARED_DATA / "label_descriptions" / "imat2020_fgvc7_label_descriptions.json"


def test_sizes_and_sparse_ids():
    assert len(class_names()) == 46
    assert class_names()[0] == "shirt, blouse"  # a real class, not background
    assert len(attribute_names()) == NUM_ATTRIBUTES == 294
    id_to_index, index_to_id = attribute_id_to_index(), attribute_index_to_id()
    assert sorted(id_to_index.values()) == list(range(294))
    assert max(id_to_index) == 340
    assert all(index_to_id[i] == a for a, i in id_to_index.items())


@pytest.mark.parametrize("path", [SOURCE, KAGGLE_LABELS], ids=["fashionpedia_api", "kaggle2020"])
def test_matches_the_real_label_files(path, shared_data):
    shared_data(str(path.relative_to(SHARED_DATA)))  # skip, or fail under CI=true
    data = json.loads(path.read_text())
    assert class_names() == [c["name"] for c in sorted(data["categories"], key=lambda c: c["id"])]
    atts = sorted(data["attributes"], key=lambda a: a["id"])
    assert attribute_names() == [a["name"] for a in atts]
    assert list(attribute_index_to_id().values()) == [a["id"] for a in atts]


def test_colours_distinct_and_deterministic():
    colours = class_colors()
    assert len(colours) == 46 and len(set(colours)) == 46
    assert colours == class_colors()
    assert all(0 <= v <= 255 for c in colours for v in c)


def test_left_right_pairs():
    # The final taxonomy names no sides, so a flip changes no attribute.
    assert left_right_attribute_pairs() == frozenset()
    assert left_right_attribute_pairs(["left pocket", "right pocket", "pocket"]) == {(0, 1)}


def test_metadata():
    meta = fashionpedia_metadata()
    assert meta["thing_classes"] == class_names()
    assert meta["attribute_id_to_index"][340] == 293
    assert meta["num_attributes"] == 294
    assert meta["evaluator_type"] == "coco"
    assert meta["thing_dataset_id_to_contiguous_id"] == {i: i for i in range(46)}
