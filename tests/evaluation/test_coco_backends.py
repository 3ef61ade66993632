"""evaluate_coco_json: both backends reproduce the COCO API demo and agree on Fashionpedia files."""

import json
import math
from pathlib import Path

import pytest

from effdetmask.evaluation import BACKENDS, evaluate_coco_json, format_per_category_table

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
COCO_DIR = DATA / "coco_eval_fixtures"
FASHION_DIR = DATA / "fashionpedia_api_sample"
# skipped without the shared data folder, failed under CI=true (tests/conftest.py)
needs_data = pytest.mark.shared_data("coco_eval_fixtures", "fashionpedia_api_sample")

# pycocotools 2.0.11 on the COCO API demo files (PROVENANCE.md), as fractions.
REFERENCE = {
    "bbox": ("instances_val2014_fakebbox100_results.json",
             {"AP": 0.504581, "AP50": 0.696973, "AP75": 0.572982}),
    "segm": ("instances_val2014_fakesegm100_results.json",
             {"AP": 0.319545, "AP50": 0.562288, "AP75": 0.298927}),
}


def _assert_same(a, b, tol=1e-9):
    """Same keys, same NaNs, values equal up to float summation order (~1e-14 in practice)."""
    assert a.keys() == b.keys()
    for key in a:
        if math.isnan(a[key]):
            assert math.isnan(b[key]), key
        else:
            assert abs(a[key] - b[key]) < tol, (key, a[key], b[key])


@needs_data
@pytest.mark.parametrize("backend", sorted(BACKENDS))
@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_coco_demo_reference_values(backend, iou_type):
    results_file, expected = REFERENCE[iou_type]
    metrics = evaluate_coco_json(COCO_DIR / "instances_val2014_100.json",
                                 COCO_DIR / results_file, [iou_type], backend)[iou_type]
    for key, value in expected.items():
        # metrics are in percent
        assert round(metrics[key] / 100.0, 6) == value, (key, metrics[key])
    assert sum(k.startswith("AP-") for k in metrics) == 80


@needs_data
@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_backends_identical_on_coco_demo(iou_type):
    results_file, _ = REFERENCE[iou_type]
    gt = json.loads((COCO_DIR / "instances_val2014_100.json").read_text())
    results = json.loads((COCO_DIR / results_file).read_text())
    ref = evaluate_coco_json(gt, results, [iou_type], "pycocotools")
    fast = evaluate_coco_json(gt, results, [iou_type], "faster_coco_eval")
    _assert_same(ref[iou_type], fast[iou_type])


@needs_data
def test_backends_identical_on_fashionpedia_sample():
    # sample.json has polygons and no bbox: boxes come from the polygons (GT) and the RLE masks
    # (fake results, which carry no bbox either).
    gt = json.loads((FASHION_DIR / "sample.json").read_text())
    assert all("bbox" not in a for a in gt["annotations"])
    results = json.loads((FASHION_DIR / "fake_results.json").read_text())
    ref = evaluate_coco_json(gt, results, ["bbox", "segm"], "pycocotools")
    fast = evaluate_coco_json(gt, results, ["bbox", "segm"], "faster_coco_eval")
    for iou_type in ("bbox", "segm"):
        _assert_same(ref[iou_type], fast[iou_type])
        assert 0.0 < ref[iou_type]["AP"] <= 100.0
        # pre-release 48-category taxonomy; "cape" has no instance in the sample -> NaN, not 0
        assert math.isnan(ref[iou_type]["AP-cape"])
    assert "shoe" in format_per_category_table(ref["segm"])
    # the inputs are left as they were (the COCO APIs write ids and areas into result dicts)
    assert "area" not in results[0] and "bbox" not in gt["annotations"][0]


@needs_data
@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_empty_results_give_zero_ap(backend):
    gt = json.loads((FASHION_DIR / "sample.json").read_text())
    metrics = evaluate_coco_json(gt, [], ["bbox", "segm"], backend)
    for iou_type in ("bbox", "segm"):
        assert metrics[iou_type]["AP"] == 0.0
        assert metrics[iou_type]["AP-shoe"] == 0.0
        assert math.isnan(metrics[iou_type]["AP-cape"])


def test_unknown_backend_is_named():
    with pytest.raises(KeyError, match="faster_coco_eval"):
        evaluate_coco_json({"images": [], "annotations": [], "categories": []}, [], ["bbox"],
                           "detectron2")
