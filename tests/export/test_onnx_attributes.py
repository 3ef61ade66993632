"""ONNX export with the attribute head: the graph's extra ``attribute_scores`` output matches
PyTorch, and the onnxruntime predictor's instances carry the same attribute scores and ids."""

import onnxruntime  # noqa: F401  (a dependency: a broken install fails here, it is not skipped)
import torch

import effdetmask.modeling  # noqa: F401
from effdetmask.config import setup_cfg
from effdetmask.export import OnnxPredictor, export_onnx
from effdetmask.export.onnx import ATTRIBUTE_OUTPUT, OUTPUT_NAMES, match_by_score, output_names
from effdetmask.modeling import build_model

CONFIG = "configs/quick_schedules/effdet_d0_tiny_test.yaml"
N = 10
THRESH = 0.5


def test_onnx_attribute_scores_match_pytorch(tmp_path):
    torch.set_num_threads(1)
    torch.manual_seed(0)
    cfg = setup_cfg(CONFIG, [
        "TEST.SCORE_THRESH", "0.0", "TEST.DETECTIONS_PER_IMAGE", str(N),
        "MODEL.EFFDET_HEAD.MAX_DETECTIONS", str(N), "MODEL.EFFDET_HEAD.PRE_NMS_TOPK", "500",
        "MODEL.ROI_ATTRIBUTE_HEAD.ENABLED", "True", "MODEL.ROI_ATTRIBUTE_HEAD.CONV_DIM", "8",
        "MODEL.ROI_ATTRIBUTE_HEAD.FC_DIM", "16", "MODEL.ROI_ATTRIBUTE_HEAD.SCORE_THRESH",
        str(THRESH)])
    model = build_model(cfg).eval()
    with torch.no_grad():  # spread the random heads' outputs (see test_onnx_parity.py)
        for name, p in model.named_parameters():
            if "predict" in name:
                p.normal_(0, 0.5)
    assert output_names(model) == OUTPUT_NAMES + [ATTRIBUTE_OUTPUT]
    path = export_onnx(model, str(tmp_path / "attr.onnx"), cfg.INPUT.SIZE)
    g = torch.Generator().manual_seed(3)
    sizes = [(128, 96), (80, 128)]
    batched = [{"image": torch.randint(0, 256, (3, 128, 128), dtype=torch.uint8, generator=g),
                "height": h, "width": w, "scale": 128 / max(h, w)} for h, w in sizes]
    ours = OnnxPredictor(path, score_thresh=0.0, detections_per_image=N, threads=1,
                         attribute_score_thresh=THRESH)(batched)
    with torch.inference_mode():
        ref = model(batched)
    for a, b in zip(ours, ref):
        a, b = a["instances"], b["instances"]
        match = match_by_score(a["scores"], a["classes"], a["boxes"], b["scores"], b["classes"],
                               b["boxes"])
        assert (match >= 0).all() and match.unique().numel() == len(a["scores"]) == N
        sa, sb = a["attribute_scores"], b["attribute_scores"][match]
        assert sa.shape == (N, 294) and (sa - sb).abs().max() <= 1e-4
        assert any(a["attribute_ids"])
        far = [(sa[k] - THRESH).abs().min() > 1e-3 for k in range(N)]  # no score on the edge
        assert [ids for ids, ok in zip(a["attribute_ids"], far) if ok] == [
            b["attribute_ids"][m] for m, ok in zip(match.tolist(), far) if ok]
