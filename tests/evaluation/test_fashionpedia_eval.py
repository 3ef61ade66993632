"""evaluate_fashionpedia_json equals the official FPEval (PyPI ``fashionpedia`` 1.1) on every key;
the per-attribute-group F1 table on a hand-made case.

The oracle is a test-only dependency (it also needs scikit-learn, scikit-image, matplotlib): its
tests skip without it, and fail instead under ``CI=true``, where it must be installed. It crashes
on numpy >= 1.24 (``np.float`` in ``accumulate``), so the tests restore that alias while it runs.
"""

import contextlib
import copy
import io
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest

from effdetmask.data.synthetic import generate_fashion_synth
from effdetmask.data.taxonomy import load_taxonomy
from effdetmask.evaluation import (
    attribute_group_f1,
    evaluate_coco_json,
    evaluate_fashionpedia_json,
    format_attribute_group_table,
    format_fashionpedia_summary,
)
from effdetmask.evaluation.backends import complete_gt_dataset
from effdetmask.evaluation.fake_results import perturbed_results
from effdetmask.structures.masks import coco_rle_encode

SAMPLE = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "fashionpedia_api_sample"

# FPEval's summary keys: results (IoU + F1), resultDet (IoU only), resultF1 (F1 only)
AP_ALL = ["AP", "APs", "APm", "APl", "AR@1", "AR@10", "AR@100", "ARs@100", "ARm@100", "ARl@100"]
IOU_F1_KEYS = {"APo", "APp", "AP_IOU50", "AP_IOU75", "AP_F150", "AP_F175", "AP_IOU50_F150",
               "AP_IOU50_F175", "AP_IOU75_F150", "AP_IOU75_F175", *AP_ALL}
IOU_KEYS = {"APo", "APa", "APp", "AP_IOU50", "AP_IOU75", *AP_ALL}
F1_KEYS = {"APo", "APp", "AP_F150", "AP_F175", *AP_ALL}
ALL_KEYS = IOU_F1_KEYS | {"iou/" + k for k in IOU_KEYS} | {"f1/" + k for k in F1_KEYS}


def _official(gt, results, iou_type, monkeypatch):
    """FPEval's three summaries with our key prefixes, as fractions (-1 = nothing to measure)."""
    try:
        from fashionpedia.fp import Fashionpedia
        from fashionpedia.fp_eval import FPEval
    except ImportError as e:
        if os.environ.get("CI", "").strip().lower() in ("true", "1", "yes"):  # as conftest.py
            pytest.fail(f"the oracle 'fashionpedia==1.1' is a test dependency, required under "
                        f"CI=true: {e}")
        pytest.skip(f"oracle 'fashionpedia' (fashionpedia-api 1.1) not installed: {e}")
    monkeypatch.setattr(np, "float", float, raising=False)  # removed in numpy 1.24
    results = copy.deepcopy(list(results))
    if iou_type == "segm":  # as evaluate_coco_json: mask area, not box area, for mask AP
        for r in results:
            r.pop("bbox", None)
    with contextlib.redirect_stdout(io.StringIO()):
        fp_gt = Fashionpedia()
        fp_gt.dataset = copy.deepcopy(complete_gt_dataset(gt))  # its loader needs bbox and area
        fp_gt.createIndex()
        fp_eval = FPEval(fp_gt, fp_gt.loadRes(results), iou_type)
        fp_eval.run()
    out = {}
    for prefix, summary in (("", fp_eval.results), ("iou/", fp_eval.resultDet),
                            ("f1/", fp_eval.resultF1)):
        out.update({prefix + k: float(v) for k, v in summary.items()})
    return out


def _assert_equal_official(ours, ref):
    assert set(ours) == set(ref) == ALL_KEYS
    for key, value in ref.items():
        if value < 0:
            assert math.isnan(ours[key]), (key, ours[key])
        else:
            assert abs(ours[key] - 100.0 * value) < 1e-6, (key, ours[key], 100.0 * value)


@pytest.fixture(scope="module")
def synth_gt(tmp_path_factory):
    """10 generated images (384 px: objects in all three area ranges), final taxonomy."""
    path = generate_fashion_synth(str(tmp_path_factory.mktemp("fp_synth")), "val", 10, 384, 3)
    return json.loads(Path(path).read_text())


def _crowd_case(gt):
    """Crowd ground truths, an annotation with id 0 (COCOeval reads a match to it as no match)
    and 130 detections of one object (more than the 100 kept per image and category)."""
    gt = copy.deepcopy(gt)
    rng = np.random.default_rng(5)
    for ann in gt["annotations"]:
        ann["iscrowd"] = int(rng.random() < 0.1)
    gt["annotations"][0]["id"] = 0
    results = perturbed_results(gt, 2, duplicate=0.5)
    first = gt["annotations"][1]
    one_object = {**gt, "annotations": [first] * 130,
                  "images": [i for i in gt["images"] if i["id"] == first["image_id"]]}
    return gt, results + perturbed_results(one_object, 3, drop=0, wrong_class=0, duplicate=0,
                                           false_positives=0)


CASES = {
    # real sample (pre-release taxonomy: 48 categories, 320 attributes), all scores 1.0
    "real_sample": lambda gt: (json.loads((SAMPLE / "sample.json").read_text()),
                               json.loads((SAMPLE / "fake_results.json").read_text())),
    "perturbed": lambda gt: (gt, perturbed_results(gt, 1)),
    # masks only (boxes and areas from masks in box AP), tied scores, heavy attribute noise
    "masks_only_ties": lambda gt: (gt, perturbed_results(gt, 4, with_bbox=False, score_decimals=1,
                                                         attribute_noise=0.6)),
    "crowd_id0_maxdets": _crowd_case,
}


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_equals_official_fpeval(case, iou_type, synth_gt, monkeypatch, shared_data):
    if case == "real_sample":  # skipped without ../shared/data, failed under CI=true
        shared_data("fashionpedia_api_sample", "fake_results.json")
    gt, results = CASES[case](synth_gt)
    before = json.dumps([gt, results], sort_keys=True)
    ours = evaluate_fashionpedia_json(gt, results, [iou_type])[iou_type]
    assert json.dumps([gt, results], sort_keys=True) == before  # inputs untouched
    _assert_equal_official(ours, _official(gt, results, iou_type, monkeypatch))


def _exact_results(gt):
    return [{"image_id": a["image_id"], "category_id": a["category_id"], "score": 1.0,
             "segmentation": a["segmentation"], "bbox": a["bbox"],
             "attribute_ids": a.get("attribute_ids", [])} for a in gt["annotations"]]


def test_perfect_and_empty_results(synth_gt):
    perfect = evaluate_fashionpedia_json(synth_gt, _exact_results(synth_gt))
    for iou_type in ("bbox", "segm"):
        m = perfect[iou_type]
        assert set(m) == ALL_KEYS
        for key in ("AP", "AP_IOU75_F175", "APo", "APp", "iou/AP", "iou/APa", "f1/AP", "AR@100"):
            assert m[key] == pytest.approx(100.0), key
    empty = evaluate_fashionpedia_json(synth_gt, [], ["segm"])["segm"]
    assert empty["AP"] == 0.0 and empty["iou/AP"] == 0.0 and empty["AR@100"] == 0.0
    no_ann = {**synth_gt, "annotations": []}
    assert all(math.isnan(v) for v in evaluate_fashionpedia_json(no_ann, [])["bbox"].values())


def test_iou_summary_equals_coco_ap(synth_gt):
    """Without crowd ground truth the IoU-only summary is COCO's AP (pycocotools)."""
    results = perturbed_results(synth_gt, 6)
    ours = evaluate_fashionpedia_json(synth_gt, results)
    coco = evaluate_coco_json(synth_gt, results, backend="pycocotools")
    for iou_type in ("bbox", "segm"):
        for key, coco_key in (("AP", "AP"), ("AP_IOU50", "AP50"), ("AP_IOU75", "AP75"),
                              ("APs", "APs"), ("APm", "APm"), ("APl", "APl")):
            assert ours[iou_type]["iou/" + key] == pytest.approx(coco[iou_type][coco_key],
                                                                 abs=1e-9), key
    assert "AP(IoU+F1)" in format_fashionpedia_summary(ours["segm"])


def test_inputs_paths_subsets_and_errors(synth_gt, tmp_path):
    results = perturbed_results(synth_gt, 7)
    (tmp_path / "gt.json").write_text(json.dumps(synth_gt))
    (tmp_path / "res.json").write_text(json.dumps(results))
    from_files = evaluate_fashionpedia_json(tmp_path / "gt.json", str(tmp_path / "res.json"))
    from_dicts = evaluate_fashionpedia_json(synth_gt, results)
    for iou_type in ("bbox", "segm"):
        assert from_files[iou_type] == pytest.approx(from_dicts[iou_type], nan_ok=True)
    first = synth_gt["images"][0]["id"]
    subset = evaluate_fashionpedia_json(synth_gt, results, ["segm"], img_ids=[first])["segm"]
    one_image = {**synth_gt, "images": synth_gt["images"][:1]}
    only = evaluate_fashionpedia_json(one_image, [r for r in results if r["image_id"] == first],
                                      ["segm"])["segm"]
    assert subset == pytest.approx(only, nan_ok=True)
    with pytest.raises(ValueError, match="iou_type"):
        evaluate_fashionpedia_json(synth_gt, results, ["keypoints"])
    with pytest.raises(ValueError, match="not in the ground truth"):
        evaluate_fashionpedia_json(synth_gt, [{**results[0], "image_id": 10**9}])
    with pytest.raises(ValueError, match="attribute id 999"):
        evaluate_fashionpedia_json(synth_gt, [{**results[0], "attribute_ids": [999]}])


def _box_mask(h, w, y0, y1, x0, x1):
    mask = np.zeros((h, w), np.uint8)
    mask[y0:y1, x0:x1] = 1
    return coco_rle_encode(mask)


def test_attribute_group_f1_hand_made():
    tax = load_taxonomy()

    def attr(group, k):
        return [i for i, g in zip(tax.attribute_ids, tax.attribute_supercategories)
                if g == group][k]

    length0, length1 = attr("length", 0), attr("length", 1)
    pattern0, pattern1 = attr("textile pattern", 0), attr("textile pattern", 1)
    neck0, neck1 = attr("neckline type", 0), attr("neckline type", 1)
    dress, sleeve, shoe = (tax.class_name_to_id[n] for n in ("dress", "sleeve", "shoe"))
    h = w = 100
    gt = {
        "images": [{"id": 1, "height": h, "width": w, "file_name": "a.jpg"}],
        "categories": [{"id": i, "name": n} for i, n in enumerate(tax.class_names)],
        "attributes": [{"id": i, "name": n, "supercategory": s} for i, n, s in
                       zip(tax.attribute_ids, tax.attribute_names, tax.attribute_supercategories)],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": dress, "iscrowd": 0,
             "segmentation": _box_mask(h, w, 10, 60, 10, 60),
             "attribute_ids": [length0, pattern0, neck0]},
            {"id": 2, "image_id": 1, "category_id": sleeve, "iscrowd": 0,
             "segmentation": _box_mask(h, w, 70, 90, 70, 90), "attribute_ids": [length1]},
        ],
    }

    def det(cat, score, box, attrs):
        return {"image_id": 1, "category_id": cat, "score": score,
                "segmentation": _box_mask(h, w, *box), "attribute_ids": attrs}

    results = [
        det(dress, 0.9, (10, 60, 10, 60), [length0, pattern1]),  # length right, pattern wrong
        det(sleeve, 0.8, (71, 90, 70, 90), [length1, neck1]),  # IoU 0.95; neckline wrong
        det(dress, 0.5, (10, 60, 10, 60), [pattern0, neck0]),  # duplicate: unmatched, not counted
        det(dress, 0.7, (0, 5, 90, 100), [length0]),  # no overlap: not counted
        det(shoe, 0.6, (10, 60, 10, 60), [pattern0]),  # category without attributes
    ]
    table = attribute_group_f1(gt, results, "segm")
    assert list(table)[-1] == "all" and table["all"]["pairs"] == 2
    assert table["length"] == {"precision": 100.0, "recall": 100.0, "f1": 100.0, "gt": 2,
                               "predicted": 2, "pairs": 2}
    for group in ("textile pattern", "neckline type"):
        row = table[group]
        assert (row["precision"], row["recall"], row["f1"], row["gt"], row["predicted"]) == (
            0.0, 0.0, 0.0, 1, 1), group
    assert (table["all"]["precision"], table["all"]["recall"], table["all"]["f1"]) == (50.0, 50.0,
                                                                                       50.0)
    assert math.isnan(table["animal"]["f1"]) and table["animal"]["gt"] == 0
    # a stricter IoU threshold loses the sleeve (IoU 0.95)
    strict = attribute_group_f1(gt, results, "bbox", iou_threshold=0.96)
    assert strict["all"]["pairs"] == 1 and strict["length"]["gt"] == 1
    text = format_attribute_group_table(table)
    assert "textile pattern" in text and "nan" in text
