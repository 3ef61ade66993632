"""ONNX export of the full tiny d0 (detections + masks, dynamic batch) runs in onnxruntime and
matches PyTorch: boxes within 1e-3, mask IoU >= 0.99 on detections matched by score rank."""

import onnxruntime  # noqa: F401  (a dependency: a broken install fails here, it is not skipped)
import pytest
import torch

import effdetmask.modeling  # noqa: F401
from effdetmask.config import setup_cfg
from effdetmask.export import OnnxPredictor, export_onnx
from effdetmask.export.onnx import match_by_score
from effdetmask.modeling import build_model

CONFIG = "configs/quick_schedules/effdet_d0_tiny_test.yaml"
N = 20


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    torch.set_num_threads(1)
    torch.manual_seed(0)
    cfg = setup_cfg(CONFIG, ["TEST.SCORE_THRESH", "0.0", "TEST.DETECTIONS_PER_IMAGE", str(N),
                             "MODEL.EFFDET_HEAD.MAX_DETECTIONS", str(N),
                             "MODEL.EFFDET_HEAD.PRE_NMS_TOPK", "1000"])
    model = build_model(cfg).eval()
    # random heads give near-equal scores (ties at float noise) and masks of p ~ 0.5 everywhere;
    # spread them so rank matching and mask thresholding are meaningful
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "predict" in name:
                p.normal_(0, 0.5)
    path = str(tmp_path_factory.mktemp("onnx") / "tiny.onnx")
    export_onnx(model, path, cfg.INPUT.SIZE)
    return model, path


def inputs(batch: int):
    g = torch.Generator().manual_seed(batch)
    sizes = [(128, 128), (100, 128), (128, 64), (90, 120)]
    return [{"image": torch.randint(0, 256, (3, 128, 128), dtype=torch.uint8, generator=g),
             "height": h, "width": w, "scale": 128 / max(h, w)} for h, w in sizes[:batch]]


@pytest.mark.parametrize("batch", [1, 3])  # a batch size other than the export's (dynamic axis)
def test_onnxruntime_matches_pytorch(exported, batch):
    model, path = exported
    batched = inputs(batch)
    predictor = OnnxPredictor(path, score_thresh=0.0, detections_per_image=N, threads=1)
    ours = predictor(batched)
    with torch.inference_mode():
        ref = model(batched)
    for a, b in zip(ours, ref):
        a, b = a["instances"], b["instances"]
        assert len(a["scores"]) == len(b["scores"]) == N
        assert torch.allclose(a["scores"], b["scores"], atol=1e-5)
        match = match_by_score(a["scores"], a["classes"], a["boxes"], b["scores"], b["classes"],
                               b["boxes"])
        assert (match >= 0).all()
        assert (a["boxes"] - b["boxes"][match]).abs().max() <= 1e-3
        assert match.unique().numel() == N
        ma, mb = a["masks"], b["masks"][match]
        inter = (ma & mb).flatten(1).sum(1).float()
        union = (ma | mb).flatten(1).sum(1).float()
        iou = torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))
        assert iou.min() >= 0.99, iou.min()
