"""Static int8 (QDQ) quantization of the exported tiny d0: the graph quantizes the convs and keeps
the post-processing float, onnxruntime runs it behind ``OnnxPredictor``, its outputs on a
calibration image stay close to the fp32 graph's, and the export tool refuses to calibrate on
nothing."""

import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from effdetmask.config import setup_cfg
from effdetmask.export import OnnxPredictor, export_onnx
from effdetmask.export.quantize import (
    calibration_images,
    condition_random_model,
    quantize_onnx_int8,
)
from effdetmask.modeling import build_model
from effdetmask.modeling.fold_bn import fold_batch_norm

pytestmark = pytest.mark.usefixtures("one_thread")

CONFIG = "configs/quick_schedules/effdet_d0_tiny_test.yaml"
N = 20


def tiny_cfg(root):
    return setup_cfg(CONFIG, ["DATASETS.ROOT", str(root), "TEST.SCORE_THRESH", "0.0",
                              "TEST.DETECTIONS_PER_IMAGE", str(N),
                              "MODEL.EFFDET_HEAD.MAX_DETECTIONS", str(N)])


@torch.no_grad()
def well_conditioned_model(cfg, images):
    """The tiny d0 with weights whose int8 error stays small, as a trained model's does.

    Random kernels are high-pass filters: on smooth images each one shrinks the signal but not the
    white quantization noise, so int8 error compounds to O(1) over the 60 convs and no tolerance
    tells right from wrong. Non-negative kernels (low-pass) with unit-variance activations
    (BatchNorm re-estimated on ``images``) keep it at a few percent; the prediction convs are then
    set so that scores are neither tied nor saturated (``condition_random_model``).
    """
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    for name, p in model.named_parameters():
        if p.dim() == 4 and "predict" not in name:
            p.abs_()
    condition_random_model(model, images)
    fold_batch_norm(model)
    return model.eval()


@pytest.fixture(scope="module")
def graphs(tmp_path_factory):
    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("int8")
    cfg = tiny_cfg(tmp / "datasets")
    cal = calibration_images(cfg, "fashion_synth_train", 4)
    model = well_conditioned_model(cfg, cal)
    fp32 = export_onnx(model, str(tmp / "tiny.onnx"), cfg.INPUT.SIZE)
    int8 = quantize_onnx_int8(fp32, str(tmp / "tiny.int8.onnx"), cal)
    return {"cfg": cfg, "cal": cal, "fp32": fp32, "int8": int8, "tmp": tmp}


def output_error(a, b, top=5, box_tol=4.0):
    """Raw outputs ``a`` (fp32) and ``b`` (int8) of one image (``[1, N, ...]``).

    Near-tied scores may swap ranks (and which of them make the N), so b's ``top`` detections
    are each matched to a's closest box of the same class. Returns the fraction of them within
    ``box_tol`` px (L-inf: boxes may be degenerate), the max |diff| of the sorted score vectors,
    and the mean |mask probability diff| over the matches (1.0 without any).
    """
    dist = np.abs(b["boxes"][0, :top, None] - a["boxes"][0][None]).max(-1)
    dist = np.where(b["classes"][0, :top, None] == a["classes"][0][None], dist, np.inf)
    ok, j = dist.min(1) <= box_tol, dist.argmin(1)
    score = np.abs(np.sort(a["scores"][0]) - np.sort(b["scores"][0])).max()
    mask = np.abs(b["masks"][0, :top][ok] - a["masks"][0][j[ok]]).mean() if ok.any() else 1.0
    return ok.mean(), score, mask


def assert_close(fp32_path, int8_path, images):
    fp32 = OnnxPredictor(fp32_path, threads=1)
    int8 = OnnxPredictor(int8_path, threads=1)
    for image in images:
        matched, score, mask = output_error(fp32.run(image), int8.run(image))
        print(f"matched {matched:.2f}, max |score diff| {score:.4f}, mask {mask:.4f}")
        # near-tied scores reorder, so only some of the top 5 need to match; broken: none
        assert matched >= 0.2 and score <= 0.02 and mask <= 0.02, (matched, score, mask)


def test_graph_quantizes_convs_and_keeps_postprocessing_float(graphs):
    graph = onnx.load(graphs["int8"]).graph
    producers = {o: n for n in graph.node for o in n.output}
    convs = [n for n in graph.node if n.op_type == "Conv"]
    quantized = [n.input[1] in producers and producers[n.input[1]].op_type == "DequantizeLinear"
                 for n in convs]
    predict = ["/predict/conv_pw" in n.name for n in convs]
    assert sum(predict) == 10 and quantized == [not p for p in predict]  # 2 heads x 5 levels
    assert all(producers[n.input[0]].op_type == "DequantizeLinear"
               for n, q in zip(convs, quantized) if q)
    ops = {n.op_type for n in graph.node}
    assert {"QuantizeLinear", "RoiAlign", "TopK"} <= ops
    # NonMaxSuppression sits in an If branch (no boxes -> empty result); no Q/DQ anywhere near
    nms = [g for n in graph.node for a in n.attribute if a.type == onnx.AttributeProto.GRAPH
           for g in a.g.node]
    assert "NonMaxSuppression" in {n.op_type for n in nms}
    assert not {"QuantizeLinear", "DequantizeLinear"} & {n.op_type for n in nms}
    # RoiAlign is a float op; it pools the (int8-rounded) features that the heads' first convs
    # read too, with exact float boxes
    roi = next(n for n in graph.node if n.op_type == "RoiAlign")
    assert all(producers[i].op_type != "DequantizeLinear" for i in roi.input[1:])
    assert {"boxes", "scores", "classes", "masks"} <= {o.name for o in graph.output}
    assert all(producers[o.name].op_type not in ("DequantizeLinear", "QuantizeLinear")
               for o in graph.output)


def test_predictor_runs_int8_with_the_same_structure(graphs):
    size = graphs["cfg"].INPUT.SIZE
    batched = [{"image": torch.from_numpy(graphs["cal"][i][0]), "height": 200, "width": 160,
                "scale": size / 200} for i in range(2)]
    ours = OnnxPredictor(graphs["int8"], score_thresh=0.0, detections_per_image=N)(batched)
    ref = OnnxPredictor(graphs["fp32"], score_thresh=0.0, detections_per_image=N)(batched)
    for a, b in zip(ours, ref):
        a, b = a["instances"], b["instances"]
        assert a.keys() == b.keys()
        for k in a:  # the counts may differ: what survives selection is not exactly the same
            assert type(a[k]) is type(b[k]), k
            if isinstance(a[k], torch.Tensor):
                assert a[k].shape[1:] == b[k].shape[1:] and a[k].dtype == b[k].dtype, k
        assert a["masks"].shape[-2:] == (200, 160) and len(a["scores"]) > 0


def test_int8_outputs_close_to_fp32(graphs):
    assert_close(graphs["fp32"], graphs["int8"], graphs["cal"][:2])


def _scaled_activation_scales(src, dst, factor):
    model = onnx.load(src)
    for t in model.graph.initializer:
        if t.name.endswith("_scale") and not any(s in t.name for s in ("weight", "bias")):
            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t) * np.float32(factor),
                                               t.name))
    onnx.save(model, dst)


@pytest.mark.parametrize("broken", ["uncalibrated", "scale x4", "scale x0.25"])
def test_tolerance_fails_a_broken_quantization(graphs, broken):
    """The closeness test above has teeth: calibrating on a blank image or activation scales off
    by a factor of 4 fail it."""
    path = str(graphs["tmp"] / f"broken_{broken.replace(' ', '_')}.onnx")
    if broken == "uncalibrated":
        quantize_onnx_int8(graphs["fp32"], path, [np.zeros_like(graphs["cal"][0])], exclude=())
    else:
        _scaled_activation_scales(graphs["int8"], path, float(broken.split("x")[1]))
    with pytest.raises(AssertionError):
        assert_close(graphs["fp32"], path, graphs["cal"][:2])


def test_unknown_calibration_dataset_is_named(tmp_path):
    with pytest.raises(ValueError, match="'no_such_set'.*registered: .*fashion_synth_train"):
        calibration_images(tiny_cfg(tmp_path), "no_such_set", 2)


def test_tool_requires_a_calibration_dataset(tmp_path):
    out = subprocess.run(
        [sys.executable, "tools/export_onnx.py", "--config-file", CONFIG, "--output",
         str(tmp_path / "m.onnx"), "--int8"], capture_output=True, text=True)
    assert out.returncode != 0
    assert "--calibration-dataset" in out.stderr
    assert not (tmp_path / "m.onnx").exists()
