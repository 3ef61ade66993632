"""Every Python block of docs/extending.md runs, in order, in one namespace, at tiny sizes.

The blocks run from a folder laid out like the repository: ``configs/effdet_d0.yaml`` there is a
tiny config (128 px, one BiFPN repeat, two training steps) and ``datasets/shoes/`` holds a few
generated photos with a COCO JSON and a CSV of boxes, the files the guide names.
"""

import json
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from effdetmask.data import DatasetCatalog, MetadataCatalog

REPO = Path(__file__).resolve().parents[2]
GUIDE = REPO / "docs" / "extending.md"
SHOES = ["boot", "sandal", "sneaker"]
SHOE_IDS = [3, 7, 9]  # sparse COCO category ids
DATASETS = ["shoes_train", "shoes_val", "shoes_csv_train"]

TINY_D0 = f"""_BASE_: "{REPO / 'configs' / 'quick_schedules' / 'effdet_d0_tiny_test.yaml'}"
MODEL:
  BIFPN:
    CHANNELS: 16
  ROI_MASK_HEAD:
    CONV_DIM: 16
SOLVER:
  MAX_ITER: 2
  CHECKPOINT_PERIOD: 2
TEST:
  VIS_IMAGES: 0
"""

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def python_blocks(markdown: str):
    return re.findall(r"^```python\n(.*?)^```", markdown, flags=re.S | re.M)


def _write_shoes(root: Path) -> None:
    """6 photos with 1-2 coloured boxes each; train.json (4 photos), val.json (2), train.csv."""
    images = root / "images"
    images.mkdir(parents=True)
    rng = np.random.default_rng(0)
    rows, per_split = [], {"train": [], "val": []}
    for k in range(6):
        image = rng.integers(0, 60, size=(96, 128, 3), dtype=np.uint8)
        boxes = []
        for j in range(1 + k % 2):
            x0, y0 = 10 + 50 * j, 12 + 4 * k
            x1, y1 = x0 + 40, y0 + 50
            label = (k + j) % 3
            image[y0:y1, x0:x1] = (80 * (label + 1), 200 - 60 * label, 60)
            boxes.append((label, x0, y0, x1, y1))
            rows.append(f"{k}.png,{SHOES[label]},{x0},{y0},{x1},{y1}")
        cv2.imwrite(str(images / f"{k}.png"), image)
        per_split["train" if k < 4 else "val"].append((k, boxes))
    for split, photos in per_split.items():
        anns = [{"id": 10 * k + j + 1, "image_id": k, "category_id": SHOE_IDS[label],
                 "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0),
                 "segmentation": [[x0, y0, x1, y0, x1, y1, x0, y1]], "iscrowd": 0}
                for k, boxes in photos for j, (label, x0, y0, x1, y1) in enumerate(boxes)]
        coco = {"images": [{"id": k, "file_name": f"{k}.png", "height": 96, "width": 128}
                           for k, _ in photos],
                "annotations": anns,
                "categories": [{"id": i, "name": n} for i, n in zip(SHOE_IDS, SHOES)]}
        (root / f"{split}.json").write_text(json.dumps(coco))
    (root / "train.csv").write_text("file_name,label,x0,y0,x1,y1\n" + "\n".join(rows) + "\n")


@pytest.fixture
def guide_folder(tmp_path, monkeypatch):
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "effdet_d0.yaml").write_text(TINY_D0)
    _write_shoes(tmp_path / "datasets" / "shoes")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(REPO))  # `import train_net`, as from the repository root
    yield tmp_path
    for name in DATASETS:
        if name in DatasetCatalog:
            DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def test_the_guide_has_an_example_for_each_extension():
    text = GUIDE.read_text()
    blocks = python_blocks(text)
    assert len(blocks) == 8
    for needle in ("TIMM_NAME", "BACKBONE_REGISTRY.register", "register_coco_instances",
                   "DatasetCatalog.register", "train_net.main", "MODEL.NUM_CLASSES",
                   "ROI_MASK_HEAD_REGISTRY.register"):
        assert any(needle in b for b in blocks), needle
    assert "docs/extending.md" in (REPO / "README.md").read_text()


def test_every_python_block_of_the_guide_runs(guide_folder):
    ns = {"__name__": "extending_guide"}
    for k, block in enumerate(python_blocks(GUIDE.read_text())):
        try:
            exec(compile(block, f"{GUIDE}:block{k}", "exec"), ns)
        except Exception as e:
            raise AssertionError(f"docs/extending.md python block {k} fails:\n{block}") from e
    # what the blocks claim
    assert list(ns["features"]) == ["p3", "p4", "p5", "p6", "p7"]
    assert type(ns["model"].mask_head).__name__ == "SingleLevelMaskHead"
    assert sorted(ns["losses"]) == ["loss_box", "loss_cls", "loss_mask"]
    assert all(torch.isfinite(v) for v in ns["losses"].values())
    assert set(ns["results"]["shoes_val"]) == {"bbox", "segm"}
    assert MetadataCatalog.get("shoes_train").thing_classes == SHOES
    csv_dicts = DatasetCatalog.get("shoes_csv_train")
    assert len(csv_dicts) == 6 and sum(len(d["annotations"]) for d in csv_dicts) == 9
    # read back from output/shoes/model_final.safetensors, as the demo does
    assert ns["classes"] == {"thing_classes": SHOES,
                             "thing_dataset_id_to_contiguous_id": {3: 0, 7: 1, 9: 2}}
