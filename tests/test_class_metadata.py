"""A model's class names travel with its weights: the demo draws the labels of the dataset the
model was trained on, not Fashionpedia's."""

import importlib.util
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import effdetmask.modeling  # noqa: F401  (effdet imported under effdetmask's warning filter)
from effdetmask.config import setup_cfg
from effdetmask.data.catalog import DatasetCatalog, MetadataCatalog
from effdetmask.data.taxonomy import class_names
from effdetmask.engine.class_metadata import (
    CLASSES_KEY,
    IDS_KEY,
    model_class_metadata,
    training_class_metadata,
)
from effdetmask.modeling import build_model
from effdetmask.modeling.weights import read_weights_metadata, save_state_dict

REPO = Path(__file__).resolve().parents[1]
TINY = str(REPO / "configs" / "quick_schedules" / "effdet_d0_tiny_test.yaml")
PETS = ["cat", "dog", "bird"]
PET_IDS = {10: 0, 20: 1, 30: 2}  # dataset category id -> contiguous class

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture
def pets_dataset():
    """A registered 3-class dataset with sparse category ids (its images are never read)."""
    name = "pets_for_class_metadata_test"
    DatasetCatalog.register(name, lambda: [])
    MetadataCatalog.get(name).set(thing_classes=PETS, thing_dataset_id_to_contiguous_id=PET_IDS)
    yield name
    DatasetCatalog.remove(name)
    MetadataCatalog.remove(name)


def _cfg(*opts):
    return setup_cfg(TINY, ["MODEL.NUM_CLASSES", "3", *opts], freeze=False)


def test_weights_record_the_training_classes_and_outlive_the_catalog(tmp_path, pets_dataset):
    cfg = _cfg("DATASETS.TRAIN", f"('{pets_dataset}',)")
    path = str(tmp_path / "model_final.safetensors")
    save_state_dict({"w": torch.zeros(2)}, path, metadata=training_class_metadata(cfg))
    assert json.loads(read_weights_metadata(path)[CLASSES_KEY]) == PETS
    MetadataCatalog.remove(pets_dataset)  # a later process: the dataset is not registered there
    cfg = _cfg("MODEL.WEIGHTS", path)  # and the config names the default training set
    assert model_class_metadata(cfg) == {CLASSES_KEY: PETS, IDS_KEY: PET_IDS}


def test_without_recorded_classes_the_config_dataset_then_a_fallback(pets_dataset):
    assert model_class_metadata(_cfg("DATASETS.TRAIN", f"('{pets_dataset}',)"))[CLASSES_KEY] == PETS
    default = setup_cfg(TINY, [])  # the generated Fashionpedia-style training set
    assert model_class_metadata(default)[CLASSES_KEY] == class_names()
    # 46 Fashionpedia names cannot label a 3-class model
    fallback = model_class_metadata(_cfg())
    assert fallback == {CLASSES_KEY: ["class 0", "class 1", "class 2"], IDS_KEY: {0: 0, 1: 1, 2: 2}}


def test_demo_draws_the_labels_of_the_dataset_the_model_was_trained_on(
        tmp_path, pets_dataset, monkeypatch):
    spec = importlib.util.spec_from_file_location("effdetmask_demo_pets", REPO / "demo.py")
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    cfg = _cfg("DATASETS.TRAIN", f"('{pets_dataset}',)")
    weights = str(tmp_path / "model_final.safetensors")
    torch.manual_seed(0)
    save_state_dict(build_model(cfg).state_dict(), weights, metadata=training_class_metadata(cfg))
    MetadataCatalog.remove(pets_dataset)
    drawn = []

    class RecordingVisualizer(demo.Visualizer):
        def __init__(self, names, *args, **kwargs):
            drawn.append(list(names))
            super().__init__(names, *args, **kwargs)

    monkeypatch.setattr(demo, "Visualizer", RecordingVisualizer)
    image = tmp_path / "photo.png"
    cv2.imwrite(str(image), np.random.default_rng(0).integers(0, 255, (96, 128, 3), np.uint8))
    out = demo.main(["--config-file", TINY, "--input", str(image), "--output",
                     str(tmp_path / "out"), "MODEL.NUM_CLASSES", "3", "MODEL.WEIGHTS", weights,
                     "TEST.SCORE_THRESH", "0.0", "TEST.DETECTIONS_PER_IMAGE", "4"])
    assert drawn == [PETS]
    results = json.loads(Path(out["results_file"]).read_text())
    assert results and {r["category_id"] for r in results} <= set(PET_IDS)
