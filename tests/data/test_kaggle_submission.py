"""Kaggle submission CSV: the project's Kaggle loader reads it back to the same masks (after the
non-overlap rule), classes and attributes; real Kaggle rows keep their exact EncodedPixels."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from effdetmask.data.kaggle import load_imaterialist_csv
from effdetmask.data.kaggle_submission import (
    SUBMISSION_COLUMNS,
    submission_rows,
    write_kaggle_submission,
)
from effdetmask.data.synthetic import generate_fashion_synth
from effdetmask.data.taxonomy import load_taxonomy
from effdetmask.evaluation.fake_results import perturbed_results
from effdetmask.structures.masks import coco_rle_decode, segmentation_to_mask

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT.parent / "shared" / "data"
KAGGLE = DATA / "imat2020_train_rle"
SAMPLE = DATA / "fashionpedia_api_sample"


def _expected(results, images, threshold):
    """Reference: per image, masks in score order minus every earlier mask, empties dropped."""
    out = {}
    for img in images:
        h, w = img["height"], img["width"]
        dets = sorted((r for r in results if r["image_id"] == img["id"]
                       and r["score"] >= threshold), key=lambda r: -r["score"])
        taken = np.zeros((h, w), bool, order="F")  # as decoded masks: fast elementwise ops
        rows = []
        for r in dets:
            mask = segmentation_to_mask(r["segmentation"], h, w).view(bool)
            mask &= ~taken
            taken |= mask
            if mask.any():
                rows.append((mask, r["category_id"], sorted(set(r.get("attribute_ids", [])))))
        out[Path(img["file_name"]).stem] = rows
    return out


def _read_back(csv_path, images):
    sizes = {Path(i["file_name"]).stem: (i["height"], i["width"]) for i in images}
    dicts = load_imaterialist_csv(str(csv_path), "unused", check_files=False, image_sizes=sizes)
    return {d["kaggle_image_id"]: d for d in dicts}


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    path = generate_fashion_synth(str(tmp_path_factory.mktemp("kaggle_synth")), "val", 4, 160, 1)
    return json.loads(Path(path).read_text())


def test_round_trip_through_the_kaggle_loader(synth, tmp_path):
    results = perturbed_results(synth, 0, duplicate=0.5)  # duplicates overlap their originals
    gt_image = synth["images"][-1]
    results = [r for r in results if r["image_id"] != gt_image["id"]]  # one image: no detection
    out = tmp_path / "submission.csv"
    stats = write_kaggle_submission(results, synth, out, score_threshold=0.2)
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0].keys()) == SUBMISSION_COLUMNS
    assert stats.rows == len(rows) and stats.images == len(synth["images"])
    assert stats.below_threshold == sum(r["score"] < 0.2 for r in results) > 0

    expected = _expected(results, synth["images"], 0.2)
    first = synth["images"][0]
    raw = sum(int(segmentation_to_mask(r["segmentation"], first["height"], first["width"]).sum())
              for r in results if r["score"] >= 0.2 and r["image_id"] == first["id"])
    kept = sum(int(m.sum()) for m, _, _ in expected[Path(first["file_name"]).stem])
    assert kept < raw  # the overlap rule took pixels away
    back = _read_back(out, synth["images"])
    empty_stem = Path(gt_image["file_name"]).stem
    assert [(r["EncodedPixels"], r["ClassId"], r["AttributesIds"]) for r in rows
            if r["ImageId"] == empty_stem] == [("1 1", "23", "")]
    assert stats.placeholder_rows == 1
    for stem, want in expected.items():
        if stem == empty_stem:
            continue
        anns = back[stem]["annotations"]
        assert len(anns) == len(want) > 0
        union = np.zeros_like(want[0][0], dtype=np.int64)
        for ann, (mask, cat, attrs) in zip(anns, want):
            got = coco_rle_decode(ann["segmentation"]).view(bool)
            assert np.array_equal(got, mask)
            assert ann["category_id"] == cat and ann["attribute_ids"] == attrs
            union += got
        assert union.max() == 1  # no pixel in two instances


@pytest.mark.shared_data("imat2020_train_rle")  # skip without it; under CI=true, fail
def test_real_kaggle_rows_survive_unchanged(tmp_path):
    """The real iMaterialist image (5214 x 3676): the top-scoring instance wins all its pixels,
    so its EncodedPixels must equal the competition's own string; the rest read back as the
    non-overlapping reference masks."""
    derived = KAGGLE / "derived_coco_00000663ed1ff0c4e0132b9b9ac53f6e.json"
    data = json.loads(derived.read_text())
    with open(next(KAGGLE.glob("train_rows_*.csv")), newline="") as f:
        source = list(csv.DictReader(f))
    results = [{"image_id": a["image_id"], "category_id": a["category_id"],
                "segmentation": a["segmentation"], "attribute_ids": a["attribute_ids"],
                "score": 1.0 - 0.1 * k} for k, a in enumerate(data["annotations"])]
    out = tmp_path / "submission.csv"
    write_kaggle_submission(results, data, out)
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    first = source[0]
    assert (rows[0]["ImageId"], rows[0]["EncodedPixels"], rows[0]["ClassId"],
            rows[0]["AttributesIds"]) == (first["ImageId"], first["EncodedPixels"],
                                          first["ClassId"], first["AttributesIds"])
    want = _expected(results, data["images"], 0.0)[first["ImageId"]]
    anns = _read_back(out, data["images"])[first["ImageId"]]["annotations"]
    assert len(anns) == len(want)
    for ann, (mask, cat, attrs) in zip(anns, want):
        assert np.array_equal(coco_rle_decode(ann["segmentation"]).view(bool), mask)
        assert (ann["category_id"], ann["attribute_ids"]) == (cat, attrs)


@pytest.mark.shared_data("fashionpedia_api_sample")
def test_pre_release_ids_mapped_by_name_and_cli(tmp_path):
    """The API sample's results use its pre-release ids (shoe 24, sleeve 32): the CSV has the
    final ones (23, 31). Also runs the command-line tool."""
    out = tmp_path / "submission.csv"
    cmd = [sys.executable, str(ROOT / "tools" / "kaggle_submission.py"), "--results",
           str(SAMPLE / "fake_results.json"), "--images", str(SAMPLE / "sample.json"),
           "--output", str(out), "--no-empty-rows"]
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    assert "wrote" in done.stdout
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    sample = json.loads((SAMPLE / "sample.json").read_text())
    names = {c["id"]: c["name"] for c in sample["categories"]}
    final = load_taxonomy().class_name_to_id
    # all scores are 1.0: file order decides overlaps, and some fake masks end up empty
    expected = _expected(json.loads((SAMPLE / "fake_results.json").read_text()),
                         sample["images"], 0.0)
    got = [(r["ImageId"], int(r["ClassId"])) for r in rows]
    assert got == [(stem, final[names[cat]]) for stem, want in expected.items()
                   for _, cat, _ in want]
    assert {"shoe": 23, "sleeve": 31} == {n: final[n] for n in ("shoe", "sleeve")}
    assert 24 not in {c for _, c in got} and 23 in {c for _, c in got}


def test_threshold_and_unknown_images(synth):
    results = perturbed_results(synth, 1)
    rows = list(submission_rows(results, synth, score_threshold=2.0, empty_image_row=False))
    assert rows == []
    rows = list(submission_rows(results, synth, score_threshold=2.0))
    assert [r["EncodedPixels"] for r in rows] == ["1 1"] * len(synth["images"])
    with pytest.raises(ValueError, match="not in the image list"):
        list(submission_rows([{**results[0], "image_id": 10**9}], synth))
