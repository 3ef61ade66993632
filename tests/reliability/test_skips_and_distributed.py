"""Skips are counted once, on the right image; distributed evaluation is sharded; a NaN on one
rank stops every rank; the training progress bar spans the whole run."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import effdetmask.data.build as build_mod
from effdetmask.config import get_cfg
from effdetmask.data.build import (
    MapDataset,
    build_test_loader,
    build_train_loader,
    get_detection_dataset_dicts,
)
from effdetmask.data.catalog import DatasetCatalog
from effdetmask.data.coco_json import coco_json_to_dicts
from effdetmask.data.resumable_loader import ErrorForwardingDataLoader
from effdetmask.data.validation import DatasetIssue, Reason, SkipReport
from effdetmask.engine.callbacks import RunProgressBar, SkipSummary

REPO = Path(__file__).resolve().parents[2]
TINY = str(REPO / "configs" / "quick_schedules" / "effdet_d0_tiny_test.yaml")


def _ann(ann_id, image_id):
    return {"id": ann_id, "image_id": image_id, "category_id": 1, "iscrowd": 0,
            "segmentation": [[2.0, 2.0, 12.0, 2.0, 12.0, 12.0, 2.0, 12.0]]}


def _coco_with_duplicate_id():
    return {
        "images": [
            {"id": 1, "file_name": "a.jpg", "height": 32, "width": 32},
            {"id": 1, "file_name": "b.jpg", "height": 32, "width": 32},
            {"id": 2, "file_name": "c.jpg", "height": 32, "width": 32},
        ],
        "annotations": [_ann(10, 1), _ann(11, 1), _ann(12, 2)],
        "categories": [{"id": 1, "name": "x"}],
    }


def test_duplicate_image_id_is_an_error_naming_file_and_id():
    with pytest.raises(DatasetIssue) as info:
        coco_json_to_dicts(_coco_with_duplicate_id(), "ann.json", "/imgs", category_map={1: 0},
                           check_files=False)
    msg = str(info.value)
    assert "ann.json" in msg and "image id 1" in msg and "b.jpg" in msg


def test_duplicate_image_id_skipped_with_all_its_annotations_never_merged():
    report = SkipReport("t")
    dicts = coco_json_to_dicts(_coco_with_duplicate_id(), "ann.json", "/imgs",
                               category_map={1: 0}, check_files=False, skip_invalid=True,
                               report=report)
    # no photo keeps annotations that may belong to the other one
    assert [d["image_id"] for d in dicts] == [2]
    assert [a["id"] for a in dicts[0]["annotations"]] == [12]
    assert report.count(Reason.DUPLICATE_IMAGE) == 1


def _register(name, dicts):
    if name in DatasetCatalog:
        DatasetCatalog.remove(name)
    DatasetCatalog.register(name, lambda: [dict(d) for d in dicts])


def test_dataset_without_any_annotation_is_an_error_naming_it():
    name = "test_reliability_no_annotations"
    _register(name, [{"file_name": f"/x/{i}.jpg", "height": 8, "width": 8, "image_id": i,
                      "annotations": []} for i in range(3)])
    try:
        with pytest.raises(ValueError, match=name):
            get_detection_dataset_dicts(name)
    finally:
        DatasetCatalog.remove(name)


def _failing_mapper(d):
    if d["image_id"] % 3 == 1:
        raise OSError(f"cannot decode {d['file_name']}")
    return {"image_id": d["image_id"]}


def test_worker_skips_reach_the_end_of_training_summary():
    dicts = [{"file_name": f"/x/{i}.jpg", "image_id": i} for i in range(12)]
    dataset = MapDataset(dicts, _failing_mapper, skip_invalid=True)
    loader = ErrorForwardingDataLoader(dataset, batch_size=2, num_workers=2,
                                       collate_fn=lambda b: b)
    summary = SkipSummary()
    seen = []
    for batch in loader:
        summary.count_batch(batch)
        seen += [s["image_id"] for s in batch]
        assert all(set(s) == {"image_id"} for s in batch)  # the records do not reach the model
    assert dataset.report.total == 0  # the main process's own report saw none of it
    assert summary.report.total == 4  # images 1, 4, 7, 10, each skipped in a worker
    assert summary.report.count("OSError") == 4
    assert "nothing skipped" not in summary.report.summary()
    assert sorted(set(seen)) == [i for i in range(12) if i % 3 != 1]


def test_train_loader_carries_load_time_skips(tmp_path):
    name = "test_reliability_load_skips"
    _register(name, [{"file_name": "/x/0.jpg", "height": 8, "width": 8, "image_id": 0,
                      "annotations": [{"bbox": [0, 0, 2, 2]}]},
                     {"image_id": 1}])  # malformed: skipped and counted
    cfg = get_cfg()
    cfg.DATASETS.TRAIN, cfg.DATASETS.SKIP_INVALID = (name,), True
    try:
        loader = build_train_loader(cfg)
        summary = SkipSummary()
        summary.add_report(loader.load_skip_report)
        assert summary.report.total == 1
    finally:
        DatasetCatalog.remove(name)


@pytest.mark.parametrize("n,world", [(5, 2), (7, 3), (4, 2), (1, 2)])
def test_test_loader_shards_are_disjoint_and_cover_the_dataset(monkeypatch, n, world):
    name = "test_reliability_shards"
    _register(name, [{"file_name": f"/x/{i}.jpg", "height": 8, "width": 8, "image_id": i,
                      "annotations": [{"bbox": [0, 0, 2, 2]}]} for i in range(n)])
    cfg = get_cfg()
    try:
        shards = []
        for rank in range(world):
            monkeypatch.setattr(build_mod, "_rank_and_world", lambda r=rank: (r, world))
            shards.append(list(build_test_loader(cfg, name).sampler))
    finally:
        DatasetCatalog.remove(name)
    per_rank = -(-n // world)
    assert all(len(s) == per_rank for s in shards)  # same number of batches on every rank
    real = [s[: len(range(r, n, world))] for r, s in enumerate(shards)]
    assert sorted(i for s in real for i in s) == list(range(n))  # disjoint and covering
    assert sum(len(s) for s in shards) - n < world  # padding only evens out the last batch


def test_progress_bar_spans_the_whole_run(tmp_path):
    from lightning.pytorch import Trainer
    from lightning.pytorch.demos.boring_classes import BoringModel

    class Bar(RunProgressBar):
        def on_train_end(self, trainer, pl_module):
            self.final = (self.train_progress_bar.total, self.train_progress_bar.n)
            super().on_train_end(trainer, pl_module)

    bar = Bar()
    trainer = Trainer(max_epochs=3, limit_train_batches=4, limit_val_batches=0, callbacks=[bar],
                      logger=False, enable_checkpointing=False, enable_model_summary=False,
                      default_root_dir=str(tmp_path), accelerator="cpu")
    trainer.fit(BoringModel())
    assert bar.final == (12, 12)  # 3 epochs x 4 steps, one bar, not reset per epoch


_NAN_ON_RANK_1 = """
import os, sys
import effdetmask.engine.lightning_module as lm

_build = lm.build_model


def build_model(cfg, device="cpu"):
    model = _build(cfg, device=device)
    forward = model.forward

    def nan_on_rank_1(*args, **kwargs):
        out = forward(*args, **kwargs)
        if model.training and os.environ.get("LOCAL_RANK", "0") == "1" and isinstance(out, dict):
            out = {k: v * float("nan") for k, v in out.items()}
        return out

    model.forward = nan_on_rank_1
    return model


lm.build_model = build_model
# imported, not run with runpy: Lightning starts rank 1 as ``python sys.argv[0] ...``, which must
# stay this script so that rank 1 is patched too
sys.path.insert(0, os.environ["EFFDETMASK_REPO"])
import train_net  # noqa: E402

train_net.main(train_net.default_argument_parser().parse_args())
"""


@pytest.mark.slow
def test_nan_loss_on_one_rank_stops_every_rank_with_the_same_error(tmp_path):
    script = tmp_path / "nan_rank1.py"
    script.write_text(textwrap.dedent(_NAN_ON_RANK_1))
    out = tmp_path / "out"
    cmd = [sys.executable, str(script), "--config-file", TINY,
           "--num-gpus", "0", "--num-cpu-processes", "2", "--dist-url", "tcp://127.0.0.1:29533",
           "OUTPUT_DIR", str(out), "DATASETS.ROOT", str(tmp_path / "data")]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", EFFDETMASK_REPO=str(REPO))
    env.pop("CUDA_VISIBLE_DEVICES", None)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=150, env=env, cwd=REPO)
    assert proc.returncode != 0
    err = proc.stderr
    assert "NonFiniteLossError" in err, err[-4000:]
    # both ranks raise, naming the rank whose loss was not finite
    assert err.count("non-finite loss at optimiser step 0") >= 2, err[-4000:]
    assert "rank 1: {" in err and "rank 0: {" not in err
    assert not (out / "model_final.safetensors").exists()
