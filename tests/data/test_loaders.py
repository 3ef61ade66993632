"""Loaders on the real sample in ../shared/data, and the built-in registration."""

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from effdetmask.data import DatasetCatalog, MetadataCatalog
from effdetmask.data.builtin import dataset_root, register_all
from effdetmask.data.coco_json import load_coco_json
from effdetmask.data.fashionpedia import load_fashionpedia_json
from effdetmask.data.kaggle import load_imaterialist_csv
from effdetmask.data.taxonomy import class_names
from effdetmask.data.validation import Reason, SkipReport
from effdetmask.structures.masks import coco_rle_decode, mask_to_box_xyxy, segmentation_to_mask

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
FP = SHARED_DATA / "fashionpedia_api_sample"
KG = SHARED_DATA / "imat2020_train_rle"
KG_ID = "00000663ed1ff0c4e0132b9b9ac53f6e"
LABELS = SHARED_DATA / "label_descriptions" / "imat2020_fgvc7_label_descriptions.json"

# skipped without the shared data folder, failed under CI=true (tests/conftest.py)
needs_sample = pytest.mark.shared_data()


def _box_from_mask(segm, h, w):
    x0, y0, x1, y1 = mask_to_box_xyxy(segmentation_to_mask(segm, h, w)).tolist()
    return [x0, y0, x1 - x0, y1 - y0]


@needs_sample
def test_fashionpedia_sample_remapped_by_name():
    report = SkipReport("sample")
    dicts = load_fashionpedia_json(str(FP / "sample.json"), str(FP / "images"), report=report)
    raw = json.loads((FP / "sample.json").read_text())
    assert [d["image_id"] for d in dicts] == [9813, 10223]
    assert sum(len(d["annotations"]) for d in dicts) == 12
    raw_names = {c["id"]: c["name"] for c in raw["categories"]}
    raw_by_id = {a["id"]: a for a in raw["annotations"]}
    final = {n: i for i, n in enumerate(class_names())}
    pairs = set()
    for d in dicts:
        assert Path(d["file_name"]).is_file()
        for a in d["annotations"]:
            raw_cat = raw_by_id[a["id"]]["category_id"]
            assert a["category_id"] == final[raw_names[raw_cat]]
            pairs.add((raw_names[raw_cat], raw_cat, a["category_id"]))
            # the sample has no bbox field: it is derived from the polygons, tightly
            assert a["bbox"] == _box_from_mask(a["segmentation"], d["height"], d["width"])
            assert a["attribute_ids_known"] is True
    for pair in [("shoe", 24, 23), ("sleeve", 32, 31), ("neckline", 35, 33), ("hat", 15, 14),
                 ("collar", 29, 28)]:
        assert pair in pairs
    # attributes by name: sample id 198 "set-in sleeve" is final id 204; "gauze" (263) is dropped
    ann19 = next(a for d in dicts for a in d["annotations"] if a["id"] == 19)
    assert ann19["attribute_ids"] == [204]
    assert report.count(Reason.ATTRIBUTE_NOT_IN_FINAL) == 1


@needs_sample
def test_kaggle_rows_equal_derived_coco_masks():
    dicts = load_imaterialist_csv(
        str(KG / f"train_rows_{KG_ID}.csv"), str(KG / "images"),
        label_json=str(LABELS),
    )
    derived = json.loads((KG / f"derived_coco_{KG_ID}.json").read_text())
    assert len(dicts) == 1
    d = dicts[0]
    assert (d["height"], d["width"], d["kaggle_image_id"]) == (5214, 3676, KG_ID)
    assert len(d["annotations"]) == len(derived["annotations"]) == 9
    for ours, ref in zip(d["annotations"], derived["annotations"]):
        m_ours = coco_rle_decode(ours["segmentation"], 5214, 3676).astype(bool)
        m_ref = coco_rle_decode(ref["segmentation"]).astype(bool)
        iou = (m_ours & m_ref).sum() / (m_ours | m_ref).sum()
        assert iou == 1.0
        assert ours["bbox"] == ref["bbox"]
        x0, y0, x1, y1 = mask_to_box_xyxy(m_ours).tolist()
        assert ours["bbox"] == [x0, y0, x1 - x0, y1 - y0]
        assert ours["category_id"] == ref["category_id"]
        assert ours["attribute_ids"] == ref["attribute_ids"]
        # an empty AttributesIds cell is "unknown", not "none"
        assert ours["attribute_ids_known"] == ref["attribute_ids_known"]
    assert [a["attribute_ids_known"] for a in d["annotations"]] == [True] * 5 + [False] * 4


@needs_sample
def test_generic_coco_contiguous_ids():
    path = SHARED_DATA / "coco_eval_fixtures" / "instances_val2014_100.json"
    MetadataCatalog.remove("test_coco100")
    dicts = load_coco_json(str(path), "/images", dataset_name="test_coco100", check_files=False)
    raw = json.loads(path.read_text())
    assert len(dicts) == 100 and sum(len(d["annotations"]) for d in dicts) == 839
    meta = MetadataCatalog.get("test_coco100")
    id_map = meta.thing_dataset_id_to_contiguous_id
    assert sorted(id_map.values()) == list(range(80)) and len(meta.thing_classes) == 80
    assert id_map[90] == 79 and meta.thing_classes[0] == "person"
    raw_anns = {a["id"]: a for a in raw["annotations"]}
    for d in dicts:
        for a in d["annotations"]:
            assert a["category_id"] == id_map[raw_anns[a["id"]]["category_id"]]
            assert a["bbox"] == raw_anns[a["id"]]["bbox"]
            if a["iscrowd"]:  # uncompressed crowd RLE is stored compressed
                assert isinstance(a["segmentation"]["counts"], str)
    MetadataCatalog.remove("test_coco100")


def test_dataset_root_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("EFFDETMASK_DATASETS", str(tmp_path / "env"))
    assert dataset_root(str(tmp_path / "cfg")) == str(tmp_path / "cfg")
    assert dataset_root("") == str(tmp_path / "env")
    monkeypatch.delenv("EFFDETMASK_DATASETS")
    assert dataset_root("") == str(Path("datasets").resolve())


def test_builtins_registered_lazily_and_idempotent(tmp_path):
    for name in ("fashionpedia_train", "fashionpedia_val", "imat2020_train",
                 "fashion_synth_train", "fashion_synth_val", "fashionpedia_api_sample",
                 "imat2020_sample"):
        assert name in DatasetCatalog
        assert MetadataCatalog.get(name).thing_classes == class_names()
    register_all()  # a second call is a no-op, not a "registered twice" error
    meta = MetadataCatalog.get("fashionpedia_val")
    assert meta.json_file.endswith("annotations/instances_attributes_val2020.json")
    assert meta.image_root.endswith("fashionpedia/test") and meta.evaluator_type == "coco"


def test_synth_registration_uses_generator(monkeypatch, tmp_path):
    """fashion_synth_* call ensure_fashion_synth and load its JSON with the Fashionpedia loader."""
    import effdetmask.data.synthetic as synthetic

    calls = []

    def fake_ensure(root, split, num_images, image_size, seed):
        calls.append((root, split, num_images, image_size, seed))
        folder = Path(root) / "fashion_synth" / split
        folder.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(folder / "0.jpg"), np.full((40, 60, 3), 128, np.uint8))
        data = {"images": [{"id": 1, "file_name": "0.jpg", "height": 40, "width": 60}],
                "annotations": [{"id": 1, "image_id": 1, "category_id": 23, "iscrowd": 0,
                                 "segmentation": [[5, 5, 20, 5, 20, 30]], "attribute_ids": [340]}],
                "categories": [{"id": i, "name": n} for i, n in enumerate(class_names())]}
        (folder / "instances.json").write_text(json.dumps(data))
        return str(folder / "instances.json")

    monkeypatch.setattr(synthetic, "ensure_fashion_synth", fake_ensure)
    try:
        register_all(str(tmp_path), synth={"val": (3, 64, 7)}, overwrite=True)
        dicts = DatasetCatalog.get("fashion_synth_val")
        assert calls == [(str(tmp_path), "val", 3, 64, 7)]
        ann = dicts[0]["annotations"][0]
        assert ann["bbox"] == _box_from_mask(ann["segmentation"], 40, 60)
        assert ann["attribute_ids"] == [340] and ann["category_id"] == 23
        assert MetadataCatalog.get("fashion_synth_val").json_file.endswith("instances.json")
    finally:
        register_all(overwrite=True)  # back to the default root for other tests


@needs_sample
def test_real_sample_registered_under_its_root(tmp_path):
    try:
        register_all(str(SHARED_DATA), overwrite=True)
        sample = DatasetCatalog.get("fashionpedia_api_sample")
        kaggle = DatasetCatalog.get("imat2020_sample")
        assert [d["image_id"] for d in sample] == [9813, 10223]
        assert sum(len(d["annotations"]) for d in sample) == 12
        assert [Path(d["file_name"]).stem for d in kaggle] == [KG_ID]
        register_all(str(tmp_path), overwrite=True)
        with pytest.raises(FileNotFoundError, match="imat2020_sample.*datasets/README.md"):
            DatasetCatalog.get("imat2020_sample")
    finally:
        register_all(overwrite=True)


def test_imat_sample_needs_exactly_one_rows_file(tmp_path):
    base = tmp_path / "imat2020_train_rle"
    (base / "images").mkdir(parents=True)
    (tmp_path / "label_descriptions").mkdir()
    (tmp_path / "label_descriptions" / "imat2020_fgvc7_label_descriptions.json").write_text("{}")
    try:
        register_all(str(tmp_path), overwrite=True)
        with pytest.raises(FileNotFoundError, match="expected one train_rows_.*found 0"):
            DatasetCatalog.get("imat2020_sample")
        for i in range(2):
            (base / f"train_rows_{i}.csv").write_text("ImageId,EncodedPixels\n")
        with pytest.raises(FileNotFoundError, match="expected one train_rows_.*found 2"):
            DatasetCatalog.get("imat2020_sample")
    finally:
        register_all(overwrite=True)
