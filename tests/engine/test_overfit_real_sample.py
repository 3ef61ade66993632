"""Proof that the whole pipeline learns: d0 overfits the 3 real images of ../shared/data.

Slow (minutes on a CPU); run with
``python -m pytest -m slow tests/engine/test_overfit_real_sample.py``.
"""

import json
from pathlib import Path

import pytest

from effdetmask.config import setup_cfg
from effdetmask.data import DatasetCatalog, MetadataCatalog
from effdetmask.data.fashionpedia import load_fashionpedia_json
from effdetmask.data.kaggle import load_imaterialist_csv
from effdetmask.data.taxonomy import fashionpedia_metadata
from effdetmask.engine.defaults import LaunchSpec
from effdetmask.engine.trainer import train

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared" / "data"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not SHARED.is_dir(), reason=f"real sample not found at {SHARED}"),
]


def register_real_sample() -> tuple:
    """The 2 Fashionpedia API images and the 1 Kaggle iMaterialist image as two datasets."""
    fp_dir = SHARED / "fashionpedia_api_sample"
    kg_dir = SHARED / "imat2020_train_rle"
    loaders = {
        "real_sample_fashionpedia": lambda: load_fashionpedia_json(
            str(fp_dir / "sample.json"), str(fp_dir / "images")
        ),
        "real_sample_imat2020": lambda: load_imaterialist_csv(
            str(next(kg_dir.glob("train_rows_*.csv"))),
            str(kg_dir / "images"),
            label_json=str(
                SHARED / "label_descriptions" / "imat2020_fgvc7_label_descriptions.json"
            ),
        ),
    }
    for name, loader in loaders.items():
        if name not in DatasetCatalog:
            DatasetCatalog.register(name, loader)
            MetadataCatalog.get(name).set(**fashionpedia_metadata())
    return tuple(loaders)


def test_d0_overfits_the_real_sample(tmp_path):
    names = register_real_sample()
    cfg = setup_cfg(
        str(REPO / "configs" / "quick_schedules" / "effdet_d0_overfit_real_sample.yaml"),
        ["OUTPUT_DIR", str(tmp_path), "DATASETS.TRAIN", str(names), "DATASETS.TEST", str(names)],
    )
    launch = LaunchSpec(
        "cpu", devices=1, num_nodes=1, node_rank=0, master_addr="127.0.0.1", master_port=29518
    )
    results = train(cfg, launch)
    ap50 = {name: results[name]["segm"]["AP50"] for name in names}
    (tmp_path / "overfit_ap50.json").write_text(json.dumps(ap50))
    for name, value in ap50.items():
        assert value >= 90.0, f"{name}: train-set mask AP50 {value:.1f} < 90"
