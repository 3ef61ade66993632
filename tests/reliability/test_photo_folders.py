"""A folder of real-world photos: a bad file is reported and skipped, results are kept as they come,
and JPEGs with data after the end marker (phones append some) are read, not called truncated."""

import importlib.util
import io
import json
import logging
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

import effdetmask.modeling  # noqa: F401  (effdet imported under effdetmask's warning filter)
from effdetmask.data.image_io import read_image_rgb
from effdetmask.data.validation import DatasetIssue

REPO = Path(__file__).resolve().parents[2]
# a small model with every part; score threshold 0 so random weights give instances
TINY_OPTS = ["INPUT.SIZE", "128", "MODEL.BIFPN.CHANNELS", "16", "MODEL.BIFPN.REPEATS", "1",
             "MODEL.EFFDET_HEAD.REPEATS", "1", "MODEL.ROI_MASK_HEAD.CONV_DIM", "16",
             "TEST.SCORE_THRESH", "0.0", "TEST.DETECTIONS_PER_IMAGE", "3",
             "TEST.IMS_PER_BATCH", "2", "MODEL.BACKBONE.PRETRAINED", "",
             "MODEL.FREEZE_BN", "False"]
# more than the 4 KB the old "end marker near the end of the file" check allowed, holding a
# second SOI like a motion photo's embedded data; never an 0xFFD9
TRAILER = b"MotionPhoto_Data" + b"\xff\xd8\xff\xe1" + bytes(range(200)) * 60


def _load_demo():
    spec = importlib.util.spec_from_file_location("effdetmask_demo_folders", REPO / "demo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


demo = _load_demo()
pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _jpeg(h: int = 60, w: int = 90, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 255, size=(h, w, 3), dtype=np.uint8)
    image[h // 4:3 * h // 4, w // 5:w // 2] = (40, 60, 200)
    ok, buf = cv2.imencode(".jpg", image)
    assert ok
    return buf.tobytes()


def _with_trailer(jpeg: bytes) -> bytes:
    assert jpeg.endswith(b"\xff\xd9") and b"\xff\xd9" not in TRAILER
    return jpeg + TRAILER


def _cut(jpeg: bytes) -> bytes:
    return jpeg[:len(jpeg) // 2]


# ------------------------------------------------------------------------ truncation check


def test_data_after_end_marker_is_accepted(tmp_path):
    path = tmp_path / "phone.jpg"
    path.write_bytes(_with_trailer(_jpeg()))
    # both decoders read it: it is not truncated
    assert cv2.imread(str(path)).shape == (60, 90, 3)
    with Image.open(path) as pil:
        pil.load()
        assert pil.size == (90, 60)
    rgb = read_image_rgb(str(path), (60, 90))
    np.testing.assert_array_equal(rgb, read_image_rgb(_write(tmp_path / "plain.jpg", _jpeg())))


def _write(path: Path, data: bytes) -> str:
    path.write_bytes(data)
    return str(path)


@pytest.mark.parametrize("progressive", [False, True])
def test_jpeg_cut_short_is_still_truncated(tmp_path, progressive):
    if progressive:
        buf = io.BytesIO()
        Image.fromarray(np.full((60, 90, 3), 99, np.uint8)).save(buf, "JPEG", progressive=True)
        jpeg = buf.getvalue()
    else:
        jpeg = _jpeg()
    for name, data in [("half.jpg", _cut(jpeg)), ("no_eoi.jpg", jpeg[:-2])]:
        with pytest.raises(DatasetIssue, match=f"{name}: JPEG is truncated"):
            read_image_rgb(_write(tmp_path / name, data))
    # cut, then a trailer: the scan data runs into foreign bytes, still rejected
    with pytest.raises(DatasetIssue, match="half_trailer.jpg: (JPEG is truncated|cannot decode)"):
        read_image_rgb(_write(tmp_path / "half_trailer.jpg", _cut(jpeg) + TRAILER))


def test_thumbnail_end_marker_does_not_hide_a_cut(tmp_path):
    """An EXIF thumbnail carries its own 0xFFD9 before the main image's data: still truncated."""
    exif = Image.Exif()
    exif[274] = 1
    buf = io.BytesIO()
    thumb = _jpeg(16, 24, seed=3)
    big = cv2.cvtColor(cv2.imdecode(np.frombuffer(_jpeg(seed=4), np.uint8), 1), cv2.COLOR_BGR2RGB)
    Image.fromarray(big).save(buf, "JPEG", exif=exif)
    jpeg = buf.getvalue()
    # an APP1 segment right after SOI holding a whole JPEG (like a thumbnail) incl. its 0xFFD9
    payload = b"Exif\x00\x00" + thumb
    app1 = b"\xff\xe1" + (len(payload) + 2).to_bytes(2, "big") + payload
    with_thumb = jpeg[:2] + app1 + jpeg[2:]
    assert read_image_rgb(_write(tmp_path / "ok.jpg", with_thumb)).shape == (60, 90, 3)
    with pytest.raises(DatasetIssue, match="truncated"):
        read_image_rgb(_write(tmp_path / "cut.jpg", with_thumb[:len(with_thumb) - 300]))


def test_text_file_named_jpg(tmp_path):
    with pytest.raises(DatasetIssue, match="notes.jpg: cannot decode"):
        read_image_rgb(_write(tmp_path / "notes.jpg", b"shopping list: socks\n" * 20))


# ------------------------------------------------------------------------------- demo.py


def _run(inputs, out_dir, *extra):
    argv = ["--config-file", str(REPO / "configs" / "effdet_d0.yaml"), "--input",
            *map(str, inputs), "--output", str(out_dir), *extra, *TINY_OPTS]
    return demo.main(argv)


def _photo_folder(folder: Path) -> None:
    """Sorted: a_good, b_cut (truncated), c_notes (text), d_phone (trailer), e_good."""
    folder.mkdir()
    (folder / "a_good.jpg").write_bytes(_jpeg(seed=1))
    (folder / "b_cut.jpg").write_bytes(_cut(_jpeg(seed=2)))
    (folder / "c_notes.jpg").write_bytes(b"not a photo\n")
    (folder / "d_phone.jpg").write_bytes(_with_trailer(_jpeg(70, 50, seed=3)))
    (folder / "e_good.jpg").write_bytes(_jpeg(seed=5))


def _image_ids(results_file) -> set:
    return {r["image_id"] for r in json.loads(Path(results_file).read_text())}


def test_bad_files_are_reported_and_skipped(tmp_path, caplog):
    _photo_folder(tmp_path / "photos")
    with caplog.at_level(logging.WARNING, logger="effdetmask.demo"):
        out = _run([tmp_path / "photos"], tmp_path / "out")
    assert set(out["images"]) == {"a_good", "d_phone", "e_good"}
    skipped = dict((Path(p).name, reason) for p, reason in out["skipped"])
    assert set(skipped) == {"b_cut.jpg", "c_notes.jpg"}
    assert "truncated" in skipped["b_cut.jpg"] and "cannot decode" in skipped["c_notes.jpg"]
    assert len(_image_ids(out["results_file"])) == 3  # every processed image has results
    summary = [r.getMessage() for r in caplog.records if "skipped 2 of 5" in r.getMessage()]
    assert len(summary) == 1 and "b_cut.jpg" in summary[0] and "c_notes.jpg" in summary[0]
    assert not list((tmp_path / "out").glob("*.tmp"))


def test_results_are_written_as_batches_finish(tmp_path, monkeypatch):
    _photo_folder(tmp_path / "photos")
    real = demo.write_instance_pngs
    calls = []

    def dies_on_third_image(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:  # the first image of the second batch
            raise RuntimeError("killed")
        return real(*args, **kwargs)

    monkeypatch.setattr(demo, "write_instance_pngs", dies_on_third_image)
    with pytest.raises(RuntimeError, match="killed"):
        _run([tmp_path / "photos"], tmp_path / "out")
    results_file = tmp_path / "out" / demo.RESULTS_FILE
    assert results_file.is_file()  # valid JSON holding the first batch (a_good, d_phone)
    assert len(_image_ids(results_file)) == 2


def test_nothing_readable_exits_non_zero(tmp_path, caplog):
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "cut.jpg").write_bytes(_cut(_jpeg()))
    (folder / "notes.jpg").write_bytes(b"text")
    with caplog.at_level(logging.WARNING, logger="effdetmask.demo"):
        with pytest.raises(SystemExit) as e:
            _run([folder], tmp_path / "out")
    assert e.value.code == 1
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "cut.jpg: JPEG is truncated" in text and "notes.jpg: cannot decode" in text
    assert json.loads((tmp_path / "out" / demo.RESULTS_FILE).read_text()) == []
