"""The attribute prior baseline: each category's most frequent training attributes, applied to a
results JSON, scored against the model on the same detections (a hand-made case)."""

import copy
import importlib.util
import json
from pathlib import Path

import pytest

from effdetmask.data.taxonomy import class_names
from effdetmask.evaluation import dataset_dicts_to_coco
from effdetmask.evaluation.attribute_prior import (
    apply_attribute_prior,
    attribute_prior,
    compare_with_prior,
)

REPO = Path(__file__).resolve().parents[2]
SHIRT, SKIRT, SHOE, SLEEVE, NECKLINE = 0, 8, 23, 31, 33
PLAIN, STRIPE, HIP, MINI, KNEE, SHORT, ELBOW, WRIST, VNECK = (
    317, 328, 147, 149, 151, 157, 158, 160, 183)


def _ann(cat, attrs, known=True, box=(0, 0, 10, 10)):
    x, y, w, h = box
    return {"category_id": cat, "attribute_ids": attrs, "attribute_ids_known": known,
            "bbox": [float(v) for v in box], "iscrowd": 0,
            "segmentation": [[x, y, x + w, y, x + w, y + h, x, y + h]]}


def _train():
    anns = [_ann(SHIRT, [PLAIN, HIP]), _ann(SHIRT, [PLAIN]), _ann(SHIRT, [PLAIN, HIP, WRIST]),
            _ann(SHIRT, [], known=False),  # unknown: neither counts nor sizes the prior
            _ann(SLEEVE, [SHORT]), _ann(SLEEVE, [ELBOW]), _ann(SLEEVE, [SHORT]),
            _ann(NECKLINE, []), _ann(NECKLINE, []), _ann(NECKLINE, [VNECK]),
            _ann(SKIRT, [KNEE]), _ann(SKIRT, [MINI]),  # a tie: the smaller id
            _ann(SHOE, [])]
    return [{"image_id": 1, "height": 50, "width": 50, "file_name": "t.jpg", "annotations": anns}]


def test_prior_is_the_top_k_with_k_the_median_count():
    prior = attribute_prior(_train())
    assert prior == {SHIRT: [HIP, PLAIN], SKIRT: [MINI], SLEEVE: [SHORT], NECKLINE: []}
    # the same from the Fashionpedia JSON of the same ground truth
    assert attribute_prior(dataset_dicts_to_coco(_train(), class_names())) == prior


def test_apply_replaces_only_attribute_ids():
    results = [{"image_id": 1, "category_id": SHIRT, "score": 0.9, "bbox": [0, 0, 5, 5],
                "attribute_ids": [STRIPE]},
               {"image_id": 1, "category_id": SHOE, "score": 0.5, "bbox": [1, 1, 5, 5]}]
    before = copy.deepcopy(results)
    out = apply_attribute_prior(results, {SHIRT: [HIP, PLAIN]})
    assert [r["attribute_ids"] for r in out] == [[HIP, PLAIN], []]
    assert [{k: v for k, v in r.items() if k != "attribute_ids"} for r in out] == [
        {k: v for k, v in r.items() if k != "attribute_ids"} for r in before]
    assert results == before


def _val():
    """Two shirts that differ from the prior (one striped, one without hip length), a sleeve."""
    anns = [_ann(SHIRT, [STRIPE, HIP], box=(2, 2, 20, 30)),
            _ann(SHIRT, [PLAIN], box=(25, 2, 20, 30)), _ann(SLEEVE, [WRIST], box=(5, 35, 10, 10))]
    return dataset_dicts_to_coco([{"image_id": 1, "height": 50, "width": 50, "file_name": "v.jpg",
                                   "annotations": anns}], class_names())


def _results(gt, attributes):
    return [{"image_id": 1, "category_id": a["category_id"], "score": 0.9 - 0.1 * i,
             "bbox": a["bbox"], "segmentation": a["segmentation"], "attribute_ids": attributes(a)}
            for i, a in enumerate(gt["annotations"])]


def test_a_model_that_reads_attributes_beats_the_prior():
    gt, prior = _val(), attribute_prior(_train())
    got = compare_with_prior(gt, _results(gt, lambda a: a["attribute_ids"]), prior)
    for iou_type in ("bbox", "segm"):
        model, base = got["model"][iou_type], got["prior"][iou_type]
        assert model["ATTR_F1"] == pytest.approx(100.0)
        # prior: shirts {hip, plain} vs {stripe, hip} and {plain}; sleeve {short} vs {wrist}
        assert base["ATTR_F1"] == pytest.approx(100 * 2 * 2 / (5 + 4))
        assert model["AP_IOU_F1"] == pytest.approx(100.0) and base["AP_IOU_F1"] < 100.0
        assert model["AP_IOU"] == base["AP_IOU"] == pytest.approx(100.0)  # same detections


def test_benchmark_script_prints_and_writes_the_comparison(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("attribute_prior_bench",
                                                  REPO / "benchmarks" / "attribute_prior.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    gt = _val()
    files = {"train": dataset_dicts_to_coco(_train(), class_names()), "gt": gt,
             "results": _results(gt, lambda a: a["attribute_ids"])}
    for name, data in files.items():
        (tmp_path / f"{name}.json").write_text(json.dumps(data))
    out = bench.main(["--train-json", str(tmp_path / "train.json"), "--gt-json",
                      str(tmp_path / "gt.json"), "--results", str(tmp_path / "results.json"),
                      "--output", str(tmp_path / "cmp.json")])
    text = capsys.readouterr().out
    assert "segm ATTR_F1" in text and "bbox AP_IOU_F1" in text
    saved = json.loads((tmp_path / "cmp.json").read_text())
    assert saved["prior_attribute_ids"] == {str(SHIRT): [HIP, PLAIN], str(SKIRT): [MINI],
                                            str(SLEEVE): [SHORT], str(NECKLINE): []}
    assert saved["model"]["segm"]["ATTR_F1"] == pytest.approx(100.0)
    assert out["prior"]["segm"]["ATTR_F1"] < saved["model"]["segm"]["ATTR_F1"]
