"""demo.py's coco_results.json carries each detection's ``attribute_ids`` when the model predicts
attributes (Fashionpedia's results format), and none when it does not."""

import importlib.util
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

import effdetmask.modeling  # noqa: F401  (effdet imported under effdetmask's warning filter)

REPO = Path(__file__).resolve().parents[1]
TINY_OPTS = ["INPUT.SIZE", "128", "MODEL.BIFPN.CHANNELS", "16", "MODEL.BIFPN.REPEATS", "1",
             "MODEL.EFFDET_HEAD.REPEATS", "1", "MODEL.ROI_MASK_HEAD.CONV_DIM", "16",
             "TEST.SCORE_THRESH", "0.0", "TEST.DETECTIONS_PER_IMAGE", "3",
             "MODEL.BACKBONE.PRETRAINED", "", "MODEL.FREEZE_BN", "False"]

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _load_demo():
    spec = importlib.util.spec_from_file_location("effdetmask_demo_attributes", REPO / "demo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_results_json_has_attribute_ids_of_the_predicted_instances(tmp_path, monkeypatch):
    demo = _load_demo()
    image = np.random.default_rng(0).integers(0, 255, size=(90, 120, 3), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "a.png"), image)
    real_call = demo.BatchPredictor.__call__

    def with_attributes(self, images, *args, **kwargs):
        outputs = real_call(self, images, *args, **kwargs)
        for inst in outputs:  # what an attribute head adds: sorted sparse ids per instance
            n = len(inst["scores"])
            inst["attribute_ids"] = [[317, 157 + i] for i in range(n)]
        return outputs

    def argv(out):
        return ["--config-file", str(REPO / "configs" / "effdet_d0.yaml"), "--input",
                str(tmp_path / "a.png"), "--output", str(tmp_path / out), *TINY_OPTS]

    plain = demo.main(argv("plain") + ["MODEL.ROI_ATTRIBUTE_HEAD.ENABLED", "False"])
    written = json.loads(Path(plain["results_file"]).read_text())
    assert written and all("attribute_ids" not in r for r in written)
    monkeypatch.setattr(demo.BatchPredictor, "__call__", with_attributes)
    out = demo.main(argv("attrs"))
    written = json.loads(Path(out["results_file"]).read_text())
    assert [r["attribute_ids"] for r in written] == [[157 + i, 317] for i in range(len(written))]
