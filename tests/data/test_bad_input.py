"""Bad input: each kind gives a DatasetIssue naming the file/record and the problem, or, with
skip_invalid=True, is skipped and counted in the SkipReport."""

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image  # Pillow (a torchvision dependency) writes the CMYK JPEG

from effdetmask.data.fashionpedia import load_fashionpedia_json
from effdetmask.data.image_io import read_image_rgb
from effdetmask.data.kaggle import load_imaterialist_csv
from effdetmask.data.validation import DatasetIssue, Reason, SkipReport
from effdetmask.structures.masks import coco_rle_encode

H, W = 40, 60


def _image(folder: Path, name: str, channels: int = 3) -> None:
    img = np.zeros((H, W, channels), np.uint8)
    img[10:30, 20:50] = 200
    cv2.imwrite(str(folder / name), img)


def _good_json(tmp_path: Path) -> dict:
    _image(tmp_path, "a.jpg")
    _image(tmp_path, "b.jpg")
    mask = np.zeros((H, W), np.uint8)
    mask[10:30, 20:50] = 1
    return {
        "images": [{"id": 1, "file_name": "a.jpg", "height": H, "width": W},
                   {"id": 2, "file_name": "b.jpg", "height": H, "width": W}],
        "annotations": [
            {"id": 10, "image_id": 1, "category_id": 23, "iscrowd": 0, "attribute_ids": [204],
             "segmentation": [[20, 10, 50, 10, 50, 30, 20, 30]], "bbox": [20, 10, 30, 20]},
            {"id": 11, "image_id": 2, "category_id": 31, "iscrowd": 0, "attribute_ids": [],
             "segmentation": coco_rle_encode(mask)},
        ],
        "categories": [{"id": 23, "name": "shoe"}, {"id": 31, "name": "sleeve"}],
        "attributes": [{"id": 204, "name": "set-in sleeve"}],
    }


def _load(tmp_path: Path, data: dict, skip: bool, report: SkipReport = None):
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(data))
    return load_fashionpedia_json(str(path), str(tmp_path), skip_invalid=skip, report=report)


def _set(path, value):
    def mutate(d):
        *keys, last = path
        node = d
        for k in keys:
            node = node[k]
        node[last] = value
    return mutate


# kind -> (mutation of the good JSON, reason, words the message must contain)
CASES = {
    "missing_image": (_set(["images", 0, "file_name"], "nope.jpg"), Reason.MISSING_FILE,
                      ["nope.jpg", "image id 1", "does not exist"]),
    "invalid_rle": (_set(["annotations", 1, "segmentation", "size"], [41, 60]), Reason.INVALID_RLE,
                    ["instances.json", "annotation id 11", "RLE size"]),
    "polygon_lt_3_points": (_set(["annotations", 0, "segmentation"], [[1, 1, 5, 5]]),
                            Reason.INVALID_POLYGON, ["annotation id 10", "at least 3"]),
    "box_outside_image": (_set(["annotations", 0, "bbox"], [50, 10, 30, 20]),
                          Reason.BOX_OUTSIDE_IMAGE, ["annotation id 10", "outside the 60x40"]),
    "unknown_category": (_set(["annotations", 0, "category_id"], 99), Reason.UNKNOWN_CATEGORY,
                         ["annotation id 10", "unknown category id 99"]),
    "unknown_attribute": (_set(["annotations", 0, "attribute_ids"], [204, 999]),
                          Reason.UNKNOWN_ATTRIBUTE, ["annotation id 10", "attribute id 999"]),
    "annotation_for_unknown_image": (_set(["annotations", 1, "image_id"], 7), Reason.UNKNOWN_IMAGE,
                                     ["annotation id 11", "image id 7 is not in 'images'"]),
}


def test_good_json_loads(tmp_path):
    dicts = _load(tmp_path, _good_json(tmp_path), skip=False)
    assert [len(d["annotations"]) for d in dicts] == [1, 1]
    assert dicts[0]["annotations"][0]["attribute_ids"] == [204]


@pytest.mark.parametrize("kind", list(CASES))
def test_bad_record_raises_clear_error(tmp_path, kind):
    mutate, reason, words = CASES[kind]
    data = _good_json(tmp_path)
    mutate(data)
    with pytest.raises(DatasetIssue) as info:
        _load(tmp_path, data, skip=False)
    assert info.value.reason == reason
    for w in words:
        assert w in str(info.value)


@pytest.mark.parametrize("kind", list(CASES))
def test_bad_record_skipped_and_counted(tmp_path, kind):
    mutate, reason, _ = CASES[kind]
    data = _good_json(tmp_path)
    mutate(data)
    report = SkipReport("test")
    dicts = _load(tmp_path, data, skip=True, report=report)
    assert report.count(reason) == 1 and report.total == 1
    assert reason in report.summary()
    n_images, n_anns = len(dicts), sum(len(d["annotations"]) for d in dicts)
    assert (n_images, n_anns) == ((1, 1) if kind == "missing_image" else (2, 1))


def test_empty_dataset(tmp_path):
    data = _good_json(tmp_path)
    data["images"], data["annotations"] = [], []
    with pytest.raises(DatasetIssue, match="instances.json: empty dataset"):
        _load(tmp_path, data, skip=True)
    data = _good_json(tmp_path)
    for img in data["images"]:
        img["file_name"] = "gone.jpg"
    with pytest.raises(DatasetIssue, match=r"empty dataset: no usable image \(2 skipped\)"):
        _load(tmp_path, data, skip=True)


def _write_csv(tmp_path: Path, rows) -> str:
    _image(tmp_path, "img1.jpg")
    path = tmp_path / "train.csv"
    lines = ["ImageId,EncodedPixels,Height,Width,ClassId,AttributesIds"]
    lines += [f"img1,{rle},{H},{W},{cls},{attrs}" for rle, cls, attrs in rows]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


@pytest.mark.parametrize(
    "row, reason, words",
    [
        (("5 9999", 1, ""), Reason.INVALID_RLE, ["line 3 (ImageId img1)", "beyond 40x60"]),
        (("5 10", 99, ""), Reason.UNKNOWN_CATEGORY, ["line 3", "unknown category id 99"]),
        (("5 10", 1, '"115,999"'), Reason.UNKNOWN_ATTRIBUTE, ["line 3", "attribute id 999"]),
    ],
    ids=["invalid_rle", "unknown_category", "unknown_attribute"],
)
def test_kaggle_bad_rows(tmp_path, row, reason, words):
    csv_file = _write_csv(tmp_path, [("1 5", 0, "115"), row])
    with pytest.raises(DatasetIssue) as info:
        load_imaterialist_csv(csv_file, str(tmp_path))
    assert info.value.reason == reason and "train.csv" in str(info.value)
    for w in words:
        assert w in str(info.value)
    report = SkipReport("csv")
    dicts = load_imaterialist_csv(csv_file, str(tmp_path), skip_invalid=True, report=report)
    assert report.count(reason) == 1 and len(dicts[0]["annotations"]) == 1


# ----------------------------------------------------------------- images (read_image_rgb)


def test_missing_image_file(tmp_path):
    with pytest.raises(DatasetIssue, match="missing.jpg: image file does not exist"):
        read_image_rgb(str(tmp_path / "missing.jpg"))


def test_truncated_jpeg_and_skip_count(tmp_path):
    rng = np.random.default_rng(0)  # a photo-sized JPEG with detail in every block
    image = cv2.GaussianBlur(rng.integers(0, 256, (1000, 618, 3), dtype=np.uint8), (5, 5), 0)
    whole = tmp_path / "whole.jpg"
    assert cv2.imwrite(str(whole), image)
    path = tmp_path / "cut.jpg"
    data = whole.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    assert read_image_rgb(str(whole), (1000, 618)).shape == (1000, 618, 3)
    with pytest.raises(DatasetIssue) as info:
        read_image_rgb(str(path))
    assert "cut.jpg" in str(info.value) and "truncated" in str(info.value)
    report = SkipReport("mapper")  # what a mapper does with skip_invalid=True
    report.handle(info.value, skip_invalid=True)
    assert report.count(Reason.CORRUPT_IMAGE) == 1


def test_corrupt_bytes(tmp_path):
    path = tmp_path / "junk.jpg"
    path.write_bytes(b"\xff\xd8not a jpeg at all\xff\xd9")
    with pytest.raises(DatasetIssue, match="junk.jpg: cannot decode"):
        read_image_rgb(str(path))


def test_size_differs_from_annotation(tmp_path):
    _image(tmp_path, "a.png")
    pattern = r"a.png: decoded size .*\(40, 60\) differs .*\(60, 40\)"
    with pytest.raises(DatasetIssue, match=pattern):
        read_image_rgb(str(tmp_path / "a.png"), (60, 40))


def test_grayscale_and_alpha_become_rgb(tmp_path):
    gray = np.full((H, W), 77, np.uint8)
    cv2.imwrite(str(tmp_path / "g.png"), gray)
    rgba = np.zeros((H, W, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 255, 10  # cv2 writes BGRA: pure blue, nearly transparent
    cv2.imwrite(str(tmp_path / "a.png"), rgba)
    g = read_image_rgb(str(tmp_path / "g.png"), (H, W))
    a = read_image_rgb(str(tmp_path / "a.png"), (H, W))
    assert g.shape == a.shape == (H, W, 3) and g.dtype == a.dtype == np.uint8
    assert (g == 77).all()
    assert a[0, 0].tolist() == [0, 0, 255]  # RGB order, alpha dropped


def test_cmyk_jpeg(tmp_path):
    Image.new("CMYK", (W, H), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg")  # red
    rgb = read_image_rgb(str(tmp_path / "cmyk.jpg"), (H, W))
    assert rgb.shape == (H, W, 3)
    r, g, b = rgb[H // 2, W // 2].astype(int)
    assert r > 200 and g < 60 and b < 60


def _with_exif_orientation(jpeg: bytes, orientation: int) -> bytes:
    """Insert an APP1/EXIF segment holding only the Orientation tag (big-endian TIFF)."""
    tiff = (b"MM\x00\x2a\x00\x00\x00\x08" + b"\x00\x01"
            + b"\x01\x12\x00\x03\x00\x00\x00\x01" + orientation.to_bytes(2, "big") + b"\x00\x00"
            + b"\x00\x00\x00\x00")
    payload = b"Exif\x00\x00" + tiff
    return jpeg[:2] + b"\xff\xe1" + (len(payload) + 2).to_bytes(2, "big") + payload + jpeg[2:]


def test_exif_rotation_is_ignored(tmp_path):
    ok, buf = cv2.imencode(".jpg", np.zeros((H, W, 3), np.uint8))
    path = tmp_path / "rot.jpg"
    path.write_bytes(_with_exif_orientation(buf.tobytes(), 6))  # 6 = rotate 90 on display
    # OpenCV's default would rotate (proving the tag is there); annotations use stored pixels
    assert cv2.imread(str(path)).shape[:2] == (W, H)
    assert read_image_rgb(str(path), (H, W)).shape == (H, W, 3)
