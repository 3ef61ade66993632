"""Attributes through the evaluation: results JSON ``attribute_ids``, the GT's attribute lists,
and the COCO evaluator's Fashionpedia keys (AP with IoU+F1, attribute F1 per group), across
ranks too."""

import json
import math

import numpy as np
import pytest
import torch

from effdetmask.data.catalog import DatasetCatalog, MetadataCatalog
from effdetmask.data.taxonomy import NUM_ATTRIBUTES, class_names, fashionpedia_metadata
from effdetmask.evaluation import (
    COCOEvaluator,
    dataset_dicts_to_coco,
    evaluate_fashionpedia_json,
    instances_to_coco_json,
)
from effdetmask.structures.boxes import xywh_to_xyxy
from effdetmask.structures.masks import segmentation_to_mask

SHIRT, SHOE, SLEEVE = 0, 23, 31
PLAIN, STRIPE, HIP, SHORT = 317, 328, 147, 157


def _ann(cat, x, y, w, h, attrs):
    return {"bbox": [float(x), float(y), float(w), float(h)], "category_id": cat, "iscrowd": 0,
            "segmentation": [[x, y, x + w, y, x + w, y + h, x, y + h]], "attribute_ids": attrs,
            "attribute_ids_known": True}


def _dataset():
    return [
        {"file_name": "a.jpg", "image_id": 1, "height": 60, "width": 80, "annotations": [
            _ann(SHIRT, 10, 5, 30, 40, [PLAIN, HIP]), _ann(SLEEVE, 45, 10, 15, 20, [SHORT]),
            _ann(SHOE, 60, 40, 15, 10, [])]},
        {"file_name": "b.jpg", "image_id": 2, "height": 50, "width": 40, "annotations": [
            _ann(SHIRT, 5, 5, 25, 35, [PLAIN])]},
    ]


def _inputs(dicts):
    return [{"image_id": d["image_id"], "height": d["height"], "width": d["width"]} for d in dicts]


def _outputs(dicts, attributes=None):
    """Perfect boxes and masks; ``attributes(ann) -> predicted ids`` (None: no attribute field)."""
    outputs = []
    for d in dicts:
        anns = d["annotations"]
        masks = [segmentation_to_mask(a["segmentation"], d["height"], d["width"]) for a in anns]
        inst = {"boxes": xywh_to_xyxy(torch.tensor([a["bbox"] for a in anns])),
                "scores": torch.linspace(0.9, 0.8, len(anns)),
                "classes": torch.tensor([a["category_id"] for a in anns]),
                "masks": torch.from_numpy(np.stack(masks)).bool()}
        if attributes is not None:
            inst["attribute_ids"] = [attributes(a) for a in anns]
            inst["attribute_scores"] = torch.zeros(len(anns), NUM_ATTRIBUTES)
        outputs.append({"instances": inst})
    return outputs


def _evaluate(dicts, outputs, tmp_path=None, **kw):
    ev = COCOEvaluator(dataset_dicts=dicts, class_names=class_names(), backend="pycocotools",
                       output_dir=None if tmp_path is None else str(tmp_path), **kw)
    ev.process(_inputs(dicts), outputs)
    return ev.evaluate()


def _wrong_pattern(ann):
    return [STRIPE if a == PLAIN else a for a in ann["attribute_ids"]]


def test_results_json_carries_sorted_attribute_ids():
    d = _dataset()[0]
    out = _outputs([d], lambda a: list(reversed(a["attribute_ids"])))[0]["instances"]
    out["attribute_ids"][0] = torch.tensor([HIP, PLAIN])  # a tensor reads as well as a list
    results = instances_to_coco_json(out, 1, d["height"], d["width"])
    assert [r["attribute_ids"] for r in results] == [[HIP, PLAIN], [SHORT], []]
    json.dumps(results)  # plain ints
    del out["attribute_ids"]
    assert all("attribute_ids" not in r for r in instances_to_coco_json(out, 1, 60, 80))
    out["attribute_ids"] = [[PLAIN]]
    with pytest.raises(ValueError, match="1 attribute sets for 3 detections"):
        instances_to_coco_json(out, 1, 60, 80)


def test_ground_truth_gets_attribute_ids_and_the_attribute_list():
    dicts = _dataset()
    dicts[1]["annotations"][0].update(attribute_ids=[], attribute_ids_known=False)
    gt = dataset_dicts_to_coco(dicts, class_names())
    assert [a["attribute_ids"] for a in gt["annotations"]] == [[HIP, PLAIN], [SHORT], [], []]
    assert [a["attribute_ids_known"] for a in gt["annotations"]] == [True, True, True, False]
    assert len(gt["attributes"]) == NUM_ATTRIBUTES
    assert {"id": PLAIN, "name": "plain (pattern)", "supercategory": "textile pattern"} in (
        gt["attributes"])
    for d in dicts:  # a dataset without attributes keeps plain COCO
        for a in d["annotations"]:
            del a["attribute_ids"], a["attribute_ids_known"]
    gt = dataset_dicts_to_coco(dicts, class_names())
    assert "attributes" not in gt and "attribute_ids" not in gt["annotations"][0]


def test_right_attributes_give_ap_iou_f1_100(tmp_path):
    dicts = _dataset()
    metrics = _evaluate(dicts, _outputs(dicts, lambda a: a["attribute_ids"]), tmp_path)
    for iou_type in ("bbox", "segm"):
        m = metrics[iou_type]
        for key in ("AP", "AP_IOU_F1", "AP_IOU50_F150", "AP_IOU", "ATTR_F1"):
            assert m[key] == pytest.approx(100.0), (iou_type, key)
        assert m["ATTR_F1-textile pattern"] == pytest.approx(100.0)
    written = json.loads((tmp_path / "coco_instances_results.json").read_text())
    assert [r["attribute_ids"] for r in written] == [[HIP, PLAIN], [SHORT], [], [PLAIN]]


def test_wrong_attributes_lower_ap_iou_f1_not_ap(tmp_path, caplog):
    dicts = _dataset()
    with caplog.at_level("INFO", logger="effdetmask.evaluation.attribute_eval"):
        metrics = _evaluate(dicts, _outputs(dicts, _wrong_pattern), tmp_path)
    m = metrics["segm"]
    assert m["AP"] == pytest.approx(100.0) and m["AP_IOU"] == pytest.approx(100.0)
    assert m["AP_IOU_F1"] < 90.0
    # shirts: P={stripe, hip} vs G={plain, hip} and P={stripe} vs G={plain}; sleeve exact
    assert m["ATTR_F1"] == pytest.approx(100 * 2 * 2 / (4 + 4))
    assert m["ATTR_F1-textile pattern"] == 0.0 and m["ATTR_F1-length"] == pytest.approx(100.0)
    # the evaluator's numbers are the metric's on the JSON it wrote
    gt = dataset_dicts_to_coco(dicts, class_names())
    written = json.loads((tmp_path / "coco_instances_results.json").read_text())
    direct = evaluate_fashionpedia_json(gt, written)
    assert m["AP_IOU_F1"] == pytest.approx(direct["segm"]["AP"], abs=1e-9)
    assert metrics["bbox"]["AP_IOU_F1"] == pytest.approx(direct["bbox"]["AP"], abs=1e-9)
    logged = [r.getMessage() for r in caplog.records if "attribute groups" in r.getMessage()]
    assert len(logged) == 2 and "textile pattern" in logged[0] and "waistline" not in logged[0]


def test_no_attribute_keys_without_predicted_attributes_or_dataset_attributes():
    dicts = _dataset()
    assert "AP_IOU_F1" not in _evaluate(dicts, _outputs(dicts))["segm"]
    m = _evaluate(dicts, _outputs(dicts, lambda a: a["attribute_ids"]), attributes=False)
    assert "AP_IOU_F1" not in m["segm"] and m["segm"]["AP"] == pytest.approx(100.0)
    # a plain COCO dataset (load_coco_json: every attribute set unknown) is not scored on them
    for d in dicts:
        for a in d["annotations"]:
            a.update(attribute_ids=[], attribute_ids_known=False)
    assert "AP_IOU_F1" not in _evaluate(dicts, _outputs(dicts, lambda a: [PLAIN]))["segm"]


def test_catalog_dataset_with_fashionpedia_metadata(tmp_path):
    name = "test_attribute_evaluation_tiny"
    DatasetCatalog.register(name, _dataset)
    MetadataCatalog.get(name).set(**fashionpedia_metadata())
    try:
        ev = COCOEvaluator(name, output_dir=str(tmp_path), backend="pycocotools")
        dicts = _dataset()
        ev.process(_inputs(dicts), _outputs(dicts, _wrong_pattern))
        m = ev.evaluate()["bbox"]
        assert m["AP"] == pytest.approx(100.0) and m["AP_IOU_F1"] < 90.0
        assert not math.isnan(m["ATTR_F1"])
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def _worker(rank, world_size, port, queue):
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}",
                                         rank=rank, world_size=world_size)
    try:
        dicts = _dataset()
        ev = COCOEvaluator(dataset_dicts=dicts, class_names=class_names(), backend="pycocotools")
        # each rank sees one image; only rank 1's has wrong attributes
        attrs = (lambda a: a["attribute_ids"]) if rank == 0 else _wrong_pattern
        ev.process(_inputs(dicts[rank:rank + 1]), _outputs(dicts[rank:rank + 1], attrs))
        m = ev.evaluate()["segm"]
        queue.put((rank, (m["AP"], m["ATTR_F1"])))
    finally:
        torch.distributed.destroy_process_group()


def test_attributes_are_gathered_across_two_processes(free_port):
    ctx = torch.multiprocessing.get_context("spawn")
    queue = ctx.SimpleQueue()
    torch.multiprocessing.start_processes(_worker, args=(2, free_port(), queue), nprocs=2,
                                          start_method="spawn")
    got = dict(queue.get() for _ in range(2))
    # rank 0's pairs are exact (tp 3), rank 1's shirt misses: P={stripe}, G={plain}
    f1 = 100 * 2 * 3 / (4 + 4)
    assert got[0] == got[1] and got[0][0] == pytest.approx(100.0)
    assert got[0][1] == pytest.approx(f1)
