"""BatchPredictor: RGB/BGR arrays and paths agree, original-size outputs, batching, clear errors."""

import copy
import io
from pathlib import Path
from typing import Any, Dict, Iterator, List

import cv2
import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image

import effdetmask.modeling  # noqa: F401  (effdet imported under effdetmask's warning filter)
from effdetmask.config import setup_cfg
from effdetmask.data.image_io import read_image_rgb
from effdetmask.data.validation import DatasetIssue
from effdetmask.predictor import BatchPredictor

# a small model that still has every part; score threshold 0 so random weights give instances
TINY = ["INPUT.SIZE", "128", "MODEL.BIFPN.CHANNELS", "16", "MODEL.BIFPN.REPEATS", "1",
        "MODEL.EFFDET_HEAD.REPEATS", "1", "MODEL.ROI_MASK_HEAD.CONV_DIM", "16",
        "TEST.SCORE_THRESH", "0.0", "TEST.DETECTIONS_PER_IMAGE", "5", "TEST.IMS_PER_BATCH", "2"]


@pytest.fixture(scope="module")
def predictor() -> Iterator[BatchPredictor]:
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the machine is shared
    yield BatchPredictor.from_config(setup_cfg("", TINY))
    torch.set_num_threads(threads)


def _image(h: int, w: int, seed: int = 0) -> np.ndarray:
    """RGB uint8 with large flat blocks (something for the heads to respond to) and noise."""
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 60, size=(h, w, 3), dtype=np.uint8)
    img[h // 4:3 * h // 4, w // 5:w // 2] = (200, 40, 40)
    img[h // 3:h - 4, w // 2:w - 6] = (30, 180, 90)
    return img


def _assert_same(a: Dict[str, Any], b: Dict[str, Any]) -> None:
    assert torch.equal(a["classes"], b["classes"])
    torch.testing.assert_close(a["boxes"], b["boxes"], atol=1e-3, rtol=1e-4)
    torch.testing.assert_close(a["scores"], b["scores"], atol=1e-5, rtol=1e-4)
    # a pixel at exactly the mask threshold may flip between float paths
    assert (a["masks"] != b["masks"]).float().mean() < 1e-3


def test_rgb_and_bgr_arrays_agree(predictor):
    rgb = _image(120, 160)
    out_rgb = predictor([rgb])[0]
    out_bgr = predictor([np.ascontiguousarray(rgb[:, :, ::-1])], input_format="BGR")[0]
    assert len(out_rgb["scores"]) > 0
    _assert_same(out_rgb, out_bgr)
    # the channel order matters: BGR data read as RGB is a different image
    swapped = predictor([np.ascontiguousarray(rgb[:, :, ::-1])])[0]
    assert not torch.equal(swapped["scores"], out_rgb["scores"])


def test_paths_match_arrays(predictor, tmp_path):
    rgb = _image(100, 140, seed=1)
    path = tmp_path / "img.png"  # lossless, so the decoded file equals the array
    cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    from_path, from_str = predictor([path, str(path)])
    _assert_same(from_path, predictor([rgb])[0])
    _assert_same(from_path, from_str)


@pytest.mark.parametrize("h, w", [(45, 128), (128, 33)])
def test_non_square_outputs_in_original_pixels(predictor, h, w):
    """An image whose long side is the input size (scale 1) and the same image at twice the size
    (each pixel a 2x2 block, scale 0.5) letterbox to the same model input, so the same detections
    must come back at twice the coordinates, with masks pasted at twice the size."""
    small = _image(h, w)
    big = np.ascontiguousarray(small.repeat(2, axis=0).repeat(2, axis=1))
    inst, inst2 = predictor([small, big])
    n = len(inst["scores"])
    assert n > 0
    assert inst["boxes"].shape == (n, 4) and inst["boxes"].dtype == torch.float32
    assert inst["masks"].shape == (n, h, w) and inst["masks"].dtype == torch.bool
    assert inst2["masks"].shape == (n, 2 * h, 2 * w)
    assert inst["classes"].dtype == torch.int64 and (inst["classes"] < 46).all()
    assert inst["boxes"].device.type == "cpu"
    assert torch.equal(inst2["classes"], inst["classes"])
    torch.testing.assert_close(inst2["scores"], inst["scores"])
    torch.testing.assert_close(inst2["boxes"], 2 * inst["boxes"], atol=1e-3, rtol=1e-5)
    assert inst["masks"].any()
    upsampled = inst["masks"].repeat_interleave(2, dim=1).repeat_interleave(2, dim=2)
    assert (inst2["masks"] != upsampled).float().mean() < 0.01  # edge pixels of the paste


class _Recorder(nn.Module):
    """Delegates to a model and records the batch sizes it is called with."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.batch_sizes: List[int] = []
        self.sizes: List[tuple] = []  # (height, width) of every input image

    def forward(self, batched_inputs, return_rle=None):
        self.batch_sizes.append(len(batched_inputs))
        self.sizes += [(d["height"], d["width"]) for d in batched_inputs]
        return self.model(batched_inputs, return_rle=return_rle)


def test_batches_of_ims_per_batch(predictor):
    images = [_image(80 + 20 * k, 120, seed=k) for k in range(3)]
    recorder = _Recorder(predictor.model)
    batched = BatchPredictor(recorder, image_size=128, batch_size=2)
    outputs = batched(images)
    assert recorder.batch_sizes == [2, 1]
    assert len(outputs) == 3
    for image, out in zip(images, outputs):
        assert out["masks"].shape[1:] == image.shape[:2]
        # batching does not change a result (frozen BN, per-image post-process)
        _assert_same(out, predictor([image])[0])


def test_rle_output(predictor):
    rle_predictor = BatchPredictor(predictor.model, image_size=128, return_rle=True)
    inst = rle_predictor([_image(70, 90)])[0]
    assert "masks" not in inst and len(inst["masks_rle"]) == len(inst["scores"]) > 0
    assert all(r["size"] == [70, 90] and isinstance(r["counts"], str) for r in inst["masks_rle"])


def test_bad_inputs_give_clear_errors(predictor, tmp_path):
    missing = tmp_path / "missing.jpg"
    with pytest.raises(DatasetIssue, match="missing.jpg.*does not exist"):
        predictor([missing])
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"not an image")
    with pytest.raises(DatasetIssue, match="corrupt.png.*cannot decode"):
        predictor([corrupt])
    with pytest.raises(ValueError, match=r"image 1: expected a np.uint8 \[H, W, 3\]"):
        predictor([_image(20, 20), np.zeros((20, 20), np.uint8)])
    with pytest.raises(TypeError, match="list"):
        predictor(str(missing))
    with pytest.raises(ValueError, match="input_format"):
        predictor([_image(20, 20)], input_format="BRG")
    assert predictor([]) == []


def _exif_rotated_jpeg(path: Path, h: int, w: int) -> None:
    """A JPEG storing ``h x w`` pixels with EXIF Orientation 6: displayed rotated 90 clockwise."""
    exif = Image.Exif()
    exif[274] = 6
    buf = io.BytesIO()
    Image.fromarray(_image(h, w, seed=2)).save(buf, "JPEG", exif=exif, quality=95)
    path.write_bytes(buf.getvalue())


def test_exif_orientation_applied_to_files(predictor, tmp_path):
    path = tmp_path / "phone.jpg"
    _exif_rotated_jpeg(path, 60, 100)
    stored = read_image_rgb(str(path))  # the dataset reader: stored pixels, as annotations are
    assert stored.shape == (60, 100, 3)
    recorder = _Recorder(predictor.model)
    upright = BatchPredictor(recorder, image_size=128)
    inst = upright([path])[0]
    assert recorder.sizes == [(100, 60)]  # the model sees the displayed (rotated) image
    assert inst["masks"].shape[1:] == (100, 60)
    assert (inst["boxes"][:, 2] <= 60).all() and (inst["boxes"][:, 3] <= 100).all()
    # the same as predicting on the stored pixels turned 90 degrees clockwise
    _assert_same(inst, predictor([np.ascontiguousarray(np.rot90(stored, k=-1))])[0])
    # the explicit opt-out keeps the stored grid (to compare with dataset annotations)
    as_stored = BatchPredictor(recorder, image_size=128, apply_exif_orientation=False)
    assert as_stored([path])[0]["masks"].shape[1:] == (60, 100)
    assert recorder.sizes[-1] == (60, 100)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_matches_cpu(predictor):
    gpu = BatchPredictor(copy.deepcopy(predictor.model).cuda(), image_size=128)
    image = _image(110, 170)
    out = gpu([image])[0]
    assert out["boxes"].device.type == "cpu"  # results come back on the CPU
    ref = predictor([image])[0]
    torch.testing.assert_close(out["scores"], ref["scores"], atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(out["boxes"], ref["boxes"], atol=0.1, rtol=1e-3)
