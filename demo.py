#!/usr/bin/env python3
"""Predict instances on images; write overlays, per-instance panels and a COCO results JSON.

    python demo.py --config-file configs/effdet_d0.yaml --input IMG_OR_DIR [IMG ...] \\
        --output OUT_DIR [--confidence-threshold 0.3] [--panel] [--ground-truth JSON ...] \\
        [--max-size 1280] [KEY VALUE ...]  (e.g. MODEL.WEIGHTS output/model_final.safetensors)

Per image: ``<name>_overlay.png`` (masks, boxes, labels); with --panel ``<name>_panel.png`` (one
cell per instance); for images a --ground-truth JSON annotates, ``<name>_gt.png`` (annotations
left, predictions right) and with --panel ``<name>_gt_panel.png``. Also ``coco_results.json``
(COCO results, RLE masks, Fashionpedia category ids; image ids from the ground truth where an
image has one).

Without MODEL.WEIGHTS the model has random weights and its predictions are NOISE; the
ground-truth view still checks the data pipeline (loader, taxonomy remap, masks, drawing).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from typing import Any, Dict, List, Optional, Sequence

import torch

from effdetmask.config import setup_cfg
from effdetmask.data.fashionpedia import load_fashionpedia_json
from effdetmask.data.taxonomy import class_colors, class_names, fashionpedia_metadata
from effdetmask.engine.defaults import check_device
from effdetmask.evaluation.coco_evaluator import instances_to_coco_json
from effdetmask.predictor import BatchPredictor, load_images_rgb
from effdetmask.vis import Visualizer
from effdetmask.vis_pages import write_instance_pngs

logger = logging.getLogger("effdetmask.demo")

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
RESULTS_FILE = "coco_results.json"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True, metavar="FILE", help="yaml config")
    parser.add_argument("--input", required=True, nargs="+", metavar="PATH",
                        help="image files and/or folders of images")
    parser.add_argument("--output", required=True, metavar="DIR", help="folder for the outputs")
    parser.add_argument("--confidence-threshold", type=float, default=None,
                        help="minimum score of a drawn/saved instance (TEST.SCORE_THRESH)")
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


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """Run the demo; returns ``{"results_file": path, "images": {name: [written PNGs]}}``."""
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
    opts = list(args.opts)
    if args.confidence_threshold is not None:
        opts += ["TEST.SCORE_THRESH", str(args.confidence_threshold)]
    cfg = setup_cfg(args.config_file, opts)
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
    vis = Visualizer(class_names(), class_colors())
    to_dataset_id = {v: k for k, v in
                     fashionpedia_metadata()["thing_dataset_id_to_contiguous_id"].items()}
    coco_results: List[Dict[str, Any]] = []
    written: Dict[str, List[str]] = {}
    seen: Dict[str, int] = {}
    # the demo decodes each chunk itself because it draws on the images too; a chunk of
    # TEST.IMS_PER_BATCH images is one forward pass of the predictor
    for start in range(0, len(files), predictor.batch_size):
        chunk = files[start:start + predictor.batch_size]
        images = [rgb for rgb, _ in load_images_rgb(chunk)]
        for path, image, inst in zip(chunk, images, predictor(images)):
            height, width = image.shape[:2]
            record = gt.get(os.path.basename(path))
            if record is not None and (record["height"], record["width"]) != (height, width):
                # same name, other pixels (a resized or rotated copy): its masks would not fit
                logger.warning("%s is %dx%d but the ground truth's %s is %dx%d: not drawn",
                               path, width, height, record["file_name"], record["width"],
                               record["height"])
                record = None
            if record is None:
                image_id, next_id = next_id, next_id + 1
            else:
                image_id = int(record["image_id"])
            results = instances_to_coco_json(inst, image_id, height, width)
            coco_results += [{**r, "category_id": to_dataset_id[r["category_id"]]}
                             for r in results]
            name = _unique_stem(path, seen)
            written[name] = write_instance_pngs(
                vis, os.path.join(args.output, name), image, inst, record, args.max_size,
                args.panel, noise=not cfg.MODEL.WEIGHTS)
            logger.info("%s: %d instances%s", path, len(results),
                        "" if record is None else f", {len(record['annotations'])} annotated")
    results_file = os.path.join(args.output, RESULTS_FILE)
    os.makedirs(args.output, exist_ok=True)
    with open(results_file, "w", encoding="utf-8") as f:
        json.dump(coco_results, f)
    logger.info("wrote %d detections of %d images to %s", len(coco_results), len(files),
                results_file)
    return {"results_file": results_file, "images": written}


if __name__ == "__main__":
    main()
