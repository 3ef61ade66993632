"""The generated dataset's attributes are drawn: what an annotation says can be seen in its pixels,
and a change of the drawing gets its own split folder (generator version in the key)."""

import collections
import json
import os

import cv2
import numpy as np
import pytest

from effdetmask.data.synthetic import (
    GENERATOR_VERSION,
    ensure_fashion_synth,
    generate_fashion_synth,
    synth_split_dir,
)
from effdetmask.data.synthetic_draw import Canvas, draw_person
from effdetmask.data.taxonomy import load_taxonomy


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("synth"))
    path = generate_fashion_synth(out, "train", 30, 256, seed=4)
    data = json.load(open(path))
    tax = load_taxonomy()
    names = dict(zip(tax.attribute_ids, tax.attribute_names))
    images = {im["id"]: im for im in data["images"]}
    anns = []
    for a in data["annotations"]:
        anns.append(dict(a, category=tax.class_names[a["category_id"]],
                         attrs={names[i] for i in a["attribute_ids"]},
                         image=images[a["image_id"]]))
    return out, anns


def _of(anns, category, attr):
    return [a for a in anns if a["category"] == category and attr in a["attrs"]]


def test_each_garment_carries_the_attributes_of_every_drawn_group(synth):
    _, anns = synth
    groups = dict(zip(load_taxonomy().attribute_names, load_taxonomy().attribute_supercategories))
    want = {"skirt": {"textile pattern", "length"}, "dress": {"textile pattern", "length"},
            "shirt, blouse": {"textile pattern", "length"}, "sleeve": {"length"},
            "jacket": {"textile pattern", "length", "opening type"},
            "neckline": {"neckline type"}, "collar": {"nickname"}, "pocket": {"nickname"}}
    seen = collections.defaultdict(set)
    for a in anns:
        if a["category"] in want:
            assert {groups[n] for n in a["attrs"]} >= want[a["category"]], a["category"]
            seen[a["category"]] |= a["attrs"]
    # every choice of a group is drawn somewhere in 30 images
    assert {"v-neck", "round (neck)", "square (neckline)"} <= seen["neckline"]
    assert {"shirt (collar)", "peter pan (collar)"} <= seen["collar"]
    assert {"patch (pocket)", "flap (pocket)"} <= seen["pocket"]
    assert {"single breasted", "zip-up"} <= seen["jacket"]
    assert {"mini (length)", "knee (length)", "maxi (length)"} <= seen["dress"]


def test_neckline_shape_shows_its_type(synth):
    _, anns = synth

    def fill(a):  # mask pixels / box pixels: triangle ~0.5, half-ellipse ~0.8, rectangle ~1
        x, y, w, h = a["bbox"]
        return a["area"] / (w * h)

    shown = {t: [fill(a) for a in _of(anns, "neckline", t) if isinstance(a["segmentation"], list)]
             for t in ("v-neck", "round (neck)", "square (neckline)")}
    assert all(shown.values())
    assert max(shown["v-neck"]) < min(shown["round (neck)"])
    assert max(shown["round (neck)"]) < min(shown["square (neckline)"])


def test_flap_pocket_has_a_dark_band_a_patch_pocket_does_not(synth):
    out, anns = synth

    def top_over_bottom(a):
        img = cv2.imread(os.path.join(out, a["image"]["file_name"])).astype(np.float32)
        x, y, w, h = (int(round(v)) for v in a["bbox"])
        pocket = img[y:y + h, x + 1:x + w - 1].mean(axis=(1, 2))
        return pocket[1:max(2, h // 3)].mean() / pocket[-max(2, h // 3):-1].mean()

    def ratios(kind):
        return [top_over_bottom(a) for a in _of(anns, "pocket", kind)
                if isinstance(a["segmentation"], list) and a["bbox"][3] >= 6]

    flap, patch = ratios("flap (pocket)"), ratios("patch (pocket)")
    assert flap and patch
    assert np.median(flap) < 0.8 < np.median(patch)


def test_hem_and_sleeve_lengths_show_in_the_masks():
    """One figure of a fixed height per seed: where the mask ends follows the length attribute."""
    ends = collections.defaultdict(list)
    for seed in range(40):
        rng = np.random.default_rng(seed)
        canvas = Canvas(np.zeros((260, 200, 3), np.uint8))
        draw_person(rng, canvas, 100.0, 5.0, 250.0, gid=0)
        for inst in canvas.instances:
            ys = np.flatnonzero(inst["mask"].any(axis=1))
            for attr in inst["attrs"]:
                if "length" in attr:
                    # lowest pixel of a hem; a sleeve's extent along the arm
                    extent = ys.max() - (ys.min() if inst["name"] == "sleeve" else 0)
                    ends[inst["name"], attr].append(extent)
    med = {k: np.median(v) for k, v in ends.items()}
    for garment in ("dress", "skirt"):
        assert med[garment, "mini (length)"] < med[garment, "knee (length)"] < (
            med[garment, "maxi (length)"])
    assert med["sleeve", "short (length)"] < med["sleeve", "elbow-length"] < (
        med["sleeve", "wrist-length"])
    for garment in ("shirt, blouse", "top, t-shirt, sweatshirt"):
        assert med[garment, "above-the-hip (length)"] < med[garment, "hip (length)"]


def test_split_folder_is_keyed_by_generator_version(tmp_path):
    final = synth_split_dir(str(tmp_path), "train", 2, 96, 0)
    assert final.endswith(f"_seed0_v{GENERATOR_VERSION}")
    old = final[: -len(f"_v{GENERATOR_VERSION}")]  # a split of version 1 (no version in the key)
    os.makedirs(old)
    open(os.path.join(old, "train_000000.jpg"), "wb").close()
    path = ensure_fashion_synth(str(tmp_path), "train", 2, 96, 0)
    assert os.path.dirname(path) == final
    assert json.load(open(path))["info"]["generator"]["version"] == GENERATOR_VERSION
    assert os.listdir(old) == ["train_000000.jpg"]  # an older drawing in use is left alone
