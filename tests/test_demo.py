"""demo.py end to end on a tiny model: PNGs, a COCO results JSON pycocotools accepts, errors."""

import importlib.util
import io
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

import effdetmask.modeling  # noqa: F401  (effdet imported under effdetmask's warning filter)
from effdetmask.data.taxonomy import class_names
from effdetmask.evaluation.coco_evaluator import dataset_dicts_to_coco

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO.parent / "shared" / "data" / "fashionpedia_api_sample"
REAL_IMAGES = [SAMPLE / "images" / "000000009813.jpg", SAMPLE / "images" / "000000010223.jpg"]
TINY_OPTS = ["INPUT.SIZE", "128", "MODEL.BIFPN.CHANNELS", "16", "MODEL.BIFPN.REPEATS", "1",
             "MODEL.EFFDET_HEAD.REPEATS", "1", "MODEL.ROI_MASK_HEAD.CONV_DIM", "16",
             "TEST.SCORE_THRESH", "0.0", "TEST.DETECTIONS_PER_IMAGE", "4",
             "MODEL.BACKBONE.PRETRAINED", "", "MODEL.FREEZE_BN", "False"]


def _load_demo():
    spec = importlib.util.spec_from_file_location("effdetmask_demo", REPO / "demo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


demo = _load_demo()


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _run(inputs, out_dir, *extra):
    argv = ["--config-file", str(REPO / "configs" / "effdet_d0.yaml"), "--input",
            *map(str, inputs), "--output", str(out_dir), *extra, *TINY_OPTS]
    return demo.main(argv)


def _check_png(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert image is not None and image.ndim == 3 and image.shape[2] == 3, path
    return image


def _generated_image(path: Path) -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, size=(150, 220, 3), dtype=np.uint8)
    image[30:120, 60:140] = (40, 60, 200)
    cv2.imwrite(str(path), image)


def test_generated_image(tmp_path):
    _generated_image(tmp_path / "synthetic.png")
    out = _run([tmp_path], tmp_path / "out")  # a folder as input
    assert set(out["images"]) == {"synthetic"}
    assert _check_png(tmp_path / "out" / "synthetic_overlay.png").shape == (150, 220, 3)
    assert not (tmp_path / "out" / "synthetic_panel.png").exists()  # no --panel
    results = json.loads(Path(out["results_file"]).read_text())
    assert 0 < len(results) <= 4
    for r in results:
        # effdet_d0.yaml carries the attribute head: sorted sparse Fashionpedia attribute ids
        assert set(r) == {"image_id", "category_id", "score", "bbox", "segmentation",
                          "attribute_ids"}
        assert r["attribute_ids"] == sorted(set(r["attribute_ids"]))
        assert all(isinstance(a, int) and 0 <= a <= 340 for a in r["attribute_ids"])
        assert isinstance(r["image_id"], int) and 0 <= r["category_id"] < 46
        assert isinstance(r["score"], float) and len(r["bbox"]) == 4
        assert r["segmentation"]["size"] == [150, 220]
        assert isinstance(r["segmentation"]["counts"], str)


@pytest.mark.shared_data("fashionpedia_api_sample")  # a failure under CI=true
def test_real_images_with_ground_truth(tmp_path):
    _generated_image(tmp_path / "synthetic.png")
    gt_json = SAMPLE / "sample.json"
    out = _run([*REAL_IMAGES, tmp_path / "synthetic.png"], tmp_path / "out",
               "--ground-truth", str(gt_json), "--max-size", "400", "--panel")
    out_dir = tmp_path / "out"
    for stem in ("000000009813", "000000010223"):
        overlay = _check_png(out_dir / f"{stem}_overlay.png")
        assert max(overlay.shape[:2]) == 400  # downscaled for display only
        side = _check_png(out_dir / f"{stem}_gt.png")
        assert side.shape[1] > 2 * overlay.shape[1]  # ground truth | predictions
        # one 160-pixel cell per annotation (6 each), 4 per row
        assert _check_png(out_dir / f"{stem}_gt_panel.png").shape[:2] == (320, 640)
        _check_png(out_dir / f"{stem}_panel.png")
    _check_png(out_dir / "synthetic_panel.png")
    assert not (out_dir / "synthetic_gt.png").exists()  # no annotations for it
    assert not (out_dir / "synthetic_gt_panel.png").exists()
    # the results load against a ground truth holding the same images and Fashionpedia ids
    dicts = list(demo.load_ground_truth([str(gt_json)]).values())
    gt = dataset_dicts_to_coco(dicts, class_names())
    results = json.loads(Path(out["results_file"]).read_text())
    extra_id = max(d["image_id"] for d in dicts) + 1
    gt["images"].append({"id": extra_id, "height": 150, "width": 220, "file_name": "synthetic"})
    coco = COCO()
    coco.dataset = gt
    coco.createIndex()
    detections = coco.loadRes(results)
    assert sorted(detections.getImgIds()) == sorted([9813, 10223, extra_id])
    non_empty = 0
    for image_id in (9813, 10223):
        info = coco.imgs[image_id]
        anns = detections.loadAnns(detections.getAnnIds(imgIds=[image_id]))
        assert anns
        for ann in anns:
            assert ann["segmentation"]["size"] == [info["height"], info["width"]]
            # the mask lies inside its xywh box, both in this image's original pixels
            mask = detections.annToMask(ann)
            ys, xs = np.nonzero(mask)
            if len(xs):
                non_empty += 1
                x, y, w, h = ann["bbox"]
                assert x - 1 <= xs.min() and xs.max() + 1 <= x + w + 1, (ann["bbox"], xs)
                assert y - 1 <= ys.min() and ys.max() + 1 <= y + h + 1, (ann["bbox"], ys)
    assert non_empty > 0


def test_missing_input_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        _run([tmp_path / "nope.jpg"], tmp_path / "out")
    assert e.value.code == 2
    assert "nope.jpg: no such file or folder" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        _run([tmp_path], tmp_path / "out")  # a folder without images
    assert "no image files" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_exif_rotated_photo_is_predicted_upright(tmp_path):
    exif = Image.Exif()
    exif[274] = 6  # displayed rotated 90 degrees clockwise
    buf = io.BytesIO()
    Image.fromarray(np.full((90, 160, 3), 120, np.uint8)).save(buf, "JPEG", exif=exif)
    (tmp_path / "phone.jpg").write_bytes(buf.getvalue())  # stores 90 x 160 pixels
    out = _run([tmp_path / "phone.jpg"], tmp_path / "out")
    assert _check_png(tmp_path / "out" / "phone_overlay.png").shape == (160, 90, 3)
    results = json.loads(Path(out["results_file"]).read_text())
    assert results and all(r["segmentation"]["size"] == [160, 90] for r in results)
    for r in results:
        x, y, w, h = r["bbox"]
        assert x + w <= 90 + 1e-3 and y + h <= 160 + 1e-3


def test_display_threshold_is_not_the_results_threshold(tmp_path, monkeypatch, capsys):
    with pytest.raises(SystemExit):
        demo.build_parser().parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "default 0.5" in text and "TEST.SCORE_THRESH" in text
    _generated_image(tmp_path / "synthetic.png")
    drawn_with = []
    real = demo.write_instance_pngs

    def record_min_score(*args, **kwargs):
        drawn_with.append(kwargs["min_score"])
        return real(*args, **kwargs)

    monkeypatch.setattr(demo, "write_instance_pngs", record_min_score)
    _run([tmp_path / "synthetic.png"], tmp_path / "default")
    assert drawn_with == [0.5]  # like detectron2's demo, not the evaluation threshold (0.05)
    # a display threshold above every score leaves the JSON with all TEST.SCORE_THRESH detections
    out = _run([tmp_path / "synthetic.png"], tmp_path / "strict", "--confidence-threshold", "1.0")
    assert drawn_with[-1] == 1.0
    assert len(json.loads(Path(out["results_file"]).read_text())) == 4
