"""COCOEvaluator end to end on a tiny dataset of dataset dicts (polygon and RLE annotations)."""

import json
import math

import numpy as np
import pytest
import torch

from effdetmask.data.catalog import DatasetCatalog, MetadataCatalog
from effdetmask.evaluation import BACKENDS, COCOEvaluator
from effdetmask.structures.boxes import xywh_to_xyxy
from effdetmask.structures.masks import coco_rle_encode, segmentation_to_mask

NAMES = ["shirt, blouse", "sleeve", "cape"]  # "cape" has no ground truth


def _dataset():
    """2 non-square images: one with polygon annotations, one with an RLE annotation."""
    rle_mask = np.zeros((30, 50), dtype=np.uint8)
    rle_mask[5:20, 10:40] = 1
    return [
        {"file_name": "a.jpg", "image_id": 1, "height": 40, "width": 60, "annotations": [
            {"bbox": [10.0, 5.0, 20.0, 20.0], "category_id": 0, "iscrowd": 0,
             "segmentation": [[10, 5, 30, 5, 30, 25, 10, 25]]},
            {"bbox": [35.0, 10.0, 15.0, 25.0], "category_id": 1, "iscrowd": 0,
             "segmentation": [[35, 10, 50, 10, 50, 35, 35, 35]]},
        ]},
        {"file_name": "b.jpg", "image_id": 2, "height": 30, "width": 50, "annotations": [
            {"bbox": [10.0, 5.0, 30.0, 15.0], "category_id": 1, "iscrowd": 0,
             "segmentation": coco_rle_encode(rle_mask)},
        ]},
    ]


def _inputs(dicts):
    return [{"image_id": d["image_id"], "height": d["height"], "width": d["width"]} for d in dicts]


def _perfect_outputs(dicts, as_rle):
    """Predictions identical to the ground truth, at the original resolution."""
    outputs = []
    for d in dicts:
        anns = d["annotations"]
        masks = [segmentation_to_mask(a["segmentation"], d["height"], d["width"]) for a in anns]
        inst = {
            "boxes": xywh_to_xyxy(torch.tensor([a["bbox"] for a in anns])),
            "scores": torch.linspace(0.9, 0.8, len(anns)),
            "classes": torch.tensor([a["category_id"] for a in anns]),
        }
        if as_rle:
            inst["masks_rle"] = [coco_rle_encode(m) for m in masks]
        else:
            inst["masks"] = torch.from_numpy(np.stack(masks)).bool()
        outputs.append({"instances": inst})
    return outputs


def _empty_outputs(dicts):
    return [{"instances": {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0),
                           "classes": torch.zeros(0, dtype=torch.int64),
                           "masks": torch.zeros(0, d["height"], d["width"], dtype=torch.bool)}}
            for d in dicts]


@pytest.mark.parametrize("backend", sorted(BACKENDS))
@pytest.mark.parametrize("as_rle", [False, True])
def test_perfect_predictions_give_ap_100(tmp_path, backend, as_rle):
    dicts = _dataset()
    ev = COCOEvaluator(dataset_dicts=dicts, class_names=NAMES, output_dir=str(tmp_path),
                       backend=backend)
    ev.reset()
    outputs = _perfect_outputs(dicts, as_rle)
    ev.process(_inputs(dicts[:1]), outputs[:1])
    ev.process(_inputs(dicts[1:]), outputs[1:])
    results = ev.evaluate()
    for iou_type in ("bbox", "segm"):
        m = results[iou_type]
        # pycocotools divides by tp + fp + eps, so its "100" is 100 - 3e-14
        for key in ("AP", "AP50", "AP75", "AP-shirt, blouse", "AP-sleeve"):
            assert m[key] == pytest.approx(100.0, abs=1e-9), key
        assert math.isnan(m["AP-cape"])
    written = json.loads((tmp_path / "coco_instances_results.json").read_text())
    assert len(written) == 3 and isinstance(written[0]["segmentation"]["counts"], str)


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_empty_predictions_give_zero_ap(backend):
    dicts = _dataset()
    ev = COCOEvaluator(dataset_dicts=dicts, class_names=NAMES, backend=backend)
    ev.process(_inputs(dicts), _empty_outputs(dicts))
    results = ev.evaluate()
    assert results["bbox"]["AP"] == results["segm"]["AP"] == 0.0
    assert math.isnan(results["segm"]["AP-cape"])


def test_nothing_processed_returns_empty_dict():
    ev = COCOEvaluator(dataset_dicts=_dataset(), class_names=NAMES)
    assert ev.evaluate() == {}


def test_letterbox_sized_masks_are_rejected():
    dicts = _dataset()
    outputs = _perfect_outputs(dicts[:1], as_rle=False)
    outputs[0]["instances"]["masks"] = torch.zeros(2, 64, 64, dtype=torch.bool)
    ev = COCOEvaluator(dataset_dicts=dicts, class_names=NAMES)
    with pytest.raises(ValueError, match="letterbox"):
        ev.process(_inputs(dicts[:1]), outputs)


def test_catalog_dataset_and_dataset_ids_in_json(tmp_path):
    name = "test_coco_evaluator_tiny"
    DatasetCatalog.register(name, _dataset)
    MetadataCatalog.get(name).set(thing_classes=NAMES,
                                  thing_dataset_id_to_contiguous_id={7: 0, 8: 1, 9: 2})
    try:
        ev = COCOEvaluator(name, output_dir=str(tmp_path), backend="pycocotools")
        dicts = _dataset()
        # only the second image is evaluated: a partial pass measures the images it saw
        ev.process(_inputs(dicts[1:]), _perfect_outputs(dicts[1:], as_rle=True))
        results = ev.evaluate()
        assert results["segm"]["AP"] == pytest.approx(100.0, abs=1e-9)
        assert math.isnan(results["segm"]["AP-shirt, blouse"])
        written = json.loads((tmp_path / "coco_instances_results.json").read_text())
        assert [r["category_id"] for r in written] == [8]
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def _worker(rank, world_size, port, queue):
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}",
                                         rank=rank, world_size=world_size)
    try:
        dicts = _dataset()
        ev = COCOEvaluator(dataset_dicts=dicts, class_names=NAMES, backend="faster_coco_eval")
        # each rank sees one image, as with a DistributedSampler
        ev.process(_inputs(dicts[rank:rank + 1]), _perfect_outputs(dicts[rank:rank + 1], False))
        queue.put((rank, ev.evaluate()["segm"]["AP"]))
    finally:
        torch.distributed.destroy_process_group()


def test_gather_across_two_processes(free_port):
    ctx = torch.multiprocessing.get_context("spawn")
    queue = ctx.SimpleQueue()
    torch.multiprocessing.start_processes(_worker, args=(2, free_port(), queue), nprocs=2,
                                          start_method="spawn")
    got = dict(queue.get() for _ in range(2))
    # AP 100 needs both images' predictions; every rank receives rank 0's numbers
    assert got == {0: 100.0, 1: 100.0}
