#!/usr/bin/env python3
"""Predict instances on images; write overlays, per-instance panels and a COCO results JSON.

    python demo.py --config-file configs/effdet_d0.yaml --input IMG_OR_DIR [IMG ...] \\
        --output OUT_DIR [--confidence-threshold 0.5] [--panel] [--ground-truth JSON ...] \\
        [--max-size 1280] [KEY VALUE ...]  (e.g. MODEL.WEIGHTS output/model_final.safetensors)

Per image: ``<name>_overlay.png`` (masks, boxes, labels); with --panel ``<name>_panel.png`` (one
cell per instance); for images a --ground-truth JSON annotates, ``<name>_gt.png`` (annotations
left, predictions right) and with --panel ``<name>_gt_panel.png``. Also ``coco_results.json``
(COCO results, RLE masks, the category ids of the dataset the model was trained on; image ids
from the ground truth where an image has one; for a model that predicts attributes, each
detection's ``attribute_ids`` as in Fashionpedia's results format). The drawings show instances
scoring at least --confidence-threshold (default 0.5, as detectron2's demo); coco_results.json
keeps every detection above the model's TEST.SCORE_THRESH (the evaluation threshold, 0.05 by
default; set it as a KEY VALUE override).

Class names and category ids are the model's own: those training recorded in MODEL.WEIGHTS
(``model_final.safetensors``), else those of the config's first DATASETS.TRAIN dataset.

Photos are predicted and drawn in their displayed orientation (EXIF Orientation applied), and
their results' boxes, masks, height and width refer to it. Images a --ground-truth JSON annotates
keep the stored pixel orientation its annotations refer to.

A file that cannot be read (missing, corrupt, truncated) is reported and skipped; the skipped files
are listed at the end with the reason. coco_results.json is rewritten (atomically) after every
batch, so it holds every image processed so far even if the run dies later. The exit status is
non-zero only if no image could be processed.

Without MODEL.WEIGHTS the model has random weights and its predictions are NOISE; the
ground-truth view still checks the data pipeline (loader, taxonomy remap, masks, drawing).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from effdetmask.config import setup_cfg
from effdetmask.data.fashionpedia import load_fashionpedia_json
from effdetmask.data.image_io import read_image_rgb
from effdetmask.data.taxonomy import class_colors
from effdetmask.data.validation import DatasetIssue
from effdetmask.engine.class_metadata import CLASSES_KEY, IDS_KEY, model_class_metadata
from effdetmask.engine.defaults import check_device
from effdetmask.evaluation.coco_evaluator import instances_to_coco_json
from effdetmask.predictor import BatchPredictor
from effdetmask.vis import Visualizer
from effdetmask.vis_pages import write_instance_pngs

logger = logging.getLogger("effdetmask.demo")

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
RESULTS_FILE = "coco_results.json"
DISPLAY_THRESHOLD = 0.5


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True, metavar="FILE", help="yaml config")
    parser.add_argument("--input", required=True, nargs="+", metavar="PATH",
                        help="image files and/or folders of images")
    parser.add_argument("--output", required=True, metavar="DIR", help="folder for the outputs")
    parser.add_argument("--confidence-threshold", type=float, default=DISPLAY_THRESHOLD,
                        help="minimum score of a DRAWN instance (default %(default)s, as "
                        "detectron2's demo); coco_results.json keeps every detection above the "
                        "model's TEST.SCORE_THRESH (0.05 by default; override it as a KEY VALUE "
                        "pair, e.g. TEST.SCORE_THRESH 0.3)")
    parser.add_argument("--panel", action="store_true", help="also write <name>_panel.png")
    parser.add_argument("--ground-truth", action="append", default=[], metavar="JSON",
                        help="Fashionpedia/COCO json (repeatable); its annotations are drawn "
                        "next to the predictions in <name>_gt.png (matched by file name)")
    parser.add_argument("--max-size", type=int, default=1280,
                        help="downscale the drawings so the long side is at most this (display "
                        "only; predictions and the JSON stay at full resolution); 0 = never")
    parser.add_argument("opts", nargs=argparse.REMAINDER, default=[],
                        help="config overrides as KEY VALUE pairs")
    return parser


def list_images(inputs: Sequence[str]) -> List[str]:
    """Image files given directly or found (non-recursively, sorted) in given folders.

    Raises:
        FileNotFoundError: a path that does not exist, or no image at all.
    """
    files: List[str] = []
    for path in inputs:
        if os.path.isdir(path):
            files += sorted(os.path.join(path, f) for f in os.listdir(path)
                            if f.lower().endswith(IMAGE_EXTENSIONS))
        elif os.path.isfile(path):
            files.append(path)
        else:
            raise FileNotFoundError(f"--input {path}: no such file or folder")
    if not files:
        raise FileNotFoundError(f"--input {' '.join(inputs)}: no image files "
                                f"({', '.join(IMAGE_EXTENSIONS)})")
    return files


def load_ground_truth(json_files: Sequence[str]) -> Dict[str, Dict[str, Any]]:
    """Dataset dicts (final Fashionpedia ids) of every json, keyed by image file base name."""
    by_name: Dict[str, Dict[str, Any]] = {}
    for json_file in json_files:
        # images are matched by name, so they need not sit where the json says
        for record in load_fashionpedia_json(json_file, os.path.dirname(json_file),
                                             check_files=False):
            by_name[os.path.basename(record["file_name"])] = record
    return by_name


def _unique_stem(path: str, seen: Dict[str, int]) -> str:
    stem = os.path.splitext(os.path.basename(path))[0]
    seen[stem] = seen.get(stem, 0) + 1
    return stem if seen[stem] == 1 else f"{stem}_{seen[stem]}"


def _read_image(path: str, record: Optional[Dict[str, Any]]
                ) -> Tuple[np.ndarray, Optional[Dict[str, Any]]]:
    """Decode ``path`` to RGB; returns it with its ground truth, None where that does not fit.

    An annotated image keeps the stored pixel grid its annotations refer to; any other photo is
    decoded as displayed (EXIF Orientation applied).

    Raises:
        DatasetIssue: a missing, empty, truncated or undecodable file.
    """
    image = read_image_rgb(path, apply_exif_orientation=record is None)
    if record is not None and (record["height"], record["width"]) != image.shape[:2]:
        # same name, other pixels (a resized or rotated copy): its masks would not fit
        logger.warning("%s is %dx%d but the ground truth's %s is %dx%d: not drawn",
                       path, image.shape[1], image.shape[0], record["file_name"],
                       record["width"], record["height"])
        image, record = read_image_rgb(path, apply_exif_orientation=True), None
    return image, record


def _write_results(path: str, serialized: Sequence[str]) -> None:
    """Write a JSON list of already serialized results atomically (a temp file, then a rename)."""
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write("[" + ",".join(serialized) + "]")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """Run the demo.

    Returns:
        ``{"results_file": path, "images": {name: [written PNGs]}, "skipped": [(path, reason)]}``.
    Raises:
        SystemExit: bad arguments (2), or not a single image could be processed (1).
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, datefmt="%H:%M:%S",
                        format="[%(asctime)s %(name)s %(levelname)s] %(message)s")
    try:
        files = list_images(args.input)
        for json_file in args.ground_truth:
            if not os.path.isfile(json_file):
                raise FileNotFoundError(f"--ground-truth {json_file}: no such file")
    except FileNotFoundError as e:
        parser.error(str(e))
    cfg = setup_cfg(args.config_file, list(args.opts))
    try:
        check_device(cfg.MODEL.DEVICE)
    except ValueError as e:
        parser.error(str(e))
    if cfg.SEED >= 0:
        torch.manual_seed(cfg.SEED)  # random-weight runs (no MODEL.WEIGHTS) draw the same PNGs
    # RLE keeps memory at a few KB per instance even on a 3676x5214 photo
    predictor = BatchPredictor.from_config(cfg, return_rle=True)
    gt = load_ground_truth(args.ground_truth)
    gt_ids = [int(r["image_id"]) for r in gt.values()]
    next_id = max(gt_ids, default=0) + 1  # images without ground truth get ids above the GT's
    # the model's own classes: recorded with its weights by training, else the config's dataset
    classes = model_class_metadata(cfg)
    vis = Visualizer(classes[CLASSES_KEY], class_colors(len(classes[CLASSES_KEY])))
    to_dataset_id = {v: k for k, v in classes[IDS_KEY].items()}
    os.makedirs(args.output, exist_ok=True)
    results_file = os.path.join(args.output, RESULTS_FILE)
    serialized: List[str] = []  # each result's JSON, so a rewrite of the file only joins them
    written: Dict[str, List[str]] = {}
    skipped: List[Tuple[str, str]] = []
    seen: Dict[str, int] = {}

    def run_batch(batch: List[Tuple[str, np.ndarray, Optional[Dict[str, Any]]]]) -> None:
        nonlocal next_id
        outputs = predictor([image for _, image, _ in batch])
        for (path, image, record), inst in zip(batch, outputs):
            height, width = image.shape[:2]
            if record is None:
                image_id, next_id = next_id, next_id + 1
            else:
                image_id = int(record["image_id"])
            results = instances_to_coco_json(inst, image_id, height, width)
            serialized.extend(json.dumps({**r, "category_id": to_dataset_id[r["category_id"]]})
                              for r in results)
            name = _unique_stem(path, seen)
            written[name] = write_instance_pngs(
                vis, os.path.join(args.output, name), image, inst, record, args.max_size,
                args.panel, noise=not cfg.MODEL.WEIGHTS, min_score=args.confidence_threshold)
            logger.info("%s: %d instances%s", path, len(results),
                        "" if record is None else f", {len(record['annotations'])} annotated")
        # after every batch: the file holds every image processed so far if the run dies later
        _write_results(results_file, serialized)

    # the demo decodes the images itself because it draws on them too; a batch of
    # TEST.IMS_PER_BATCH readable images is one forward pass of the predictor
    batch: List[Tuple[str, np.ndarray, Optional[Dict[str, Any]]]] = []
    for path in files:
        try:
            image, record = _read_image(path, gt.get(os.path.basename(path)))
        except (DatasetIssue, OSError) as e:  # DatasetIssue names the file
            problem = e.problem if isinstance(e, DatasetIssue) else str(e)
            logger.warning("skipping %s: %s", path, problem)
            skipped.append((path, problem))
            continue
        batch.append((path, image, record))
        if len(batch) == predictor.batch_size:
            run_batch(batch)
            batch = []
    if batch:
        run_batch(batch)
    _write_results(results_file, serialized)
    logger.info("wrote %d detections of %d images to %s", len(serialized), len(written),
                results_file)
    if skipped:
        logger.warning("skipped %d of %d files:\n%s", len(skipped), len(files),
                       "\n".join(f"  {path}: {reason}" for path, reason in skipped))
    if not written:
        logger.error("no image could be processed")
        raise SystemExit(1)
    return {"results_file": results_file, "images": written, "skipped": skipped}


if __name__ == "__main__":
    main()
